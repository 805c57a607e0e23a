"""Someone with database rights edits the log behind the application's back; verify notices."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from governance.models import AuditEntry, Community
from governance.services import membership_create
from tests.factories import make_community
from tests.governance.conftest import tamper, verify_failure


@pytest.fixture
def chain(community: Community) -> Community:
    """A community whose chain holds 8 entries: 5 from its creation, 3 members."""
    for n in range(3):
        membership_create(community=community, external_id=f"m-{n}", actor=None)
    assert AuditEntry.objects.filter(community=community).count() == 8
    return community


def _entry(community: Community, seq: int) -> AuditEntry:
    return AuditEntry.objects.get(community=community, seq=seq)


def test_a_flipped_byte_in_a_payload_is_reported_as_a_hash_mismatch_at_its_seq(
    chain: Community,
) -> None:
    original = _entry(chain, 6).payload_json
    assert '"m-0"' in original
    tamper(
        "UPDATE governance_auditentry SET payload_json = %s WHERE community_id = %s AND seq = 6",
        [original.replace('"m-0"', '"m-O"'), chain.pk],
    )
    message = verify_failure("garden")
    assert "first bad entry is seq 6: hash mismatch" in message


def test_a_changed_actor_is_reported_as_a_hash_mismatch(chain: Community) -> None:
    tamper(
        "UPDATE governance_auditentry SET actor_label = 'mallory' WHERE community_id = %s "
        "AND seq = 2",
        [chain.pk],
    )
    assert "first bad entry is seq 2: hash mismatch" in verify_failure("garden")


def test_a_deleted_entry_is_reported_as_a_gap_naming_the_missing_seq(chain: Community) -> None:
    tamper("DELETE FROM governance_auditentry WHERE community_id = %s AND seq = 4", [chain.pk])
    message = verify_failure("garden")
    assert "first bad entry is seq 4: gap: entry 4 is missing" in message


def test_two_swapped_entries_are_reported_as_reordered_at_the_first_of_them(
    chain: Community,
) -> None:
    # Through a spare number: (community, seq) is unique at every moment.
    for old, new in ((3, 1000), (7, 3), (1000, 7)):
        tamper(
            "UPDATE governance_auditentry SET seq = %s WHERE community_id = %s AND seq = %s",
            [new, chain.pk, old],
        )
    message = verify_failure("garden")
    assert "first bad entry is seq 3: reordered: it links to seq 6" in message


def test_an_entry_rewritten_with_a_fresh_link_is_reported_as_a_broken_link(
    chain: Community,
) -> None:
    tamper(
        "UPDATE governance_auditentry SET prev_hash = %s WHERE community_id = %s AND seq = 5",
        ["ab" * 32, chain.pk],
    )
    assert "first bad entry is seq 5: broken link" in verify_failure("garden")


def test_a_tampered_community_does_not_hide_that_the_others_are_intact(chain: Community) -> None:
    make_community("orchard")
    tamper("DELETE FROM governance_auditentry WHERE community_id = %s AND seq = 8", [chain.pk])
    tamper("DELETE FROM governance_auditentry WHERE community_id = %s AND seq = 2", [chain.pk])
    out, err = StringIO(), StringIO()
    with pytest.raises(Exception, match="failed for 1 of 2 communities"):
        call_command("audit_verify", stdout=out, stderr=err)
    assert "ok orchard: 5 entries" in out.getvalue()
    assert "FAILED garden at seq 2: gap" in err.getvalue()


def test_a_community_whose_whole_chain_was_removed_is_named_in_a_warning(
    community: Community,
) -> None:
    tamper("DELETE FROM governance_auditentry WHERE community_id = %s", [community.pk])
    err = StringIO()
    call_command("audit_verify", stdout=StringIO(), stderr=err)
    assert "warning garden: no audit entries" in err.getvalue()
