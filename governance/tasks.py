"""Celery tasks of governance. Thin: each calls one service."""

from __future__ import annotations

from celery import shared_task

from governance.services import proposals_close_due


@shared_task(name="governance.tasks.close_due_proposals")
def close_due_proposals() -> dict[str, int]:
    """Close open proposals whose voting ended and ratify passed ones (beat: every minute)."""
    return proposals_close_due()
