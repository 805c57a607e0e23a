"""The members page: admins add members, change roles and remove members, every change audited;
everyone else gets 403; bad input shows form errors and writes nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from governance.errors import LastAdmin
from governance.models import AuditEntry, Ballot, Community, Membership
from governance.selectors import audit_verify
from governance.services import membership_create, membership_remove, membership_set_role
from tests.factories import make_community
from tests.governance.conftest import concurrent_on_postgresql
from tests.governance.proposal_helpers import open_proposal, vote_and_close
from tests.governance.test_concurrency import _race

pytestmark = pytest.mark.django_db


@pytest.fixture
def garden(django_user_model):  # type: ignore[no-untyped-def]
    """A community with an admin (ada), a moderator (mo) and a member (mem); nina has a login
    but no membership."""
    community = make_community("garden")
    people = {}
    for username, role in (("ada", "admin"), ("mo", "moderator"), ("mem", "member")):
        user = django_user_model.objects.create_user(username=username)
        people[username] = membership_create(
            community=community, external_id=f"ext-{username}", user=user, role=role, actor=None
        )
    django_user_model.objects.create_user(username="nina")
    return community, people


def _client(username: str, *, csrf: bool = False) -> Client:
    # force_login: a password login per request would spend the run hashing passwords.
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(get_user_model().objects.get(username=username))
    return client


def _audit_count(community: Community) -> int:
    return AuditEntry.objects.filter(community=community).count()


def _last(community: Community) -> AuditEntry:
    entry = AuditEntry.objects.filter(community=community).order_by("-seq").first()
    assert entry is not None
    return entry


def _members_url() -> str:
    return reverse("governance:members", args=["garden"])


def _role_url(member: Membership) -> str:
    return reverse("governance:member-role", args=["garden", member.pk])


def _remove_url(member: Membership) -> str:
    return reverse("governance:member-remove", args=["garden", member.pk])


def test_an_admin_sees_every_member_with_role_and_join_date(garden) -> None:  # type: ignore[no-untyped-def]
    _community, people = garden
    response = _client("ada").get(_members_url())
    body = response.content.decode()
    assert response.status_code == 200
    # Admins first, then moderators, then members.
    assert body.index("ext-ada") < body.index("ext-mo") < body.index("ext-mem")
    assert 'class="role role-moderator">Moderator<' in body
    assert people["mem"].joined_at.strftime("%Y-%m-%d") in body
    assert "3 members" in body
    # Each member links their feed, which admins may read.
    feed = reverse("member-feed", args=["garden", people["mem"].external_id])
    assert f'href="{feed}"' in body
    assert _client("ada").get(feed).status_code == 200
    assert "ext-mo" not in _client("ada").get(_members_url(), {"q": "ext-me"}).content.decode()
    # The governance pages link the members page for admins only.
    home = reverse("governance:home", args=["garden"])
    assert _members_url() in _client("ada").get(home).content.decode()
    assert _members_url() not in _client("mo").get(home).content.decode()


@pytest.mark.parametrize("username", ["mo", "mem", "nina"])
def test_everyone_but_admins_gets_403_and_changes_nothing(garden, username: str) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    before = _audit_count(community)
    client = _client(username)
    assert client.get(_members_url()).status_code == 403
    assert client.post(_members_url(), {"username": "nina", "role": "member"}).status_code == 403
    assert client.post(_role_url(people["mem"]), {"role": "admin"}).status_code == 403
    assert client.post(_remove_url(people["mem"]), {"confirm": "1"}).status_code == 403
    assert _audit_count(community) == before
    assert Membership.objects.get(pk=people["mem"].pk).role == "member"
    assert not Membership.objects.filter(user__username="nina").exists()


def test_anonymous_visitors_are_sent_to_sign_in_and_unknown_communities_are_404(garden) -> None:  # type: ignore[no-untyped-def]
    response = Client().get(_members_url())
    assert response.status_code == 302 and response.url.startswith(reverse("login"))
    assert _client("ada").get(reverse("governance:members", args=["nowhere"])).status_code == 404


def test_an_admin_of_another_community_gets_403(garden, django_user_model) -> None:  # type: ignore[no-untyped-def]
    other = make_community("other")
    boss = django_user_model.objects.create_user(username="boss")
    membership_create(community=other, external_id="boss", user=boss, role="admin", actor=None)
    assert _client("boss").get(_members_url()).status_code == 403
    assert _client("boss").get(reverse("governance:members", args=["other"])).status_code == 200


def test_an_admin_adds_an_existing_user_and_it_is_audited(garden, django_user_model) -> None:  # type: ignore[no-untyped-def]
    community, _people = garden
    nina = django_user_model.objects.get(username="nina")
    client = _client("ada")
    response = client.post(_members_url(), {"username": "nina", "role": "moderator"})
    assert response.status_code == 302 and response.url == _members_url()
    added = Membership.objects.get(community=community, user=nina)
    # Pseudonymous by default: the external id goes into the immutable log.
    assert (added.external_id, added.role) == (f"user-{nina.pk}", "moderator")
    entry = _last(community)
    assert (entry.action, entry.object_id, entry.actor_label) == (
        "membership.created",
        str(added.pk),
        "ada",
    )
    assert entry.payload == {
        "external_id": f"user-{nina.pk}",
        "role": "moderator",
        "user_id": nina.pk,
    }
    page = client.get(_members_url()).content.decode()
    assert "Added nina as Moderator." in page


def test_an_admin_may_choose_the_external_id(garden, django_user_model) -> None:  # type: ignore[no-untyped-def]
    community, _people = garden
    _client("ada").post(
        _members_url(), {"username": "nina", "external_id": "app-77", "role": "member"}
    )
    assert Membership.objects.get(community=community, user__username="nina").external_id == (
        "app-77"
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"username": "ghost", "role": "member"}, "There is no user &#x27;ghost&#x27;."),
        ({"username": "mem", "role": "member"}, "mem is already a member."),
        (
            {"username": "nina", "external_id": "ext-mo", "role": "member"},
            "A member with external id &#x27;ext-mo&#x27; exists.",
        ),
        ({"username": "nina", "external_id": "has space", "role": "member"}, "without whitespace"),
        ({"username": "nina", "role": "overlord"}, "Select a valid choice."),
        ({"role": "member"}, "This field is required."),
    ],
)
def test_bad_additions_show_form_errors_and_write_nothing(garden, data, error: str) -> None:  # type: ignore[no-untyped-def]
    community, _people = garden
    before = (_audit_count(community), Membership.objects.count())
    response = _client("ada").post(_members_url(), data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert (_audit_count(community), Membership.objects.count()) == before


def test_an_admin_changes_a_role_and_it_is_audited(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    response = _client("ada").post(_role_url(people["mem"]), {"role": "moderator"})
    assert response.status_code == 302
    assert Membership.objects.get(pk=people["mem"].pk).role == "moderator"
    entry = _last(community)
    assert entry.action == "membership.role_changed" and entry.actor_label == "ada"
    assert entry.payload == {"external_id": "ext-mem", "from": "member", "to": "moderator"}


def test_a_bad_role_is_a_400_and_writes_nothing(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    before = _audit_count(community)
    for data in ({"role": "overlord"}, {}):
        response = _client("ada").post(_role_url(people["mem"]), data)
        assert response.status_code == 400
        assert "Choose a role" in response.content.decode()
    assert _audit_count(community) == before
    assert Membership.objects.get(pk=people["mem"].pk).role == "member"


def test_a_member_of_another_community_is_404(garden) -> None:  # type: ignore[no-untyped-def]
    other = make_community("other")
    stranger = membership_create(community=other, external_id="x", actor=None)
    client = _client("ada")
    assert client.post(_role_url(stranger), {"role": "admin"}).status_code == 404
    assert client.post(_remove_url(stranger), {"confirm": "1"}).status_code == 404
    assert Membership.objects.filter(pk=stranger.pk, role="member").exists()


def test_the_last_admin_cannot_be_demoted_or_removed(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    before = _audit_count(community)
    client = _client("ada")
    response = client.post(_role_url(people["ada"]), {"role": "member"})
    assert response.status_code == 409
    assert "no admin left" in response.content.decode()
    assert client.post(_remove_url(people["ada"]), {"confirm": "1"}).status_code == 409
    assert Membership.objects.get(pk=people["ada"].pk).role == "admin"
    assert _audit_count(community) == before


def test_an_admin_without_a_login_does_not_count_as_another_admin(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    membership_create(community=community, external_id="app-admin", role="admin", actor=None)
    response = _client("ada").post(_role_url(people["ada"]), {"role": "member"})
    assert response.status_code == 409


def test_with_a_second_admin_an_admin_may_step_down(garden) -> None:  # type: ignore[no-untyped-def]
    _community, people = garden
    client = _client("ada")
    assert client.post(_role_url(people["mo"]), {"role": "admin"}).status_code == 302
    assert client.post(_role_url(people["ada"]), {"role": "member"}).status_code == 302
    assert Membership.objects.get(pk=people["ada"].pk).role == "member"
    # ada is no admin any more; mo is, and is now the last one.
    assert client.get(_members_url()).status_code == 403
    assert _client("mo").post(_role_url(people["mo"]), {"role": "member"}).status_code == 409


def test_the_service_refuses_to_demote_the_last_admin_too(garden) -> None:  # type: ignore[no-untyped-def]
    _community, people = garden
    with pytest.raises(LastAdmin):
        membership_set_role(membership=people["ada"], role="moderator", actor=None)


def test_an_admin_removes_a_member_and_it_is_audited(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    target = people["mem"]
    response = _client("ada").post(_remove_url(target), {"confirm": "1"})
    assert response.status_code == 302 and response.url == _members_url()
    assert not Membership.objects.filter(pk=target.pk).exists()
    entry = _last(community)
    assert (entry.action, entry.object_id, entry.actor_label) == (
        "membership.removed",
        str(target.pk),
        "ada",
    )
    assert entry.payload == {"external_id": "ext-mem", "role": "member", "user_id": target.user_id}
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_removal_needs_the_confirmation_box(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    before = _audit_count(community)
    response = _client("ada").post(_remove_url(people["mem"]), {})
    assert response.status_code == 400
    assert "Tick the box to confirm" in response.content.decode()
    assert Membership.objects.filter(pk=people["mem"].pk).exists()
    assert _audit_count(community) == before


def test_a_member_who_may_vote_on_an_open_proposal_is_not_removed(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    open_proposal(community, people["mo"])
    before = _audit_count(community)
    response = _client("ada").post(_remove_url(people["mem"]), {"confirm": "1"})
    assert response.status_code == 409
    assert "running vote" in response.content.decode()
    assert Membership.objects.filter(pk=people["mem"].pk).exists()
    assert _audit_count(community) == before


def test_an_author_of_proposals_is_not_removed(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    proposal = open_proposal(community, people["mo"])
    vote_and_close(proposal, {})
    response = _client("ada").post(_remove_url(people["mo"]), {"confirm": "1"})
    assert response.status_code == 409
    assert "authored proposals" in response.content.decode()
    assert Membership.objects.filter(pk=people["mo"].pk).exists()


def test_removing_a_voter_of_a_closed_proposal_keeps_its_counted_result(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    proposal = open_proposal(community, people["mo"])
    closed = vote_and_close(proposal, {people["mem"]: "yes"})
    membership_remove(membership=people["mem"], actor=None)
    closed.refresh_from_db()
    assert (closed.yes_count, closed.electorate_size, closed.state) == (1, 3, "passed")
    assert not Ballot.objects.filter(proposal=closed).exists()
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_member_management_needs_the_csrf_token(garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    before = _audit_count(community)
    client = _client("ada", csrf=True)
    assert client.post(_members_url(), {"username": "nina", "role": "member"}).status_code == 403
    assert client.post(_role_url(people["mem"]), {"role": "admin"}).status_code == 403
    assert client.post(_remove_url(people["mem"]), {"confirm": "1"}).status_code == 403
    assert _audit_count(community) == before


@concurrent_on_postgresql
def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    transactional_db: None, django_user_model
) -> None:  # type: ignore[no-untyped-def]
    community = make_community("race")
    admins = [
        membership_create(
            community=community,
            external_id=name,
            user=django_user_model.objects.create_user(username=name),
            role="admin",
            actor=None,
        )
        for name in ("ann", "bo")
    ]
    for _attempt in range(3):  # a few rounds: a lucky interleaving must not hide a race
        results = _race(
            [
                lambda m=member: membership_set_role(membership=m, role="member", actor=None)
                for member in admins
            ]
        )
        assert sum(isinstance(r, LastAdmin) for r in results) == 1, results
        assert Membership.objects.filter(community=community, role="admin").count() == 1
        for member in admins:  # both admins again for the next round
            Membership.objects.filter(pk=member.pk).update(role="admin")
    assert [chain.problem for chain in audit_verify(community=community)] == [None]
