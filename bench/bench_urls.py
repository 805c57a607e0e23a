"""The product's URLs plus a bare Django view returning fixed bytes (the benchmark's ceiling)."""

import os
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config import urls as config_urls

_BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()


def bare(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_BODY, content_type="application/json")


# The product's patterns as they are in production (not one include() deeper), after the bare
# view: both sides resolve their URL as a production server would.
urlpatterns = [
    path("bench/bare/", bare),
    *config_urls.urlpatterns,
]
