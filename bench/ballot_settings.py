"""Settings for bench/ballots.py: the product's settings plus a bare session-authenticated view."""

import os

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.ballot_urls"
# bench/ballots.py --session-engines runs phases with other session engines side by side.
SESSION_ENGINE = os.environ.get(
    "BENCH_SESSION_ENGINE",
    globals().get("SESSION_ENGINE", "django.contrib.sessions.backends.db"),
)
