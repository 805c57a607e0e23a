"""HTML pages."""

from __future__ import annotations

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from feeds.models import FeedRun
from feeds.selectors import FeedNotReady, current_run, feed_run_for_read, member_feed_get
from governance.models import Community, Membership


def home(request: HttpRequest) -> HttpResponse:
    communities = Community.objects.annotate(
        member_count=Count("memberships", distinct=True),
    ).order_by("slug")
    rows = []
    for community in communities:
        rows.append(
            {
                "community": community,
                "run": current_run(community=community),
                "item_count": community.items.count(),
                "creator_count": community.creators.count(),
                "interaction_count": community.interactions.count(),
                "sample_members": list(community.memberships.order_by("id")[:5]),
                "last_runs": list(FeedRun.objects.filter(community=community)[:3]),
            }
        )
    return render(request, "feeds/home.html", {"rows": rows})


def member_feed(request: HttpRequest, slug: str, member_external_id: str) -> HttpResponse:
    community = get_object_or_404(Community, slug=slug)
    member = get_object_or_404(Membership, community=community, external_id=member_external_id)
    try:
        run = feed_run_for_read(community=community)
    except FeedNotReady:
        feed = None
    else:
        feed = member_feed_get(community=community, member=member, run=run)
    return render(
        request, "feeds/member_feed.html", {"community": community, "member": member, "feed": feed}
    )
