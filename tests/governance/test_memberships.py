from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from governance.models import AuditEntry, Community, Membership
from governance.services import membership_create, membership_set_role


def _last(community: Community) -> AuditEntry:
    entry = AuditEntry.objects.filter(community=community).order_by("-seq").first()
    assert entry is not None
    return entry


def test_adding_a_member_is_audited_without_personal_details(community: Community, owner) -> None:  # type: ignore[no-untyped-def]
    member = membership_create(
        community=community, external_id="u-42", display_name="Ada L.", actor=owner
    )
    entry = _last(community)
    assert (entry.action, entry.object_type, entry.object_id) == (
        "membership.created",
        "governance.membership",
        str(member.pk),
    )
    assert entry.payload == {"external_id": "u-42", "role": "member", "user_id": None}
    assert "Ada" not in entry.payload_json


def test_changing_a_role_is_audited_with_the_old_and_new_role(community: Community, owner) -> None:  # type: ignore[no-untyped-def]
    member = membership_create(community=community, external_id="u-1", actor=None)
    membership_set_role(membership=member, role=Membership.Role.MODERATOR, actor=owner)
    assert Membership.objects.get(pk=member.pk).role == "moderator"
    entry = _last(community)
    assert entry.action == "membership.role_changed"
    assert entry.payload == {"external_id": "u-1", "from": "member", "to": "moderator"}
    assert entry.actor_label == "olivia"


def test_setting_the_role_a_member_already_has_writes_nothing(community: Community) -> None:
    member = membership_create(community=community, external_id="u-1", actor=None)
    before = AuditEntry.objects.count()
    membership_set_role(membership=member, role="member", actor=None)
    assert AuditEntry.objects.count() == before


def test_an_unknown_role_is_refused_by_the_database_and_nothing_is_audited(
    community: Community,
) -> None:
    member = membership_create(community=community, external_id="u-1", actor=None)
    before = AuditEntry.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        membership_set_role(membership=member, role="overlord", actor=None)
    assert AuditEntry.objects.count() == before


def test_a_duplicate_member_is_refused_and_nothing_is_audited(community: Community) -> None:
    membership_create(community=community, external_id="u-1", actor=None)
    before = AuditEntry.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        membership_create(community=community, external_id="u-1", actor=None)
    assert AuditEntry.objects.count() == before


def test_an_external_id_with_whitespace_is_refused(community: Community) -> None:
    with pytest.raises(ValidationError):
        membership_create(community=community, external_id="has space", actor=None)
