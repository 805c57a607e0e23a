"""A WSGI environ for in-process requests, shared by the benchmarks (no Django imported here:
bench/feed_miss.py loads it before choosing which tree's code to import)."""

from __future__ import annotations

import io
from typing import Any


def wsgi_get(path: str, token: str | None, query: str = "") -> dict[str, Any]:
    """The WSGI environ of ``GET path?query`` to 127.0.0.1, with ``token`` as a bearer token."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "HTTP_HOST": "127.0.0.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return environ
