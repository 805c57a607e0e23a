from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from feeds import feedcache
from feeds.choices import creator_member_link_audit
from feeds.models import (
    AppCredential,
    BlueskyFeed,
    Creator,
    FeedPointer,
    FeedRun,
    Interaction,
    Item,
    ItemCreator,
)
from governance.models import Community


class ItemCreatorInline(admin.TabularInline):
    model = ItemCreator
    raw_id_fields = ["creator"]
    extra = 0


class _ServedContentAdmin(admin.ModelAdmin):
    """Deleting items or creators changes what served pages show (an edit does too, through
    feeds.feedcache's post_save receiver): their cached pages must not outlive it."""

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            super().delete_model(request, obj)
            feedcache.served_content_changed(community=obj.community)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        communities = list(Community.objects.filter(pk__in=queryset.values("community_id")))
        with transaction.atomic():
            super().delete_queryset(request, queryset)
            for community in communities:
                feedcache.served_content_changed(community=community)


@admin.register(Item)
class ItemAdmin(_ServedContentAdmin):
    list_display = ["title", "external_id", "community", "provenance", "active", "published_at"]
    list_filter = ["community", "provenance", "active"]
    search_fields = ["title", "external_id"]
    inlines = [ItemCreatorInline]


@admin.register(Creator)
class CreatorAdmin(_ServedContentAdmin):
    list_display = ["name", "external_id", "community"]
    list_filter = ["community"]
    search_fields = ["name", "external_id"]
    raw_id_fields = ["member"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # The member account reads the creator dashboard and opts the creator out: audited, as
        # when an app sets it (feeds.ingest.creators_upsert).
        with transaction.atomic():
            before = (
                Creator.objects.filter(pk=obj.pk).values_list("member__external_id", flat=True)
                if change
                else []
            )
            previous = next(iter(before), None)
            super().save_model(request, obj, form, change)
            member = obj.member.external_id if obj.member is not None else None
            if member != previous:
                creator_member_link_audit(
                    creator=obj, member=member, previous=previous, actor=request.user
                )


@admin.register(Interaction)
class InteractionAdmin(admin.ModelAdmin):
    list_display = ["id", "community", "member", "item", "kind", "weight", "occurred_at"]
    list_filter = ["community", "kind"]
    raw_id_fields = ["member", "item"]
    # Counting millions of rows on every page load is slow; the paginator shows no total.
    show_full_result_count = False


@admin.register(FeedRun)
class FeedRunAdmin(admin.ModelAdmin):
    list_display = ["id", "community", "status", "requested_at", "finished_at", "policy_sha256"]
    list_filter = ["community", "status"]
    readonly_fields = [f.name for f in FeedRun._meta.fields]


@admin.register(FeedPointer)
class FeedPointerAdmin(admin.ModelAdmin):
    list_display = ["community", "run", "switched_at"]
    readonly_fields = ["community", "run", "switched_at"]


@admin.register(AppCredential)
class AppCredentialAdmin(admin.ModelAdmin):
    list_display = ["name", "community", "prefix", "scopes", "created_at", "revoked_at"]
    list_filter = ["community"]
    readonly_fields = ["prefix", "secret_sha256", "created_at"]


@admin.register(BlueskyFeed)
class BlueskyFeedAdmin(admin.ModelAdmin):
    list_display = ["rkey", "display_name", "community", "created_at"]
    list_filter = ["community"]
