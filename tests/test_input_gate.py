"""Issue 17: every input has one strict gate. Too deep a JSON document, a NUL byte anywhere, an
unknown field or too long a value is a 400 that says why, never a 500, and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from feeds.credentials.services import app_credential_create
from feeds.models import FeedRun, Interaction
from governance.models import AuditEntry, Ballot, Proposal
from tests.factories import CreatorFactory, app_call, person_client
from tests.governance.proposal_helpers import changed_policy, make_voting_community, open_proposal

pytestmark = pytest.mark.django_db

DEEP = "[" * 10_000 + "]" * 10_000
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000


@pytest.fixture
def plot() -> dict[str, Any]:
    """A community with an admin (signed in), an open proposal, a creator and an app token."""
    community, moderator, members = make_voting_community("plot", members=2)
    admin = person_client(community, "ad", "admin")
    creator = CreatorFactory(community=community, external_id="c1")
    _, token = app_credential_create(
        community=community,
        name="app",
        scopes=["feeds:read", "events:write", "catalogue:write"],
    )
    proposal = open_proposal(community, moderator)
    return {
        "community": community,
        "member": members[0],
        "creator": creator,
        "token": token,
        "admin": admin,
        "proposal": proposal,
    }


def _session_json(client: Client, method: str, url: str, text: str) -> Any:
    return getattr(client, method)(
        url, data=text, content_type="application/json", HTTP_X_CSRFTOKEN=_csrf(client)
    )


def _csrf(client: Client) -> str:
    client.get(reverse("governance:home", args=["plot"]))
    return str(client.cookies["csrftoken"].value)


# --- JSON bodies: depth and NULs ------------------------------------------------------------


@pytest.mark.parametrize("body", [DEEP, '{"events": ' + DEEP + "}", DEEP_OBJECT])
def test_a_json_body_nested_10000_deep_on_events_is_a_400_not_a_recursion_error(
    client: Client, plot: dict[str, Any], body: str
) -> None:
    response = client.post(
        "/api/v1/communities/plot/events/",
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plot['token']}",
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid",
        "detail": "JSON nested deeper than 64 levels is not accepted.",
    }


def test_a_deep_body_on_member_choices_is_a_400(client: Client, plot: dict[str, Any]) -> None:
    response = client.put(
        f"/api/v1/communities/plot/members/{plot['member'].external_id}/choices/",
        data='{"muted_tags": ' + DEEP + "}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plot['token']}",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"


def test_a_deep_body_on_proposals_and_the_ballot_is_a_400(plot: dict[str, Any]) -> None:
    admin = plot["admin"]
    created = _session_json(
        admin, "post", reverse("api-proposals", args=["plot"]), '{"document": ' + DEEP + "}"
    )
    assert created.status_code == 400
    assert created.json()["error"] == "invalid"
    assert "deeper than 64" in created.json()["detail"]
    ballot = _session_json(
        admin, "put", reverse("api-ballot", args=["plot", plot["proposal"].pk]), DEEP
    )
    assert ballot.status_code == 400
    assert ballot.json()["error"] == "invalid"


def test_a_deep_document_in_the_proposal_check_form_is_a_400_fragment(
    plot: dict[str, Any],
) -> None:
    response = plot["admin"].post(
        reverse("governance:proposal-check", args=["plot"]),
        {"document": DEEP, "csrfmiddlewaretoken": _csrf(plot["admin"])},
    )
    assert response.status_code == 400
    assert "deeper than 64" in response.content.decode()


def test_a_deep_document_on_the_proposal_form_is_a_400_with_the_form(
    plot: dict[str, Any],
) -> None:
    response = plot["admin"].post(
        reverse("governance:proposal-new", args=["plot"]),
        {"title": "Deep", "document": DEEP, "csrfmiddlewaretoken": _csrf(plot["admin"])},
    )
    assert response.status_code == 400
    assert "deeper than 64" in response.content.decode()
    assert not Proposal.objects.filter(title="Deep").exists()


def test_a_shallow_document_with_many_brackets_passes_the_gate(
    client: Client, plot: dict[str, Any]
) -> None:
    # 100 tags: many more brackets than the depth limit, but only 2 deep; and brackets
    # inside strings do not count.
    tags = [f"[[[{i}" for i in range(100)]
    response = app_call(
        client,
        plot["token"],
        "put",
        f"plot/members/{plot['member'].external_id}/choices/",
        {"muted_tags": tags},
    )
    assert response.status_code == 200, response.content
    assert sorted(response.json()["muted_tags"]) == sorted(tags)


@pytest.mark.parametrize(
    "text",
    ['{"muted_tags": ["a\\u0000b"]}', '{"muted\\u0000": true}'],
)
def test_a_nul_escape_in_a_json_key_or_string_is_a_400(
    client: Client, plot: dict[str, Any], text: str
) -> None:
    response = client.put(
        f"/api/v1/communities/plot/members/{plot['member'].external_id}/choices/",
        data=text,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plot['token']}",
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid",
        "detail": "NUL characters (\\u0000) are not accepted.",
    }


def test_an_escaped_backslash_before_u0000_is_not_a_nul(
    client: Client, plot: dict[str, Any]
) -> None:
    response = app_call(
        client,
        plot["token"],
        "put",
        f"plot/members/{plot['member'].external_id}/choices/",
        {"muted_tags": ["\\u0000"]},
    )
    assert response.status_code == 200, response.content
    assert response.json()["muted_tags"] == ["\\u0000"]


# --- NUL bytes in paths, queries and form fields ----------------------------------------------

NUL_MESSAGE = "NUL characters (\\u0000) are not accepted."


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/communities/plot/feeds/m%00x/"),
        ("get", "/api/v1/communities/plot/members/m%00x/choices/"),
        ("put", "/api/v1/communities/plot/members/m%00x/choices/"),
        ("post", "/api/v1/communities/plot/members/m%00x/data-deletion/"),
        ("put", "/api/v1/communities/plot/creators/c%00x/choices/"),
        ("get", "/api/v1/communities/plot/feeds/plot-m0/?cursor=a%00b"),
        ("get", "/api/v1/communities/plot/feeds/plot-m0/?a%00=1"),
    ],
)
def test_a_nul_in_an_app_api_path_or_query_is_a_400_envelope(
    client: Client, plot: dict[str, Any], method: str, path: str
) -> None:
    response = getattr(client, method)(
        path,
        data="{}" if method != "get" else None,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plot['token']}",
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid", "detail": NUL_MESSAGE}


def test_a_nul_in_the_revoke_path_is_a_400_envelope(plot: dict[str, Any]) -> None:
    admin = plot["admin"]
    response = admin.post(
        "/api/v1/communities/plot/apps/ab%00cd/revoke/", HTTP_X_CSRFTOKEN=_csrf(admin)
    )
    assert response.status_code == 400
    assert response.json() == {"error": "invalid", "detail": NUL_MESSAGE}


def test_a_nul_in_an_xrpc_query_is_an_invalid_request(client: Client) -> None:
    response = client.get("/xrpc/app.bsky.feed.getFeedSkeleton?feed=at%00x")
    assert response.status_code == 400
    assert response.json() == {"error": "InvalidRequest", "message": NUL_MESSAGE}


@pytest.mark.parametrize(
    "path",
    [
        "/c/plot/members/?q=a%00b",
        "/c/plot/creators/c%00x/",
        "/c/plot/members/m%00x/feed/",
        "/c/plot/apps/ab%00cd/revoke/",
    ],
)
def test_a_nul_in_a_page_path_or_query_is_a_400_page(plot: dict[str, Any], path: str) -> None:
    response = plot["admin"].get(path)
    assert response.status_code == 400
    assert "Bad request" in response.content.decode()
    assert "NUL characters" in response.content.decode()


def test_a_nul_in_a_form_field_is_a_400_page(plot: dict[str, Any]) -> None:
    admin = plot["admin"]
    token = _csrf(admin)
    account = admin.post(
        reverse("creator-account", args=["plot", "c1"]),
        {"member": "a\x00b", "csrfmiddlewaretoken": token},
    )
    assert account.status_code == 400
    assert "NUL characters" in account.content.decode()
    proposal = admin.post(
        reverse("governance:proposal-new", args=["plot"]),
        {"title": "Nul\x00title", "csrfmiddlewaretoken": token},
    )
    assert proposal.status_code == 400
    assert not Proposal.objects.filter(title__startswith="Nul").exists()


def test_a_nul_in_a_multipart_form_field_is_a_400_page(plot: dict[str, Any]) -> None:
    admin = plot["admin"]
    # Client.post sends a dict as multipart/form-data.
    response = admin.post(
        reverse("governance:proposal-new", args=["plot"]),
        {"title": "x\x00", "csrfmiddlewaretoken": _csrf(admin)},
    )
    assert response.status_code == 400


def test_a_proposal_without_a_nul_still_drafts(plot: dict[str, Any]) -> None:
    admin = plot["admin"]
    document = changed_policy(plot["community"], model={"factors": 16})
    response = admin.post(
        reverse("governance:proposal-new", args=["plot"]),
        {
            "title": "Fewer factors",
            "document": json.dumps(document),
            "csrfmiddlewaretoken": _csrf(admin),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]


# --- Unknown fields ---------------------------------------------------------------------------


def test_a_misspelt_choice_is_a_400_and_the_opt_out_is_kept(
    client: Client, plot: dict[str, Any]
) -> None:
    member = plot["member"]
    path = f"plot/members/{member.external_id}/choices/"
    opted_out = app_call(client, plot["token"], "put", path, {"personalise": False})
    assert opted_out.status_code == 200
    before, audited = opted_out.json(), AuditEntry.objects.count()
    response = app_call(
        client, plot["token"], "put", path, {"personalize": False, "train_on_me": False}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid",
        "detail": {"personalize": ["Unknown field."], "train_on_me": ["Unknown field."]},
    }
    assert app_call(client, plot["token"], "get", path).json() == before
    assert AuditEntry.objects.count() == audited


def test_dry_run_beside_events_is_a_400_and_writes_nothing(
    client: Client, plot: dict[str, Any]
) -> None:
    item = {"id": "i1", "title": "One", "creators": ["c1"]}
    items = app_call(client, plot["token"], "post", "plot/items/", {"items": [item]})
    assert items.status_code == 200
    event = {"id": "e1", "member": plot["member"].external_id, "item": "i1", "kind": "like"}
    response = app_call(
        client, plot["token"], "post", "plot/events/", {"events": [event], "dry_run": True}
    )
    assert response.status_code == 400
    assert response.json()["detail"] == {"dry_run": ["Unknown field."]}
    assert not Interaction.objects.exists()


@pytest.mark.parametrize("key", ["members", "creators", "items"])
def test_an_extra_top_level_key_on_a_batch_is_a_400(
    client: Client, plot: dict[str, Any], key: str
) -> None:
    response = app_call(client, plot["token"], "post", f"plot/{key}/", {key: [], "extra": 1})
    assert response.status_code == 400
    assert response.json()["detail"] == {"extra": ["Unknown field."]}


def test_unknown_fields_on_creator_choices_and_data_deletion_are_400s(
    client: Client, plot: dict[str, Any]
) -> None:
    audited = AuditEntry.objects.count()
    creator = app_call(
        client, plot["token"], "put", "plot/creators/c1/choices/", {"opted_out": True, "x": 1}
    )
    assert creator.status_code == 400
    assert creator.json()["detail"] == {"x": ["Unknown field."]}
    plot["creator"].refresh_from_db()
    assert plot["creator"].opted_out is False
    deletion = app_call(
        client,
        plot["token"],
        "post",
        f"plot/members/{plot['member'].external_id}/data-deletion/",
        {"confirm": True},
    )
    assert deletion.status_code == 400
    assert AuditEntry.objects.count() == audited


def test_unknown_fields_on_credentials_and_feed_runs_are_400s(plot: dict[str, Any]) -> None:
    admin = plot["admin"]
    issued = _session_json(
        admin,
        "post",
        "/api/v1/communities/plot/apps/",
        json.dumps({"name": "second", "scopes": ["feeds:read"], "expires": "never"}),
    )
    assert issued.status_code == 400
    assert issued.json()["detail"] == {"expires": ["Unknown field."]}
    runs = _session_json(
        admin, "post", "/api/v1/communities/plot/feed-runs/", json.dumps({"force": True})
    )
    assert runs.status_code == 400
    assert not FeedRun.objects.exists()


def test_unknown_fields_on_proposals_and_the_ballot_are_400s(plot: dict[str, Any]) -> None:
    admin, community = plot["admin"], plot["community"]
    document = changed_policy(community, model={"factors": 16})
    created = _session_json(
        admin,
        "post",
        reverse("api-proposals", args=["plot"]),
        json.dumps({"title": "T", "document": document, "urgent": True}),
    )
    assert created.status_code == 400
    assert created.json()["detail"] == {"urgent": ["Unknown field."]}
    draft = _session_json(
        admin,
        "post",
        reverse("api-proposals", args=["plot"]),
        json.dumps({"title": "T", "document": document}),
    )
    assert draft.status_code == 201
    pk = draft.json()["id"]
    audited = AuditEntry.objects.count()
    patched = _session_json(
        admin, "patch", reverse("api-proposal", args=["plot", pk]), json.dumps({"titel": "x"})
    )
    assert patched.status_code == 400
    assert patched.json() == {"error": "invalid", "detail": {"titel": ["Unknown field."]}}
    assert Proposal.objects.get(pk=pk).title == "T"
    assert AuditEntry.objects.count() == audited
    ballot = _session_json(
        admin,
        "put",
        reverse("api-ballot", args=["plot", plot["proposal"].pk]),
        json.dumps({"choice": "yes", "weight": 2}),
    )
    assert ballot.status_code == 400
    assert not Ballot.objects.filter(proposal=plot["proposal"]).exists()


# --- Policy types -----------------------------------------------------------------------------


def test_a_policy_number_sent_as_a_string_is_a_400_naming_the_field(plot: dict[str, Any]) -> None:
    document = changed_policy(plot["community"], ranking={"popularity_penalty": "0.5"})
    response = _session_json(
        plot["admin"],
        "post",
        reverse("api-proposals", args=["plot"]),
        json.dumps({"title": "Penalty", "document": document}),
    )
    assert response.status_code == 400
    problems = response.json()["detail"]["document"]
    assert [p["path"] for p in problems] == ["ranking.popularity_penalty"]
    assert not Proposal.objects.filter(title="Penalty").exists()


def test_an_int_where_a_policy_float_is_expected_is_still_accepted(plot: dict[str, Any]) -> None:
    document = changed_policy(plot["community"], ranking={"popularity_penalty": 1})
    response = _session_json(
        plot["admin"],
        "post",
        reverse("api-proposals", args=["plot"]),
        json.dumps({"title": "Penalty", "document": document}),
    )
    assert response.status_code == 201, response.content


# --- Length -----------------------------------------------------------------------------------


def test_a_201_character_title_on_the_web_form_is_a_400_with_the_form_error(
    plot: dict[str, Any],
) -> None:
    admin = plot["admin"]
    document = changed_policy(plot["community"], model={"factors": 16})
    response = admin.post(
        reverse("governance:proposal-new", args=["plot"]),
        {"title": "t" * 201, "document": json.dumps(document), "csrfmiddlewaretoken": _csrf(admin)},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "<code>title</code>: At most 200 characters." in page
    assert not Proposal.objects.filter(title__startswith="ttt").exists()
