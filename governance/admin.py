from django.contrib import admin

from governance.models import AuditEntry, CharterVersion, Community, Membership, PolicyVersion


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


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Versions and audit entries are immutable records: a change is a new version, made through
    governance services, and audited."""

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        # View only: saving the change form would call save() on a stored row, which raises.
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(PolicyVersion)
class PolicyVersionAdmin(_ReadOnlyAdmin):
    list_display = ["community", "number", "sha256", "is_current", "created_at"]
    list_filter = ["community"]


@admin.register(CharterVersion)
class CharterVersionAdmin(_ReadOnlyAdmin):
    list_display = ["community", "number", "sha256", "is_current", "created_at"]
    list_filter = ["community"]


@admin.register(AuditEntry)
class AuditEntryAdmin(_ReadOnlyAdmin):
    list_display = ["community", "seq", "created_at", "actor_label", "action", "object_type"]
    list_filter = ["community", "action"]
    search_fields = ["actor_label", "object_id", "entry_hash"]
