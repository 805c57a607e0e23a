"""The public audit log: the page and the JSON endpoint, which third parties verify."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from governance import audit_chain
from governance.models import AuditEntry, Community
from governance.selectors import audit_stored, audit_verify
from governance.services import membership_create
from tests.governance.conftest import tamper, verify_failure
from tests.governance.test_audit_export import verifier  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(community: Community) -> Community:
    """The garden community with 12 entries: 5 from its creation, 7 members."""
    for n in range(7):
        membership_create(community=community, external_id=f"m-{n}", actor=None)
    assert AuditEntry.objects.filter(community=community).count() == 12
    return community


def _api(slug: str = "garden", **params: object) -> dict:  # type: ignore[type-arg]
    response = Client().get(reverse("api-audit", args=[slug]), params)
    assert response.status_code == 200, response.content
    return response.json()  # type: ignore[no-any-return]


def test_the_endpoint_pages_by_seq_and_walks_every_entry_exactly_once(chain: Community) -> None:
    seqs: list[int] = []
    after: int | None = 0
    pages = 0
    while after is not None:
        body = _api(limit=5, after_seq=after)
        seqs += [entry["seq"] for entry in body["entries"]]
        after = body["next_after_seq"]
        pages += 1
    assert seqs == list(range(1, 13))
    assert pages == 3
    assert body["chain"]["ok"] is True
    assert body["chain"]["count"] == 12 and body["chain"]["problem"] is None


def test_the_endpoints_entries_verify_with_the_documented_verifier(
    chain: Community,
    verifier: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    entries = _api(limit=1000)["entries"]
    export = tmp_path / "api.jsonl"
    export.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    result = subprocess.run(
        [sys.executable, "-I", str(verifier), str(export)],
        cwd=tmp_path,
        env={},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    head = AuditEntry.objects.get(community=chain, seq=12).entry_hash
    assert f"OK community {chain.pk}: 12 entries, head seq 12 {head}" in result.stdout
    assert _api()["chain"]["head_hash"] == head


def test_the_endpoint_filters_by_action_and_actor(chain: Community) -> None:
    body = _api(action="membership.created")
    assert [e["seq"] for e in body["entries"]] == list(range(6, 13))
    assert {e["payload"]["external_id"] for e in body["entries"]} == {f"m-{n}" for n in range(7)}
    assert _api(actor="nobody")["entries"] == []
    assert len(_api(action="", actor="")["entries"]) == 12  # blank: any
    assert len(_api(actor="system")["entries"]) == 12


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": ""},
        {"after_seq": -1},
        {"after_seq": "x"},
        {"after_seq": ""},
        {"action": "a" * 65},
        # A parameter given twice (found by schemathesis: DRF kept the last, "0.0", as 0).
        {"after_seq": ["false", "0.0"]},
        {"action": ["a", "b"]},
    ],
)
def test_the_endpoint_rejects_bad_parameters_with_400(
    chain: Community, params: dict[str, object]
) -> None:
    response = Client().get(reverse("api-audit", args=["garden"]), params)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"


def test_the_endpoint_is_404_for_an_unknown_community(db: None) -> None:
    response = Client().get(reverse("api-audit", args=["nowhere"]))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_the_endpoint_reports_the_first_bad_entry_of_a_tampered_chain(chain: Community) -> None:
    tamper(
        "UPDATE governance_auditentry SET actor_label = 'mallory' WHERE community_id = %s "
        "AND seq = 7",
        [chain.pk],
    )
    body = _api()
    assert body["chain"]["ok"] is False
    assert body["chain"]["count"] == 6
    assert body["chain"]["problem"]["seq"] == 7
    assert body["chain"]["problem"]["kind"] == "hash mismatch"


def test_the_page_is_public_newest_first_and_says_verified(chain: Community) -> None:
    response = Client().get(reverse("governance:audit", args=["garden"]))
    body = response.content.decode()
    assert response.status_code == 200
    assert "Chain verified" in body and "12 entries" in body
    assert body.index('id="seq-12"') < body.index('id="seq-1"')
    head = AuditEntry.objects.get(community=chain, seq=12).entry_hash
    assert f'title="{head}"' in body


def test_the_page_shows_the_first_bad_entry_of_a_tampered_chain(chain: Community) -> None:
    tamper("DELETE FROM governance_auditentry WHERE community_id = %s AND seq = 4", [chain.pk])
    body = Client().get(reverse("governance:audit", args=["garden"])).content.decode()
    assert "Chain verification FAILED" in body
    assert "at seq 4: gap" in body
    assert "Chain verified" not in body


def test_the_page_filters_by_action_actor_and_date(chain: Community) -> None:
    url = reverse("governance:audit", args=["garden"])
    page = Client().get(url, {"action": "membership.created"})
    assert len(page.context["page"].object_list) == 7
    assert Client().get(url, {"actor": "nobody"}).context["page"].paginator.count == 0
    today = timezone.localdate()
    assert Client().get(url, {"since": today.isoformat()}).context["page"].paginator.count == 12
    tomorrow = (today + timedelta(days=1)).isoformat()
    assert Client().get(url, {"since": tomorrow}).context["page"].paginator.count == 0
    yesterday = (today - timedelta(days=1)).isoformat()
    assert Client().get(url, {"until": yesterday}).context["page"].paginator.count == 0
    assert Client().get(url, {"since": "not a date"}).status_code == 400


def test_the_page_paginates_100_entries_at_a_time(chain: Community) -> None:
    for n in range(7, 100):
        membership_create(community=chain, external_id=f"m-{n}", actor=None)
    url = reverse("governance:audit", args=["garden"])
    first = Client().get(url).context["page"]
    second = Client().get(url, {"page": 2}).context["page"]
    seqs = [e.seq for e in first.object_list] + [e.seq for e in second.object_list]
    assert sorted(seqs, reverse=True) == seqs == list(range(105, 0, -1))


def test_the_governance_nav_links_the_audit_log(chain: Community) -> None:
    body = Client().get(reverse("governance:home", args=["garden"])).content.decode()
    assert reverse("governance:audit", args=["garden"]) in body


# --- Incremental verification: the verified head is cached ----------------------------------------


def _chain_text(slug: str = "garden") -> str:
    body = Client().get(reverse("governance:audit", args=[slug])).content.decode()
    start = body.index('<div class="card" id="chain">')
    return body[start : body.index("</div>", start)]


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the entries hashed (one leaf hash per entry checked)."""
    calls: list[int] = []
    original = audit_chain.leaf_hash

    def counting(body: dict) -> bytes:  # type: ignore[type-arg]
        calls.append(body["seq"])
        return original(body)

    monkeypatch.setattr(audit_chain, "leaf_hash", counting)
    return calls


def _rewrite_from(community: Community, seq: int) -> None:
    """Change entry ``seq`` and recompute every later hash: a consistent rewrite, as someone with
    write access to the database (and the triggers off) could do."""
    entries = list(AuditEntry.objects.filter(community=community, seq__gte=seq).order_by("seq"))
    prev = AuditEntry.objects.get(community=community, seq=seq - 1).entry_hash
    for entry in entries:
        label = "mallory" if entry.seq == seq else entry.actor_label
        body = {**audit_stored(entry).body, "actor_label": label}
        new_hash = audit_chain.entry_hash(prev, body)
        tamper(
            "UPDATE governance_auditentry SET actor_label = %s, prev_hash = %s, entry_hash = %s "
            "WHERE id = %s",
            [label, prev, new_hash, entry.pk],
        )
        prev = new_hash


def test_a_second_request_hashes_only_the_entries_added_since(
    chain: Community, hashes: list[int]
) -> None:
    assert "12 entries" in _chain_text()
    assert sorted(hashes) == list(range(1, 13))
    for n in range(3):
        membership_create(community=chain, external_id=f"late-{n}", actor=None)
    hashes.clear()  # appending hashed the new entries too
    text = _chain_text()
    assert "Chain verified" in text and "15 entries, head seq 15" in text
    # The cached head (seq 12) is re-checked, then only 13..15 are hashed.
    assert sorted(hashes) == [12, 13, 14, 15]
    hashes.clear()
    assert _api()["chain"]["count"] == 15  # the API shares the cached head
    assert hashes == [15]


def test_a_tampered_entry_after_the_cached_head_is_reported(chain: Community) -> None:
    assert "Chain verified" in _chain_text()
    membership_create(community=chain, external_id="late", actor=None)
    tamper(
        "UPDATE governance_auditentry SET payload_json = '{}' WHERE community_id = %s AND seq = 13",
        [chain.pk],
    )
    assert "FAILED</strong> at seq 13: hash mismatch" in _chain_text()
    assert _api()["chain"]["problem"]["seq"] == 13


def test_tampering_with_the_cached_head_entry_is_detected(chain: Community) -> None:
    assert "head seq 12" in _chain_text()
    tamper(
        "UPDATE governance_auditentry SET actor_label = 'mallory' WHERE community_id = %s "
        "AND seq = 12",
        [chain.pk],
    )
    # The head no longer hashes to its stored hash: the whole chain is verified again.
    assert "FAILED</strong> at seq 12: hash mismatch" in _chain_text()


def test_an_older_entry_tampered_after_verification_shows_at_the_next_full_verification(
    chain: Community,
) -> None:
    """The documented limit: entries before the cached head are not re-read on every request."""
    assert "Chain verified" in _chain_text()
    tamper(
        "UPDATE governance_auditentry SET actor_label = 'mallory' WHERE community_id = %s "
        "AND seq = 5",
        [chain.pk],
    )
    assert "Chain verified" in _chain_text()  # still the cached head's verdict
    cache.clear()  # as when the cached head expires (AUDIT_HEAD_CACHE_SECONDS)
    assert "FAILED</strong> at seq 5: hash mismatch" in _chain_text()
    assert "seq 5: hash mismatch" in verify_failure("garden")  # manage.py audit_verify: always all


def test_a_consistent_rewrite_below_the_cached_head_is_reported(chain: Community) -> None:
    assert "head seq 12" in _chain_text()
    _rewrite_from(chain, 7)
    # On its own the rewritten chain verifies: only a head seen earlier can tell.
    assert [state.problem for state in audit_verify(community=chain)] == [None]
    text = _chain_text()
    assert "FAILED</strong> at seq 12: rewritten" in text
    body = _api()
    assert body["chain"]["ok"] is False and body["chain"]["problem"]["kind"] == "rewritten"


def test_truncating_the_tail_below_the_cached_head_is_reported(chain: Community) -> None:
    assert "head seq 12" in _chain_text()
    tamper("DELETE FROM governance_auditentry WHERE community_id = %s AND seq > 10", [chain.pk])
    assert [state.problem for state in audit_verify(community=chain)] == [None]
    text = _chain_text()
    assert "FAILED</strong> at seq 12: truncated" in text and "no longer stored" in text


def test_a_failed_verification_is_not_cached(chain: Community) -> None:
    tamper(
        "UPDATE governance_auditentry SET actor_label = 'mallory' WHERE community_id = %s "
        "AND seq = 3",
        [chain.pk],
    )
    assert "at seq 3" in _chain_text()
    membership_create(community=chain, external_id="late", actor=None)
    assert "at seq 3" in _chain_text()


def test_the_page_and_the_endpoint_answer_while_the_cache_is_down(
    chain: Community, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.cache import cache

    def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "get", down)
    monkeypatch.setattr(cache, "set", down)

    page = Client().get(reverse("governance:audit", args=["garden"]))
    assert page.status_code == 200
    assert "verif" in page.content.decode().lower()  # the chain was still verified, uncached
    assert Client().get(reverse("api-audit", args=["garden"])).status_code == 200
