"""The Django admin changes communities and memberships only through the governance services:
every change is audited with the signed-in user as actor, and refused where the members page
would refuse it (the last admin, a member of a running vote)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from governance.models import AuditEntry, Community, Membership
from governance.selectors import audit_verify, charter_version_current, policy_version_current
from governance.services import membership_create
from tests.factories import make_community
from tests.governance.proposal_helpers import open_proposal

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_superuser(username="root", password="unused-here")


@pytest.fixture
def admin_client(root) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def garden(django_user_model):  # type: ignore[no-untyped-def]
    """ada is the community's only admin; mo a moderator; mem a member."""
    community = make_community("garden")
    people = {}
    for username, role in (("ada", "admin"), ("mo", "moderator"), ("mem", "member")):
        user = django_user_model.objects.create_user(username=username)
        people[username] = membership_create(
            community=community, external_id=f"ext-{username}", user=user, role=role, actor=None
        )
    return community, people


def _last(community: Community) -> AuditEntry:
    entry = AuditEntry.objects.filter(community=community).order_by("-seq").first()
    assert entry is not None
    return entry


def test_adding_a_membership_is_audited_with_the_admin_user_as_actor(
    admin_client: Client, garden, root
) -> None:  # type: ignore[no-untyped-def]
    community, _ = garden
    response = admin_client.post(
        reverse("admin:governance_membership_add"),
        {
            "community": community.pk,
            "external_id": "ext-new",
            "user": "",
            "display_name": "Newcomer",
            "role": "member",
        },
    )
    assert response.status_code == 302, response.content
    member = Membership.objects.get(community=community, external_id="ext-new")
    entry = _last(community)
    assert (entry.action, entry.object_id, entry.actor_id) == (
        "membership.created",
        str(member.pk),
        root.pk,
    )
    assert entry.payload["external_id"] == "ext-new"
    assert [chain.problem for chain in audit_verify(community=community)] == [None]


def test_a_duplicate_external_id_is_a_form_error_and_writes_nothing(
    admin_client: Client, garden
) -> None:  # type: ignore[no-untyped-def]
    community, _ = garden
    before = AuditEntry.objects.filter(community=community).count()
    response = admin_client.post(
        reverse("admin:governance_membership_add"),
        {"community": community.pk, "external_id": "ext-mem", "user": "", "role": "member"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert Membership.objects.filter(community=community, external_id="ext-mem").count() == 1
    assert AuditEntry.objects.filter(community=community).count() == before


def test_changing_a_role_is_audited_and_the_identity_stays_read_only(
    admin_client: Client, garden, root
) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    mem = people["mem"]
    response = admin_client.post(
        reverse("admin:governance_membership_change", args=[mem.pk]),
        # external_id is read-only here: a value sent for it is ignored.
        {"display_name": "Mem", "role": "moderator", "external_id": "hijack"},
    )
    assert response.status_code == 302, response.content
    mem.refresh_from_db()
    assert (mem.role, mem.display_name, mem.external_id) == ("moderator", "Mem", "ext-mem")
    entry = _last(community)
    assert entry.action == "membership.role_changed" and entry.actor_id == root.pk
    assert (entry.payload["from"], entry.payload["to"]) == ("member", "moderator")


def test_demoting_the_last_admin_is_refused_on_the_form(admin_client: Client, garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    before = AuditEntry.objects.filter(community=community).count()
    response = admin_client.post(
        reverse("admin:governance_membership_change", args=[people["ada"].pk]),
        {"display_name": "", "role": "member"},
    )
    assert response.status_code == 200
    assert "no admin left" in response.content.decode()
    people["ada"].refresh_from_db()
    assert people["ada"].role == "admin"
    assert AuditEntry.objects.filter(community=community).count() == before


def test_deleting_a_member_goes_through_the_audited_removal(
    admin_client: Client, garden, root
) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    url = reverse("admin:governance_membership_delete", args=[people["mem"].pk])
    assert admin_client.get(url).status_code == 200  # the confirmation page
    response = admin_client.post(url, {"post": "yes"})
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=people["mem"].pk).exists()
    entry = _last(community)
    assert (entry.action, entry.actor_id) == ("membership.removed", root.pk)
    assert entry.payload["external_id"] == "ext-mem"


def test_deleting_a_member_of_a_running_vote_is_refused(admin_client: Client, garden) -> None:  # type: ignore[no-untyped-def]
    community, people = garden
    open_proposal(community, people["mo"])
    before = AuditEntry.objects.filter(community=community).count()
    url = reverse("admin:governance_membership_delete", args=[people["mem"].pk])
    page = admin_client.get(url).content.decode()
    assert "running vote" in page
    admin_client.post(url, {"post": "yes"})
    assert Membership.objects.filter(pk=people["mem"].pk).exists()
    assert AuditEntry.objects.filter(community=community).count() == before


def test_the_bulk_delete_action_refuses_the_whole_selection_if_one_is_blocked(
    admin_client: Client, garden
) -> None:  # type: ignore[no-untyped-def]
    _, people = garden
    selected = [people["mem"].pk, people["ada"].pk]  # ada is the last admin
    admin_client.post(
        reverse("admin:governance_membership_changelist"),
        {"action": "delete_selected", "_selected_action": selected, "post": "yes"},
    )
    assert Membership.objects.filter(pk__in=selected).count() == 2


def test_adding_a_community_creates_its_audited_genesis(admin_client: Client, root) -> None:  # type: ignore[no-untyped-def]
    response = admin_client.post(
        reverse("admin:governance_community_add"),
        {"slug": "orchard", "name": "Orchard", "description": "Fruit."},
    )
    assert response.status_code == 302, response.content
    community = Community.objects.get(slug="orchard")
    assert policy_version_current(community=community).number == 1
    assert charter_version_current(community=community).number == 1
    actions = list(
        AuditEntry.objects.filter(community=community)
        .order_by("seq")
        .values_list("action", "actor")
    )
    assert actions[0] == ("community.created", root.pk)
    assert [chain.problem for chain in audit_verify(community=community)] == [None]
    # Once created it is read-only here: policy and charter change by proposal.
    change = admin_client.get(reverse("admin:governance_community_change", args=[community.pk]))
    assert b'name="name"' not in change.content
