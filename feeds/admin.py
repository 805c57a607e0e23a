from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from feeds.choices.services import creator_member_set
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
from feeds.serving import cache as feedcache
from governance.models import Community


class ItemCreatorInline(admin.TabularInline):
    model = ItemCreator
    raw_id_fields = ["creator"]
    extra = 0


class _ServedContentAdmin(admin.ModelAdmin):
    """Deleting items or creators changes what served pages show (an edit does too, through
    feeds.serving.cache's post_save receiver): their cached pages must not outlive it."""

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


class CreatorAdminForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Creator
        # Not opted_out: only the creator opts out (audited, on their dashboard or the API).
        fields = ["community", "external_id", "name", "member", "placeholder"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        member, community = data.get("member"), data.get("community")
        if member is not None and community is not None and member.community_id != community.pk:
            self.add_error("member", "This member belongs to another community.")
        return data


@admin.register(Creator)
class CreatorAdmin(_ServedContentAdmin):
    form = CreatorAdminForm
    readonly_fields = ["opted_out"]
    list_display = ["name", "external_id", "community"]
    list_filter = ["community"]
    search_fields = ["name", "external_id"]
    raw_id_fields = ["member"]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # The member account reads the creator dashboard and opts the creator out: it changes
        # through the audited service, as on the dashboard.
        member = obj.member
        with transaction.atomic():
            if change:
                obj.member_id = Creator.objects.values_list("member_id", flat=True).get(pk=obj.pk)
            else:
                obj.member = None
            super().save_model(request, obj, form, change)
            creator_member_set(creator=obj, member=member, actor=request.user)


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
