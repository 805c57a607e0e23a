"""The public audit log: the page and the JSON endpoint, which third parties verify."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from governance.models import AuditEntry, Community
from governance.services import membership_create
from tests.governance.conftest import tamper
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
    [{"limit": 0}, {"limit": 1001}, {"after_seq": -1}, {"after_seq": "x"}, {"action": "a" * 65}],
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
