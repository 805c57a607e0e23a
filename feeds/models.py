from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q

from governance.models import Community, Membership, PolicyVersion, external_id_validator


class Creator(models.Model):
    """Someone whose items are recommended: a director, a channel, an author."""

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="creators")
    external_id = models.CharField(max_length=255, validators=[external_id_validator])
    name = models.CharField(max_length=200)
    member = models.ForeignKey(
        Membership,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="creator_profiles",
        help_text="The member account of this creator, if they have one.",
    )
    opted_out = models.BooleanField(
        default=False, help_text="The creator asked not to be recommended: none of their items is."
    )
    placeholder = models.BooleanField(
        default=False,
        help_text="Stands for unknown creators (e.g. films without a known director); producer-"
        "side metrics leave it out.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["community", "external_id"], name="creator_unique_external_id"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Item(models.Model):
    class Provenance(models.TextChoices):
        HUMAN = "human", "Human-made"
        AI_ASSISTED = "ai_assisted", "AI-assisted"
        AI_GENERATED = "ai_generated", "AI-generated"
        UNKNOWN = "unknown", "Unknown"

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="items")
    external_id = models.CharField(max_length=255, validators=[external_id_validator])
    title = models.CharField(max_length=500)
    url = models.URLField(max_length=2000, blank=True)
    tags = models.JSONField(default=list, blank=True, help_text="A list of tag strings.")
    provenance = models.CharField(
        max_length=16, choices=Provenance.choices, default=Provenance.UNKNOWN
    )
    published_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    creators = models.ManyToManyField(Creator, through="ItemCreator", related_name="items")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["community", "external_id"], name="item_unique_external_id"
            ),
            models.CheckConstraint(
                condition=Q(provenance__in=["human", "ai_assisted", "ai_generated", "unknown"]),
                name="item_provenance_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class ItemCreator(models.Model):
    """An item's creators in credit order; ``position`` 0 is the primary creator."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="credits")
    creator = models.ForeignKey(Creator, on_delete=models.CASCADE, related_name="credits")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["item", "position"]
        constraints = [
            models.UniqueConstraint(fields=["item", "creator"], name="itemcreator_unique"),
            models.UniqueConstraint(fields=["item", "position"], name="itemcreator_position"),
        ]

    def __str__(self) -> str:
        return f"{self.creator_id} credited on {self.item_id} (#{self.position})"


class Interaction(models.Model):
    """One event between a member and an item. Append-only; ``id`` order is arrival order."""

    class Kind(models.TextChoices):
        VIEW = "view", "View"
        LIKE = "like", "Like"
        SHARE = "share", "Share"
        SAVE = "save", "Save"
        SKIP = "skip", "Skip"
        RATING = "rating", "Rating"

    id = models.BigAutoField(primary_key=True)
    community = models.ForeignKey(
        Community, on_delete=models.CASCADE, related_name="interactions", db_index=False
    )
    member = models.ForeignKey(
        Membership, on_delete=models.CASCADE, related_name="interactions", db_index=False
    )
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="interactions")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    weight = models.FloatField(default=1.0)
    occurred_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # Re-sending the same event is harmless: the key is unique within a community.
            models.UniqueConstraint(
                fields=["community", "idempotency_key"], name="interaction_idempotent"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["view", "like", "share", "save", "skip", "rating"]),
                name="interaction_kind_valid",
            ),
        ]
        indexes = [
            # Training reads a community's interactions in id order (the data watermark).
            models.Index(fields=["community", "id"], name="interaction_community_id"),
            # A member's history: what to exclude from their feed, fold-in.
            models.Index(fields=["member", "item"], name="interaction_member_item"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} by {self.member_id} on {self.item_id}"


class FeedRun(models.Model):
    """One recompute of a community's feeds: the policy it used, what it read, how it went."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        # Trained; its shards are being scored (FeedRunShard). No worker holds the run itself.
        SCORING = "scoring", "Scoring"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="feed_runs")
    policy_version = models.ForeignKey(
        PolicyVersion, on_delete=models.PROTECT, related_name="feed_runs"
    )
    policy_sha256 = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Who holds the run: a worker's random token, renewed by its heartbeat. Another worker may
    # take the run over only once the heartbeat is older than the lease (the holder died).
    claim = models.CharField(max_length=32, blank=True, editable=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)
    watermark = models.BigIntegerField(
        null=True, blank=True, help_text="Highest interaction id the model was trained on."
    )
    stats = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The community's non-personalised feed of this run (most members engaged), for viewers
    # who are not members or have no feed of their own: item primary keys and scores.
    fallback_item_ids = models.JSONField(default=list, blank=True)
    fallback_scores = models.JSONField(default=list, blank=True)
    # The trained model and everything scoring needs (feeds.runs.artifacts), in the "feedmodels"
    # storage; written once per run by the worker that trained it.
    artifact = models.CharField(max_length=500, blank=True)
    # Shard completion, counted here (not in the broker): the transaction that takes
    # shards_done to shards_total swaps the run in.
    shards_total = models.PositiveIntegerField(default=0)
    shards_done = models.PositiveIntegerField(default=0)
    # What the finished run's feeds do for members and creators (feeds.insights.run_metrics),
    # computed by a worker after the swap; null until then. ``metrics_claimed_at`` is that worker's
    # claim.
    metrics = models.JSONField(null=True, blank=True)
    metrics_claimed_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "scoring", "finished", "failed"]),
                name="feedrun_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(shards_done__lte=F("shards_total")), name="feedrun_shards_done_le_total"
            ),
        ]
        indexes = [models.Index(fields=["community", "status"], name="feedrun_community_status")]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.community_id} ({self.status})"


class FeedRunShard(models.Model):
    """A slice of a run's members, scored by one task from the run's artifact.

    ``start``/``stop`` are positions in the artifact's member list (members in ascending id);
    ``member_lo``/``member_hi`` are the first and last member id of the slice, so a shard's feed
    rows are one id range. Claimed, leased and heartbeaten like a run.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"

    run = models.ForeignKey(FeedRun, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveIntegerField()
    start = models.PositiveIntegerField()
    stop = models.PositiveIntegerField()
    member_lo = models.BigIntegerField()
    member_hi = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    claim = models.CharField(max_length=32, blank=True, editable=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    stats = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="feedrunshard_unique_index"),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "finished", "failed"]),
                name="feedrunshard_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(start__lt=F("stop")) & Q(member_lo__lte=F("member_hi")),
                name="feedrunshard_bounds",
            ),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="feedrunshard_status_beat")]

    def __str__(self) -> str:
        return f"shard {self.index} of run {self.run_id} ({self.status})"


class FeedArrayField(models.JSONField):
    """A JSON array stored as text: PostgreSQL ``json`` rather than ``jsonb``.

    A run writes one row of four arrays per member, a million rows at the issue's scale, and feeds
    are only ever read whole by key, never searched inside; jsonb's parsed form buys nothing here.
    PostgreSQL takes the same COPY of 100,000 feed rows into ``json`` columns in 0.72 s and into
    ``jsonb`` in 4.11 s of its CPU (measured 2026-11; ``git log -p docs/benchmarks.md``), which the
    workers scoring beside it on the same cores lose. Other databases keep JSONField's own type.
    """

    def db_type(self, connection: Any) -> str | None:
        if connection.vendor == "postgresql":
            return "json"
        return super().db_type(connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        if connection.vendor != "postgresql":
            return super().get_db_prep_value(value, connection, prepared)
        from psycopg.types.json import Json

        return Json(self.get_prep_value(value) if not prepared else value)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        # psycopg parses ``json`` columns itself (Django only turns its jsonb loader to text).
        if value is None or not isinstance(value, (str, bytes)):
            return value
        return super().from_db_value(value, expression, connection)


class MemberFeed(models.Model):
    """A member's stored feed from one run: parallel arrays, one row per member.

    One row per member (not per entry) keeps a million-member community at a million rows a run
    and makes reading a feed one indexed lookup.
    """

    run = models.ForeignKey(FeedRun, on_delete=models.CASCADE, related_name="member_feeds")
    member = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="feeds")
    item_ids = FeedArrayField(help_text="Item primary keys, best first.")
    scores = FeedArrayField(help_text="Final scores under the policy, aligned with item_ids.")
    base_scores = FeedArrayField(
        default=list, help_text="Scores before the policy's adjustments, aligned with item_ids."
    )
    reasons = FeedArrayField(
        default=list, help_text="Reason bitmasks (ranking.reasons.Reason), aligned with item_ids."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "member"], name="memberfeed_unique"),
        ]

    def __str__(self) -> str:
        return f"feed of {self.member_id} in run {self.run_id}"


class FeedPointer(models.Model):
    """Which run's feeds a community serves. Switched by one compare-and-set UPDATE."""

    community = models.OneToOneField(
        Community, on_delete=models.CASCADE, primary_key=True, related_name="feed_pointer"
    )
    run = models.ForeignKey(FeedRun, on_delete=models.PROTECT, related_name="pointed_by")
    switched_at = models.DateTimeField(auto_now=True)
    revision = models.PositiveBigIntegerField(
        default=0,
        editable=False,
        help_text=(
            "Bumped by every change that alters what served pages show without a new run "
            "(an opt-out, an item edited or deactivated): cached pages and ETags name it."
        ),
    )
    published_through = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text=(
            "The largest item id published after the served run whose members' feeds were "
            "asked to fold it in; empty until then (set back at every swap)."
        ),
    )

    def __str__(self) -> str:
        return f"{self.community_id} serves run {self.run_id}"


class AppCredential(models.Model):
    """An API key for a third-party app. Only a SHA-256 digest of the secret is stored."""

    class Scope(models.TextChoices):
        FEEDS_READ = "feeds:read", "Read feeds"
        EVENTS_WRITE = "events:write", "Write interaction events"
        CATALOGUE_WRITE = "catalogue:write", "Write catalogue"

    community = models.ForeignKey(
        Community, on_delete=models.CASCADE, related_name="app_credentials"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_sha256 = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["community", "name"],
                condition=Q(revoked_at__isnull=True),
                name="appcredential_unique_active_name",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"


class BlueskyFeed(models.Model):
    """A community feed published to Bluesky as an app.bsky.feed.generator record."""

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="bluesky_feeds")
    rkey = models.CharField(
        max_length=15,
        unique=True,
        validators=[
            RegexValidator(r"^[a-z0-9-]{1,15}$", "1 to 15 lowercase letters, digits or dashes.")
        ],
        help_text="The record key of the feed's at-uri.",
    )
    display_name = models.CharField(max_length=24)
    description = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.rkey} ({self.community_id})"


class MemberChoices(models.Model):
    """What a member decided about their own recommendations. No row: the defaults (all True)."""

    member = models.OneToOneField(
        Membership, on_delete=models.CASCADE, primary_key=True, related_name="choices"
    )
    personalise = models.BooleanField(
        default=True,
        help_text="Off: the member gets the community's non-personalised feed.",
    )
    train_on_my_data = models.BooleanField(
        default=True,
        help_text="Off: the member's interactions are left out of the model's training.",
    )
    muted_creators = models.ManyToManyField(Creator, blank=True, related_name="muted_by")
    muted_tags = models.JSONField(default=list, blank=True, help_text="Tags never to be shown.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "member choices"

    def __str__(self) -> str:
        return f"choices of {self.member_id}"


class PolicyImpact(models.Model):
    """What adopting policy B instead of A would do on the community's own data (both sides).

    An offline evaluation (``ranking.evaluation.compare``), computed by a worker for a proposal
    page before the vote and kept so every visitor sees the same figures. Keyed by the two
    policies' hashes: the same comparison is reused until it is older than
    ``COMMONFEED_IMPACT_MAX_AGE_SECONDS`` (the data moves on).
    """

    class Status(models.TextChoices):
        COMPUTING = "computing", "Computing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    community = models.ForeignKey(Community, on_delete=models.CASCADE, related_name="impacts")
    policy_a_sha256 = models.CharField(max_length=64)
    policy_b_sha256 = models.CharField(max_length=64)
    policy_a = models.JSONField(help_text="The baseline policy document (the current version).")
    policy_b = models.JSONField(help_text="The proposed policy document.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPUTING)
    requested_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    watermark = models.BigIntegerField(
        null=True, blank=True, help_text="Highest interaction id the evaluation read."
    )
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["computing", "done", "failed"]),
                name="policyimpact_status_valid",
            ),
            # At most one computation in flight per comparison: a page viewed by many at once
            # starts one worker task, not one per visitor.
            models.UniqueConstraint(
                fields=["community", "policy_a_sha256", "policy_b_sha256"],
                condition=Q(status="computing"),
                name="policyimpact_one_computing",
            ),
        ]
        indexes = [
            models.Index(
                fields=["community", "policy_a_sha256", "policy_b_sha256", "-id"],
                name="policyimpact_lookup",
            )
        ]

    def __str__(self) -> str:
        return f"impact {self.pk} ({self.status})"
