"""The Celery application. Workers start with ``celery -A config worker``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("commonfeed")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Voting ends on the minute: close due proposals and ratify passed ones (idempotent, see
# governance.services.proposals_close_due). Assigned, not read-and-merged: reading
# app.conf here would load the Django settings while the config package is still importing.
app.conf.beat_schedule = {
    "governance-close-due-proposals": {
        "task": "governance.tasks.close_due_proposals",
        "schedule": 60.0,
    },
    # The broker can lose messages; the database knows which runs are owed (feeds.runs.services).
    "feeds-reconcile-feed-runs": {
        "task": "feeds.tasks.reconcile_feed_runs",
        "schedule": 60.0,
    },
    # Recompute communities whose data changed (COMMONFEED_RECOMPUTE_INTERVAL_SECONDS) and
    # measure finished runs (feeds.insights.run_metrics).
    "feeds-schedule-feed-runs": {
        "task": "feeds.tasks.schedule_feed_runs",
        "schedule": 60.0,
    },
    # Items published since the served run reach feeds by fold-in (candidates.new_items).
    "feeds-fold-in-published-items": {
        "task": "feeds.tasks.fold_in_published_items",
        "schedule": 60.0,
    },
}
