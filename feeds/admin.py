from django.contrib import admin

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


class ItemCreatorInline(admin.TabularInline):
    model = ItemCreator
    raw_id_fields = ["creator"]
    extra = 0


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["title", "external_id", "community", "provenance", "active", "published_at"]
    list_filter = ["community", "provenance", "active"]
    search_fields = ["title", "external_id"]
    inlines = [ItemCreatorInline]


@admin.register(Creator)
class CreatorAdmin(admin.ModelAdmin):
    list_display = ["name", "external_id", "community"]
    list_filter = ["community"]
    search_fields = ["name", "external_id"]
    raw_id_fields = ["member"]


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
