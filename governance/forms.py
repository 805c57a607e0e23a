"""Forms of the governance pages that take more than one field."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from governance.models import Community, Membership, external_id_validator


class MemberAddForm(forms.Form):
    """An admin adds an existing user (by username) to the community."""

    username = forms.CharField(max_length=150)
    external_id = forms.CharField(
        max_length=255,
        required=False,
        validators=[external_id_validator],
        help_text="The id apps know this member by. Blank: user-<their user id>.",
    )
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)

    def __init__(self, *args: Any, community: Community, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.community = community
        self.user: Any = None

    def clean_username(self) -> str:
        username: str = self.cleaned_data["username"]
        user_model = get_user_model()
        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            raise forms.ValidationError(f"There is no user {username!r}.")
        if Membership.objects.filter(community=self.community, user=user).exists():
            raise forms.ValidationError(f"{username} is already a member.")
        self.user = user
        return username

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.user is not None and "external_id" in data:
            # Pseudonymous by default: the id goes into the immutable audit log.
            data["external_id"] = data["external_id"] or f"user-{self.user.pk}"
            if Membership.objects.filter(
                community=self.community, external_id=data["external_id"]
            ).exists():
                self.add_error(
                    "external_id", f"A member with external id {data['external_id']!r} exists."
                )
        return data


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class MemberRemoveForm(forms.Form):
    confirm = forms.BooleanField(
        required=True,
        error_messages={"required": "Tick the box to confirm the removal."},
    )
