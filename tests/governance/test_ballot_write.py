"""How a ballot is written: one server-side call on PostgreSQL, the Python path on SQLite.

Both paths must leave the same rows and audit entries (same hash construction, verified by
``audit_verify`` and by the standalone verifier printed in docs/audit.md), refuse the same way
with nothing written, and on PostgreSQL the call must not leave the community lock held once it
returns outside a transaction.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from governance import audit_chain
from governance.errors import NotInElectorate, ProposalNotOpen
from governance.models import AuditEntry, Ballot, Membership, Proposal
from governance.selectors import audit_stored, audit_verify
from governance.services import (
    ballot_cast,
    ballot_cast_id,
    ballot_member,
    ballot_receipt,
    community_lock_key,
    membership_create,
)
from tests.governance.conftest import concurrent_on_postgresql
from tests.governance.proposal_helpers import make_voting_community, open_proposal, vote_and_close

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the advisory lock is a statement on PostgreSQL only"
)


def _ballot_entries(community_id: int) -> list[AuditEntry]:
    return list(
        AuditEntry.objects.filter(
            community_id=community_id, action__in=["ballot.cast", "ballot.changed"]
        ).order_by("seq")
    )


def _recomputed(entry: AuditEntry) -> str:
    stored = audit_stored(entry)
    return audit_chain.entry_hash(stored.prev_hash, stored.body)


@pytest.mark.django_db
def test_cast_and_changed_ballots_chain_exactly_as_the_python_construction(
    tmp_path: Path, django_user_model: Any
) -> None:
    community, moderator, members = make_voting_community("chain", members=3)
    # Names that would break a naive text template: quotes, a backslash, non-ASCII, and a
    # fake "object_id" key inside a value.
    odd = membership_create(community=community, external_id='zoë"x"\\"object_id":"9"', actor=None)
    user = django_user_model.objects.create_user(username='an"na')
    Membership.objects.filter(pk=members[0].pk).update(user=user)
    members[0].refresh_from_db()
    proposal = open_proposal(community, moderator)
    first = ballot_cast(proposal=proposal, member=odd, choice="yes")
    changed = ballot_cast(proposal=proposal, member=odd, choice="no")
    named = ballot_cast(proposal=proposal, member=members[0], choice="abstain")
    again = ballot_cast(proposal=proposal, member=odd, choice="abstain")

    entries = _ballot_entries(community.pk)
    assert [(e.action, e.object_id, e.actor_id, e.actor_label) for e in entries] == [
        ("ballot.cast", str(first.pk), None, odd.external_id),
        ("ballot.changed", str(first.pk), None, odd.external_id),
        ("ballot.cast", str(named.pk), user.pk, 'an"na'),
        ("ballot.changed", str(first.pk), None, odd.external_id),
    ]
    assert changed.pk == again.pk == first.pk
    assert [json.loads(e.payload_json) for e in entries] == [
        {"proposal": proposal.pk, "member": m.external_id, "receipt": b.receipt}
        for m, b in ((odd, first), (odd, changed), (members[0], named), (odd, again))
    ]
    for entry in entries:
        assert entry.object_type == "governance.ballot"
        assert _recomputed(entry) == entry.entry_hash
    assert [chain.problem for chain in audit_verify(community=community)] == [None]

    # One row per member, holding the last ballot; its receipt recomputes from the stored row.
    stored = Ballot.objects.get(pk=first.pk)
    assert (stored.choice, stored.receipt, stored.nonce) == ("abstain", again.receipt, again.nonce)
    assert stored.receipt == ballot_receipt(
        proposal_id=proposal.pk,
        external_id=odd.external_id,
        choice="abstain",
        cast_at=stored.cast_at,
        nonce=stored.nonce,
    )
    assert re.fullmatch(r"[0-9a-f]{64}", stored.receipt)

    # The standalone verifier of docs/audit.md accepts the export.
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    verifier = tmp_path / "verify_audit.py"
    verifier.write_text(blocks[0], encoding="utf-8")
    export = tmp_path / "audit.jsonl"
    call_command("audit_export", community="chain", output=str(export), stdout=StringIO())
    result = subprocess.run(
        [sys.executable, "-I", str(verifier), str(export)],
        cwd=tmp_path,
        env={},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"OK community {community.pk}: {entries[-1].seq} entries" in result.stdout


@pytest.mark.django_db
def test_every_refusal_writes_nothing() -> None:
    community, moderator, members = make_voting_community("refuse", members=3)
    other, other_moderator, _ = make_voting_community("elsewhere", members=1)
    proposal = open_proposal(community, moderator)
    foreign = open_proposal(other, other_moderator)
    ended = open_proposal(community, moderator, title="Ended", model={"factors": 16})
    Proposal.objects.filter(pk=ended.pk).update(closes_at=timezone.now())
    latecomer = membership_create(community=community, external_id="late", actor=None)
    closed = open_proposal(community, moderator, title="Closed", model={"factors": 24})
    vote_and_close(closed, {members[0]: "yes"})
    ballots, entries = Ballot.objects.count(), AuditEntry.objects.count()

    with pytest.raises(Proposal.DoesNotExist):  # the API answers 404
        ballot_cast_id(proposal_id=foreign.pk, member=members[0], choice="yes")
    with pytest.raises(Proposal.DoesNotExist):
        ballot_cast_id(proposal_id=10**15, member=members[0], choice="yes")
    with pytest.raises(ProposalNotOpen, match=r"not open for voting \(passed\)"):
        ballot_cast_id(proposal_id=closed.pk, member=members[1], choice="yes")
    with pytest.raises(ProposalNotOpen):  # the deadline passed, nobody has closed it yet
        ballot_cast_id(proposal_id=ended.pk, member=members[1], choice="yes")
    with pytest.raises(NotInElectorate, match="late was not a member of refuse"):
        ballot_cast_id(proposal_id=proposal.pk, member=latecomer, choice="yes")
    with pytest.raises(ValueError, match="unknown choice"):
        ballot_cast_id(proposal_id=proposal.pk, member=members[1], choice="maybe")
    assert (Ballot.objects.count(), AuditEntry.objects.count()) == (ballots, entries)
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def _lock_is_free(key: int) -> bool:
    """Whether another connection can take the advisory lock ``key`` right now."""
    free: list[bool] = []

    def probe() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
                free.append(cursor.fetchone()[0])
                if free[0]:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
        finally:
            connection.close()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(timeout=30)
    return free == [True]


@on_postgresql
@concurrent_on_postgresql
def test_outside_a_transaction_the_call_commits_and_releases_the_lock_in_the_server(
    transactional_db: None,
) -> None:
    community, moderator, members = make_voting_community("auto", members=2)
    proposal = open_proposal(community, moderator)
    key = community_lock_key(community_id=community.pk)
    assert not connection.in_atomic_block
    ballot = ballot_cast(proposal=proposal, member=members[0], choice="yes")
    # Nothing is left open on our connection, and another connection sees the committed rows
    # and can take the lock at once.
    assert connection.connection.info.transaction_status == 0  # psycopg TransactionStatus.IDLE
    assert _lock_is_free(key)
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT receipt FROM governance_ballot WHERE id = %s", [ballot.pk])
        assert cursor.fetchone()[0] == ballot.receipt

    # Inside a caller's transaction the lock stays held until that transaction ends.
    with transaction.atomic():
        ballot_cast(proposal=proposal, member=members[1], choice="no")
        assert not _lock_is_free(key)
    assert _lock_is_free(key)
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


@pytest.mark.django_db
def test_ballot_member_loads_the_right_fields(django_user_model: Any) -> None:
    community, _moderator, members = make_voting_community("fields", members=2)
    other, _, strangers = make_voting_community("other", members=1)
    user = django_user_model.objects.create_user(username="fi")
    Membership.objects.filter(pk=members[1].pk).update(user=user)
    Membership.objects.filter(pk=strangers[0].pk).update(user=user)
    member = ballot_member(slug="fields", user=user)
    assert member is not None
    assert (member.pk, member.community_id, member.external_id, member.user_id) == (
        members[1].pk,
        community.pk,
        members[1].external_id,
        user.pk,
    )
    assert member.user is user
    assert member.get_deferred_fields() >= {"role"}
    assert ballot_member(slug="other", user=user).pk == strangers[0].pk  # type: ignore[union-attr]
    assert ballot_member(slug="nowhere", user=user) is None
    assert ballot_member(slug="fields", user=AnonymousUser()) is None
    assert other.pk != community.pk


@pytest.fixture
def voter(django_user_model: Any) -> tuple[Client, Membership, Proposal]:
    community, moderator, members = make_voting_community("count", members=2)
    user = django_user_model.objects.create_user(username="vo", password="pw-vo")
    Membership.objects.filter(pk=members[0].pk).update(user=user)
    members[0].refresh_from_db()
    proposal = open_proposal(community, moderator)
    client = Client()
    assert client.login(username="vo", password="pw-vo")
    return client, members[0], proposal


def _logged_as(member: Membership, receipt: str) -> None:
    entry = AuditEntry.objects.filter(action__startswith="ballot.").order_by("-seq").first()
    assert entry is not None and entry.actor_label == "vo"
    assert json.loads(entry.payload_json)["member"] == member.external_id
    assert json.loads(entry.payload_json)["receipt"] == receipt
    ballot = Ballot.objects.get(member=member)
    assert (
        ballot.receipt
        == receipt
        == ballot_receipt(
            proposal_id=ballot.proposal_id,
            external_id=member.external_id,
            choice=ballot.choice,
            cast_at=ballot.cast_at,
            nonce=ballot.nonce,
        )
    )


@on_postgresql
@pytest.mark.django_db
def test_the_api_put_is_eight_statements(voter: tuple[Client, Membership, Proposal]) -> None:
    client, member, proposal = voter
    url = reverse("api-ballot", args=["count", proposal.pk])
    for choice in ("yes", "no"):
        with CaptureQueriesContext(connection) as queries:
            response = client.put(
                url, data=json.dumps({"choice": choice}), content_type="application/json"
            )
        assert response.status_code == 200, response.content
        # Session, user, member, then the ballot in one transaction: the community lock, the
        # member's earlier ballot, the upsert (with the checks), the chain head, the entry.
        # (SAVEPOINT and RELEASE are there only because the test runs inside a transaction.)
        sql = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
        assert len(sql) == 8, [q[:80] for q in sql]
        assert "pg_advisory_xact_lock" in sql[3]
        assert sql[5].startswith("\n    INSERT INTO governance_ballot")
        assert "INSERT INTO governance_auditentry" in sql[7]
        _logged_as(member, response.json()["receipt"])


@pytest.mark.django_db
def test_the_form_post_writes_the_ballot_and_refuses_as_before(
    voter: tuple[Client, Membership, Proposal], django_user_model: Any
) -> None:
    client, member, proposal = voter
    url = reverse("governance:vote", args=["count", proposal.pk])
    with CaptureQueriesContext(connection) as queries:
        response = client.post(url, {"choice": "no"})
    assert response.status_code == 302
    assert response["Location"] == reverse("governance:proposal", args=["count", proposal.pk])
    if connection.vendor == "postgresql":
        # As the API PUT: session, user, member, then the ballot's five statements.
        sql = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
        assert len(sql) == 8, [q[:80] for q in sql]
    _logged_as(member, Ballot.objects.get(member=member).receipt)
    htmx = client.post(url, {"choice": "yes"}, HTTP_HX_REQUEST="true")
    assert htmx.status_code == 200
    assert Ballot.objects.get(member=member).receipt in htmx.content.decode()
    _logged_as(member, Ballot.objects.get(member=member).receipt)

    ballots = AuditEntry.objects.filter(action__startswith="ballot.")
    entries = ballots.count()
    other, other_moderator, _ = make_voting_community("elsewhere", members=1)
    foreign = open_proposal(other, other_moderator)
    assert (
        client.post(
            reverse("governance:vote", args=["count", foreign.pk]), {"choice": "yes"}
        ).status_code
        == 404
    )
    assert (
        client.post(
            reverse("governance:vote", args=["nowhere", proposal.pk]), {"choice": "yes"}
        ).status_code
        == 404
    )
    django_user_model.objects.create_user(username="ou", password="pw-ou")
    outsider = Client()
    assert outsider.login(username="ou", password="pw-ou")
    assert outsider.post(url, {"choice": "yes"}).status_code == 403
    assert outsider.post(url, {"choice": "yes"}, HTTP_HX_REQUEST="true").status_code == 403
    assert client.post(url, {"choice": "maybe"}).status_code == 302  # the page shows the error
    assert ballots.count() == entries and Ballot.objects.count() == 1
