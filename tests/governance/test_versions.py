from __future__ import annotations

import pytest
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import ProtectedError

from governance.charter import Charter
from governance.errors import InvalidVersionParent, StaleVersion
from governance.models import (
    AuditEntry,
    CharterVersion,
    Community,
    ImmutableRecordError,
    PolicyVersion,
)
from governance.selectors import charter_of, charter_version_current, policy_version_current
from governance.services import (
    charter_version_create,
    policy_version_create,
    policy_version_make_current,
)
from ranking.policy import Policy
from tests.factories import make_community
from tests.governance.conftest import on_postgresql

SMALL = Policy.model_validate({"model": {"factors": 8}})


def _actions(community: Community) -> list[str]:
    return list(
        AuditEntry.objects.filter(community=community)
        .order_by("seq")
        .values_list("action", flat=True)
    )


def test_a_new_version_becomes_current_and_the_previous_stops_being_current(
    community: Community, owner
) -> None:  # type: ignore[no-untyped-def]
    genesis = policy_version_current(community=community)
    second = policy_version_create(
        community=community, policy=SMALL, parent=genesis, actor=owner, make_current=True
    )
    genesis.refresh_from_db()
    assert (genesis.is_current, second.is_current) == (False, True)
    assert policy_version_current(community=community) == second
    assert (second.number, second.parent, second.created_by) == (2, genesis, owner)
    assert second.sha256 == SMALL.sha256()
    assert second.document == SMALL.model_dump(mode="json")
    assert _actions(community)[-2:] == ["policy_version.created", "policy_version.made_current"]
    made_current = AuditEntry.objects.get(community=community, seq=7)
    assert made_current.payload == {"number": 2, "replaces": 1, "sha256": SMALL.sha256()}
    assert made_current.actor_label == "olivia"


def test_a_version_stored_without_making_it_current_leaves_the_current_one(
    community: Community,
) -> None:
    genesis = policy_version_current(community=community)
    draft = policy_version_create(
        community=community, policy=SMALL, parent=genesis, actor=None, make_current=False
    )
    assert not draft.is_current
    assert policy_version_current(community=community) == genesis
    assert _actions(community)[-1] == "policy_version.created"
    policy_version_make_current(version=draft, actor=None)
    assert policy_version_current(community=community) == draft


def test_a_version_built_on_a_superseded_parent_cannot_become_current(
    community: Community,
) -> None:
    genesis = policy_version_current(community=community)
    first = policy_version_create(
        community=community, policy=SMALL, parent=genesis, actor=None, make_current=False
    )
    rival = policy_version_create(
        community=community, policy=Policy(), parent=genesis, actor=None, make_current=True
    )
    entries = AuditEntry.objects.count()
    with pytest.raises(StaleVersion, match="built on version 1, which is no longer current"):
        policy_version_make_current(version=first, actor=None)
    assert policy_version_current(community=community) == rival
    assert AuditEntry.objects.count() == entries


def test_a_failed_create_and_make_current_writes_nothing(community: Community) -> None:
    genesis = policy_version_current(community=community)
    policy_version_create(
        community=community, policy=SMALL, parent=genesis, actor=None, make_current=True
    )
    versions, entries = PolicyVersion.objects.count(), AuditEntry.objects.count()
    with pytest.raises(StaleVersion):
        policy_version_create(
            community=community, policy=Policy(), parent=genesis, actor=None, make_current=True
        )
    assert (PolicyVersion.objects.count(), AuditEntry.objects.count()) == (versions, entries)


def test_versions_are_numbered_per_community(db: None) -> None:
    first, second = make_community("one"), make_community("two")
    for _ in range(2):
        policy_version_create(
            community=first,
            policy=SMALL,
            parent=policy_version_current(community=first),
            actor=None,
            make_current=True,
        )
    assert list(first.policy_versions.values_list("number", flat=True)) == [3, 2, 1]
    assert list(second.policy_versions.values_list("number", flat=True)) == [1]


def test_a_parent_from_another_community_is_refused(db: None) -> None:
    first, second = make_community("one"), make_community("two")
    with pytest.raises(InvalidVersionParent):
        policy_version_create(
            community=first,
            policy=SMALL,
            parent=policy_version_current(community=second),
            actor=None,
            make_current=False,
        )


def test_a_stored_version_cannot_be_saved_again(community: Community) -> None:
    version = policy_version_current(community=community)
    version.document = {"schema_version": 1}
    with pytest.raises(ImmutableRecordError, match="create a new version"):
        version.save()
    charter = charter_version_current(community=community)
    with pytest.raises(ImmutableRecordError):
        charter.save()


def test_the_database_refuses_a_second_current_version(community: Community) -> None:
    genesis = policy_version_current(community=community)
    draft = policy_version_create(
        community=community, policy=SMALL, parent=genesis, actor=None, make_current=False
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        PolicyVersion.objects.filter(pk=draft.pk).update(is_current=True)


@on_postgresql
def test_postgresql_refuses_to_rewrite_a_stored_version_document(community: Community) -> None:
    refused = "immutable: only is_current may change"
    with pytest.raises(DatabaseError, match=refused), transaction.atomic():
        PolicyVersion.objects.filter(community=community).update(document={})
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        CharterVersion.objects.filter(community=community).update(sha256="0" * 64)


def test_a_community_with_a_history_cannot_be_deleted(community: Community) -> None:
    with pytest.raises(ProtectedError):
        community.delete()


def test_the_genesis_charter_holds_the_documented_defaults(community: Community) -> None:
    version = charter_version_current(community=community)
    assert (version.number, version.parent, version.is_current) == (1, None, True)
    assert charter_of(version) == Charter()
    assert version.sha256 == Charter().sha256()


def test_a_charter_amendment_becomes_current_like_a_policy_version(community: Community) -> None:
    genesis = charter_version_current(community=community)
    amended = charter_version_create(
        community=community,
        charter=Charter(quorum=0.5),
        parent=genesis,
        actor=None,
        make_current=True,
    )
    assert charter_version_current(community=community) == amended
    assert charter_of(amended).quorum == 0.5
    assert _actions(community)[-2:] == ["charter_version.created", "charter_version.made_current"]
