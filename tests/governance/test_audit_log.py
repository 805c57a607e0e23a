from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from governance import audit_chain
from governance.models import AuditEntry, Community, ImmutableRecordError
from governance.selectors import audit_verify
from governance.services import audit_append, membership_create
from tests.factories import make_community
from tests.governance.conftest import on_postgresql


def test_creating_a_community_audits_it_and_its_genesis_policy_and_charter(
    community: Community,
) -> None:
    entries = list(AuditEntry.objects.filter(community=community).order_by("seq"))
    assert [(e.seq, e.action) for e in entries] == [
        (1, "community.created"),
        (2, "policy_version.created"),
        (3, "policy_version.made_current"),
        (4, "charter_version.created"),
        (5, "charter_version.made_current"),
    ]
    policy = community.policy_versions.get()
    charter = community.charter_versions.get()
    assert entries[1].object_id == str(policy.pk)
    assert entries[1].payload["sha256"] == policy.sha256
    assert entries[1].payload["document"] == policy.document
    assert entries[3].payload["sha256"] == charter.sha256
    assert all(e.actor_label == "system" and e.actor_id is None for e in entries)


def test_each_entry_links_to_the_previous_one_with_domain_separated_hashes(
    community: Community,
) -> None:
    previous = audit_chain.GENESIS_HASH
    for entry in AuditEntry.objects.filter(community=community).order_by("seq"):
        assert entry.prev_hash == previous
        body = {
            "v": 1,
            "community": community.pk,
            "seq": entry.seq,
            "created_at": audit_chain.format_timestamp(entry.created_at),
            "actor_id": None,
            "actor_label": "system",
            "action": entry.action,
            "object_type": entry.object_type,
            "object_id": entry.object_id,
            "payload": entry.payload,
        }
        leaf = audit_chain.hashlib.sha256(
            b"\x00" + audit_chain.canonical_json(body).encode()
        ).digest()
        expected = audit_chain.hashlib.sha256(b"\x01" + bytes.fromhex(previous) + leaf)
        assert entry.entry_hash == expected.hexdigest()
        previous = entry.entry_hash


def test_each_community_has_its_own_chain_starting_at_seq_one(db: None) -> None:
    first, second = make_community("one"), make_community("two")
    for community in (first, second):
        head = AuditEntry.objects.filter(community=community).order_by("seq").first()
        assert head is not None
        assert (head.seq, head.prev_hash) == (1, audit_chain.GENESIS_HASH)
    assert all(chain.problem is None and chain.count == 5 for chain in audit_verify())


def test_an_entry_keeps_who_acted_after_the_user_is_deleted(community, owner) -> None:  # type: ignore[no-untyped-def]
    membership_create(community=community, external_id="m-1", actor=owner)
    entry = AuditEntry.objects.get(community=community, action="membership.created")
    assert (entry.actor_id, entry.actor_label) == (owner.pk, "olivia")
    owner_id = owner.pk
    owner.delete()
    entry = AuditEntry.objects.get(pk=entry.pk)
    assert (entry.actor_id, entry.actor_label) == (owner_id, "olivia")
    call_command("audit_verify", community="garden", stdout=StringIO())


def test_audit_append_refuses_to_run_outside_a_transaction(transactional_db: None) -> None:
    community = make_community("outside")
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_append(
            community=community,
            actor=None,
            action="community.created",
            obj=community,
            payload={},
        )
    assert AuditEntry.objects.filter(community=community).count() == 5


def test_audit_append_refuses_an_unknown_action(community: Community) -> None:
    with transaction.atomic(), pytest.raises(ValueError, match="unknown audit action"):
        audit_append(community=community, actor=None, action="x.y", obj=community, payload={})


def test_a_stored_entry_cannot_be_saved_again(community: Community) -> None:
    entry = AuditEntry.objects.filter(community=community).first()
    assert entry is not None
    entry.actor_label = "someone else"
    with pytest.raises(ImmutableRecordError):
        entry.save()


def test_audit_verify_reports_ok_with_counts_on_a_clean_chain(db: None) -> None:
    make_community("one")
    make_community("two")
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert "ok one: 5 entries, head seq 5" in out.getvalue()
    assert "ok two: 5 entries" in out.getvalue()
    assert "OK: 10 entries in 2 chains verified" in out.getvalue()
    out = StringIO()
    call_command("audit_verify", community="two", stdout=out)
    assert "one" not in out.getvalue()
    assert "OK: 5 entries in 1 chains" in out.getvalue()


@on_postgresql
@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE governance_auditentry SET actor_label = 'mallory'", "UPDATE"),
        ("DELETE FROM governance_auditentry WHERE seq = 2", "DELETE"),
        ("TRUNCATE governance_auditentry", "TRUNCATE"),
    ],
)
def test_postgresql_refuses_to_change_or_remove_audit_entries(
    community: Community, statement: str, operation: str
) -> None:
    with (
        pytest.raises(DatabaseError, match=f"append-only: {operation} refused"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        # Fire the deferred foreign-key checks of the test's own inserts now: PostgreSQL refuses
        # to TRUNCATE a table with pending trigger events before our trigger is even asked.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(statement)
    assert AuditEntry.objects.filter(community=community, actor_label="system").count() == 5


@on_postgresql
def test_postgresql_refuses_an_orm_bulk_update_of_audit_entries(community: Community) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(community=community).update(payload_json="{}")


def test_the_admin_shows_versions_and_entries_but_cannot_change_or_delete_them(
    community: Community,
    admin_client,  # type: ignore[no-untyped-def]
) -> None:
    entry = AuditEntry.objects.filter(community=community).first()
    assert entry is not None
    page = admin_client.get(f"/admin/governance/auditentry/{entry.pk}/change/")
    assert page.status_code == 200
    assert b"community.created" in page.content
    assert b'type="submit" value="Save"' not in page.content
    response = admin_client.post(
        f"/admin/governance/auditentry/{entry.pk}/change/", {"actor_label": "mallory"}
    )
    assert response.status_code == 403
    version = community.policy_versions.get()
    assert (
        admin_client.get(f"/admin/governance/policyversion/{version.pk}/change/").status_code == 200
    )
    assert (
        admin_client.get(f"/admin/governance/policyversion/{version.pk}/delete/").status_code == 403
    )


def test_a_payload_that_jsonb_would_respell_still_verifies(community: Community) -> None:
    # jsonb turns -0.0 into 0.0 and 1e16 into an integer; the hashed text is stored verbatim.
    payload = {"negative_zero": -0.0, "big": 1e16, "tiny": 1e-7, "text": "zoë\u0000\u2028"}
    with transaction.atomic():
        entry = audit_append(
            community=community,
            actor=None,
            action="community.created",
            obj=community,
            payload=payload,
        )
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert (
        stored.payload_json
        == '{"big":1e+16,"negative_zero":-0.0,"text":"zoë\\u0000\u2028","tiny":1e-07}'
    )
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_a_payload_with_nan_is_refused(community: Community) -> None:
    with transaction.atomic(), pytest.raises(ValueError, match="not JSON compliant"):
        audit_append(
            community=community,
            actor=None,
            action="community.created",
            obj=community,
            payload={"x": float("nan")},
        )
