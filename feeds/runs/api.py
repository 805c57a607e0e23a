"""Feed runs over the API: list them with their metrics, request one (moderators and admins)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from config.input_gate import no_body_fields
from feeds.api import SESSION_ERROR_RESPONSES, SessionApi
from feeds.models import FeedRun
from feeds.runs import schedule as runs


class FeedRunOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=FeedRun.Status.choices)
    policy_version = serializers.IntegerField(source="policy_version.number")
    policy_sha256 = serializers.CharField()
    requested_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    shards_done = serializers.IntegerField()
    shards_total = serializers.IntegerField()
    members = serializers.IntegerField(
        source="stats.members", allow_null=True, default=None, help_text="Feeds computed."
    )
    watermark = serializers.IntegerField(
        allow_null=True, help_text="Highest interaction id the model was trained on."
    )
    stats = serializers.DictField(help_text="Timings (seconds) and sizes of the run's steps.")
    error = serializers.CharField(help_text="Why the run failed; empty otherwise.")
    metrics = serializers.DictField(
        allow_null=True,
        help_text=(
            "Two-sided metrics of a finished run's feeds, null until measured: status (done, "
            "unavailable or failed); when done, consumers (diversity_tags, novelty_bits, "
            "avg_popularity, miscalibration_kl) and producers (item_gini, creator_gini, "
            "item_coverage, creator_coverage, long_tail_creator_share, new_creator_share, "
            "ai_generated_share) over the whole feed, counting every place 1; from version 2 "
            "also depth (COMMONFEED_VISIBLE_DEPTH), length, discount and at_depth and "
            "whole_feed, each with consumers and producers, the producers adding *_weighted "
            "twins that count place p (0 = top) 1/log2(p + 2). Values null where undefined. "
            "See docs/pipeline.md and docs/evaluation.md."
        ),
    )


class FeedRunRequestedOutput(serializers.Serializer[Any]):
    created = serializers.BooleanField(
        help_text="False: a run was already queued or in progress; that run is returned."
    )
    run = FeedRunOutput()


class FeedRunsApi(SessionApi):
    @extend_schema(
        responses={200: FeedRunOutput(many=True), **SESSION_ERROR_RESPONSES},
        summary="List a community's recent feed runs",
        description=(
            "The 20 newest runs, newest first, with their two-sided metrics. For the "
            "community's moderators and admins, signed in (session cookie)."
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        community = runs.community_for_run_manager(slug=slug, user=request.user)
        return Response(FeedRunOutput(runs.feed_runs_recent(community=community), many=True).data)

    @extend_schema(
        request=None,
        responses={
            201: FeedRunRequestedOutput,
            200: OpenApiResponse(
                FeedRunRequestedOutput, description="A run was already queued or in progress."
            ),
            **SESSION_ERROR_RESPONSES,
        },
        summary="Recompute the community's feeds now",
        description=(
            "Queues a run under the current policy (audited as feed_run.requested) unless one "
            "is queued or in progress, which is returned instead. Moderators and admins."
        ),
    )
    def post(self, request: Request, slug: str) -> Response:
        community = runs.community_for_run_manager(slug=slug, user=request.user)
        no_body_fields(request.data)
        requested = runs.feed_run_request_on_demand(community=community, actor=request.user)
        body = {"created": requested.created, "run": FeedRunOutput(requested.run).data}
        return Response(body, status=201 if requested.created else 200)
