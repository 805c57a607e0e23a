"""The product's URLs plus a bare Django view returning fixed bytes (the benchmark's ceiling)."""

import os
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

_BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()


def bare(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_BODY, content_type="application/json")


urlpatterns = [
    path("bench/bare/", bare),
    path("", include("config.urls")),
]
