from django.contrib import admin

from governance.models import Community, Membership, PolicyVersion


@admin.register(Community)
class CommunityAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["external_id", "community", "user", "role", "joined_at"]
    list_filter = ["community", "role"]
    search_fields = ["external_id", "display_name", "user__username"]
    raw_id_fields = ["user"]


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = ["community", "number", "sha256", "is_current", "created_at"]
    list_filter = ["community"]
    # Versions are immutable records: a change is a new version, made through governance.
    readonly_fields = [
        "community",
        "number",
        "document",
        "sha256",
        "parent",
        "created_by",
        "created_at",
        "is_current",
    ]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
