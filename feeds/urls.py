from django.urls import path

from feeds import views
from feeds.bluesky import xrpc

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "xrpc/app.bsky.feed.describeFeedGenerator",
        xrpc.describe_feed_generator,
        name="bsky-describe",
    ),
    path("xrpc/app.bsky.feed.getFeedSkeleton", xrpc.get_feed_skeleton, name="bsky-skeleton"),
    path(".well-known/did.json", xrpc.did_document, name="did-document"),
    path("c/<slug:slug>/settings/", views.member_settings, name="member-settings"),
    path(
        "c/<slug:slug>/creators/<str:creator_external_id>/",
        views.creator_dashboard,
        name="creator-dashboard",
    ),
    path(
        "c/<slug:slug>/creators/<str:creator_external_id>/account/",
        views.creator_account,
        name="creator-account",
    ),
    path("c/<slug:slug>/proposals/<int:pk>/impact/", views.proposal_impact, name="proposal-impact"),
    path("c/<slug:slug>/apps/", views.app_credentials, name="app-credentials"),
    path("c/<slug:slug>/feed-runs/", views.feed_runs, name="feed-runs"),
    path("c/<slug:slug>/trends/", views.feed_trends, name="feed-trends"),
    path(
        "c/<slug:slug>/apps/<str:prefix>/revoke/",
        views.app_credential_revoke_view,
        name="app-credential-revoke",
    ),
    path(
        "c/<slug:slug>/members/<str:member_external_id>/feed/",
        views.member_feed,
        name="member-feed",
    ),
]
