from django import forms
from django.contrib import admin, messages
from django.db import transaction

from governance import services
from governance.errors import GovernanceError
from governance.models import AuditEntry, CharterVersion, Community, Membership, PolicyVersion


@admin.register(Community)
class CommunityAdmin(admin.ModelAdmin):
    """Adding creates the genesis policy and charter (the documented defaults) through
    ``community_create``, audited; an existing community is shown read-only (its policy and
    charter change by proposal, see ``manage.py create_community`` for other genesis files)."""

    list_display = ["slug", "name", "created_at"]
    search_fields = ["slug", "name"]
    fields = ["slug", "name", "description"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        return self.fields if obj is not None else []

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:  # pragma: no cover - every field is read-only once created
            return
        created = services.community_create(
            slug=obj.slug, name=obj.name, description=obj.description, actor=request.user
        )
        obj.pk, obj.created_at = created.pk, created.created_at

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        # Deleting a community would need deleting its append-only audit log.
        return False


class MembershipAdminForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["community", "external_id", "user", "display_name", "role"]

    def clean_role(self) -> str:
        role: str = self.cleaned_data["role"]
        # self.instance still holds the stored role here (the form copies its data in later).
        if (
            self.instance.pk
            and self.instance.role == Membership.Role.ADMIN
            and role != Membership.Role.ADMIN
        ):
            try:
                services.membership_last_admin_check(membership=self.instance, doing="demote")
            except GovernanceError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return role


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Adds, re-roles and removes members through the governance services, so a change made
    here is audited like one made on the community's members page (actor: the signed-in
    user), and refused the same way (the last admin, a member in a running vote)."""

    form = MembershipAdminForm
    list_display = ["external_id", "community", "user", "role", "joined_at"]
    list_filter = ["community", "role"]
    search_fields = ["external_id", "display_name", "user__username"]
    raw_id_fields = ["user"]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        # Who the membership is stays fixed: remove it and add another to change that.
        return ["community", "external_id", "user", "joined_at"] if obj is not None else []

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if not change:
            created = services.membership_create(
                community=obj.community,
                external_id=obj.external_id,
                user=obj.user,
                display_name=obj.display_name,
                role=obj.role,
                actor=request.user,
            )
            obj.pk, obj.joined_at = created.pk, created.joined_at
            return
        with transaction.atomic():
            if "display_name" in form.changed_data:
                # A name is not a governance fact (the log holds no names): not audited.
                Membership.objects.filter(pk=obj.pk).update(display_name=obj.display_name)
            if "role" in form.changed_data:
                try:
                    services.membership_set_role(membership=obj, role=obj.role, actor=request.user)
                except GovernanceError as exc:  # lost a race the form's check could not see
                    messages.error(request, str(exc))

    def get_deleted_objects(self, objs, request):  # type: ignore[no-untyped-def]
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Refusals show where the admin lists what blocks a deletion, and nothing is deleted.
        for membership in objs:
            try:
                services.membership_remove_check(membership=membership)
            except GovernanceError as exc:
                protected.append(str(exc))
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        services.membership_remove(membership=obj, actor=request.user)

    @transaction.atomic
    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        for membership in queryset:
            services.membership_remove(membership=membership, actor=request.user)


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
