"""Settings for bench/feed_get.py: the product's settings plus one bare comparison view."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.bench_urls"
