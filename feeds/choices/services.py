"""Member and creator choices about recommendation: refusals at the person's level.

A member may refuse personalisation (they get the community's non-personalised feed), refuse that
their interactions train the model, mute creators and tags, and have their interaction data
deleted. A creator may opt out of being recommended. Every change is audited in the same
transaction; a deletion's audit entry records that it happened and how much, never the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from feeds import enqueue
from feeds.models import Creator, Interaction, ItemCreator, MemberChoices
from feeds.serving import cache as feedcache
from governance.models import Community, Membership
from governance.services import audit_append


class UnknownCreators(ValueError):
    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__(f"unknown creator(s): {', '.join(missing)}")
        self.missing = list(missing)


def member_choices_get(*, member: Membership) -> MemberChoices:
    """The member's choices; an unsaved row with the defaults if they never chose."""
    return MemberChoices.objects.filter(member=member).first() or MemberChoices(member=member)


def member_choices_as_dict(choices: MemberChoices) -> dict[str, Any]:
    # An unsaved row (the defaults) has no muted creators to look up.
    muted = (
        []
        if choices._state.adding
        else sorted(choices.muted_creators.values_list("external_id", flat=True))
    )
    return {
        "personalise": choices.personalise,
        "train_on_my_data": choices.train_on_my_data,
        "muted_creators": muted,
        "muted_tags": sorted(choices.muted_tags),
    }


def _refresh_after_commit(member: Membership) -> None:
    # The member's served feed follows their choices and deletions within seconds (fold-in),
    # not only from the next feed run.
    community_id, member_id = member.community_id, member.pk
    transaction.on_commit(
        lambda: enqueue.member_feeds_refresh_request(
            community_id=community_id, member_ids=[member_id]
        )
    )


def _pages_invalidate_after_commit(member: Membership) -> None:
    # Mutes apply from the next request: pages are rendered with the member's mutes as they are
    # then (feeds.serving.selectors.member_feed_get), so the cached ones must go once the change is
    # visible, whether or not a fold-in refresh follows.
    slug, external_id = member.community.slug, member.external_id
    transaction.on_commit(
        lambda: feedcache.member_pages_invalidate(slug=slug, members=[external_id])
    )


@transaction.atomic
def member_choices_set(
    *,
    member: Membership,
    actor: AbstractBaseUser | None,
    personalise: bool | None = None,
    train_on_my_data: bool | None = None,
    muted_creators: Sequence[str] | None = None,
    muted_tags: Sequence[str] | None = None,
) -> MemberChoices:
    """Change some of the member's choices (``None`` leaves one as it is)."""
    choices, _ = MemberChoices.objects.select_for_update().get_or_create(member=member)
    if personalise is not None:
        choices.personalise = personalise
    if train_on_my_data is not None:
        choices.train_on_my_data = train_on_my_data
    if muted_tags is not None:
        choices.muted_tags = sorted({t.strip() for t in muted_tags if t.strip()})
    choices.save()
    if muted_creators is not None:
        wanted = set(muted_creators)
        found = dict(
            Creator.objects.filter(
                community_id=member.community_id, external_id__in=wanted
            ).values_list("external_id", "pk")
        )
        missing = sorted(wanted - set(found))
        if missing:
            raise UnknownCreators(missing)
        choices.muted_creators.set(found.values())
    _refresh_after_commit(member)
    if muted_creators is not None or muted_tags is not None:
        _pages_invalidate_after_commit(member)
    audit_append(
        community=member.community,
        actor=actor,
        action="member.choices_changed",
        obj=member,
        payload={"member": member.external_id, **member_choices_as_dict(choices)},
    )
    return choices


@transaction.atomic
def member_data_delete(*, member: Membership, actor: AbstractBaseUser | None) -> int:
    """Delete every interaction of the member; the next training run will not see them.

    Returns how many were deleted. The audit entry records the request and the count only.
    """
    deleted, _ = Interaction.objects.filter(member=member).delete()
    _refresh_after_commit(member)
    audit_append(
        community=member.community,
        actor=actor,
        action="member.data_deleted",
        obj=member,
        payload={"member": member.external_id, "interactions_deleted": deleted},
    )
    return deleted


@transaction.atomic
def creator_choices_set(
    *, creator: Creator, opted_out: bool, actor: AbstractBaseUser | None
) -> Creator:
    Creator.objects.filter(pk=creator.pk).update(opted_out=opted_out)
    creator.opted_out = opted_out
    # Served feeds drop (or show again) the creator's items from the next request, not only
    # from the next run.
    feedcache.served_content_changed(community=creator.community)
    audit_append(
        community=creator.community,
        actor=actor,
        action="creator.choices_changed",
        obj=creator,
        payload={"creator": creator.external_id, "opted_out": opted_out},
    )
    return creator


@transaction.atomic
def creator_member_set(
    *, creator: Creator, member: Membership | None, actor: AbstractBaseUser | None
) -> bool:
    """Make ``member`` the creator's account (None: no account); audited if it changes.
    Returns whether it changed."""
    if member is not None and member.community_id != creator.community_id:
        raise ValueError("the member belongs to another community")
    locked = Creator.objects.select_for_update().only("member_id").get(pk=creator.pk)
    if locked.member_id == (member.pk if member is not None else None):
        return False
    previous = (
        Membership.objects.filter(pk=locked.member_id).values_list("external_id", flat=True).first()
    )
    Creator.objects.filter(pk=creator.pk).update(member=member)
    creator.member = member
    creator_member_link_audit(
        creator=creator,
        member=member.external_id if member is not None else None,
        previous=previous,
        actor=actor,
    )
    return True


def creator_member_link_audit(
    *, creator: Creator, member: str | None, previous: str | None, actor: Any = None
) -> None:
    """Audit a change of the creator's member account (``member``, ``previous``: the external
    ids, or None): that account reads the creator dashboard and opts the creator out. Call in
    the transaction that changes it."""
    audit_append(
        community=creator.community,
        actor=actor,
        action="creator.member_linked",
        obj=creator,
        payload={"creator": creator.external_id, "member": member, "previous": previous},
    )


@dataclass(frozen=True)
class RankingChoices:
    """Everyone's choices as the arrays ``ranking.pipeline.compute_feeds`` takes."""

    no_personalisation_members: np.ndarray
    no_training_members: np.ndarray
    refused_items: np.ndarray
    member_blocks: tuple[np.ndarray, np.ndarray]


def ranking_choices_load(
    *,
    community: Community,
    item_tags: dict[int, list[str]],
    members: Sequence[int] | None = None,
) -> RankingChoices:
    """Read all members' and creators' choices of the community in a few bulk queries.

    ``item_tags`` maps each active item id to its tags (already loaded by the caller).
    ``members``: only these members' choices (a fold-in refresh); creators' opt-outs are
    always the whole community's.
    """
    choices = MemberChoices.objects.filter(member__community=community)
    if members is not None:
        choices = choices.filter(member_id__in=members)
    no_personalisation = list(choices.filter(personalise=False).values_list("member_id", flat=True))
    no_training = list(choices.filter(train_on_my_data=False).values_list("member_id", flat=True))
    opted_out_items = (
        ItemCreator.objects.filter(creator__community=community, creator__opted_out=True)
        .values_list("item_id", flat=True)
        .distinct()
    )

    block_members: list[int] = []
    block_items: list[int] = []
    # Muted creators: every item crediting them, whatever the credit position.
    muted = MemberChoices.muted_creators.through.objects.filter(
        memberchoices__member__community=community
    ).values_list("memberchoices_id", "creator_id")
    credits = ItemCreator.objects.filter(creator__community=community)
    if members is not None:
        muted = muted.filter(memberchoices_id__in=members)
        credits = credits.filter(creator_id__in=muted.values("creator_id"))
    items_by_creator: dict[int, list[int]] = {}
    if muted.exists():
        for item_id, creator_id in credits.values_list("item_id", "creator_id"):
            items_by_creator.setdefault(creator_id, []).append(item_id)
    for member_id, creator_id in muted:
        items = items_by_creator.get(creator_id, [])
        block_members += [member_id] * len(items)
        block_items += items
    # Muted tags: every active item carrying one of them.
    tag_rows = list(choices.exclude(muted_tags=[]).values_list("member_id", "muted_tags"))
    if tag_rows:
        items_by_tag: dict[str, list[int]] = {}
        for item_id, tags in item_tags.items():
            for tag in tags:
                items_by_tag.setdefault(tag, []).append(item_id)
        for member_id, tags in tag_rows:
            items = sorted({i for tag in tags for i in items_by_tag.get(tag, [])})
            block_members += [member_id] * len(items)
            block_items += items
    return RankingChoices(
        no_personalisation_members=np.asarray(no_personalisation, dtype=np.int64),
        no_training_members=np.asarray(no_training, dtype=np.int64),
        refused_items=np.fromiter(opted_out_items, dtype=np.int64),
        member_blocks=(
            np.asarray(block_members, dtype=np.int64),
            np.asarray(block_items, dtype=np.int64),
        ),
    )
