"""Per-app rate limits for the app API.

The bucket is the authenticated credential, never the client address: ``X-Forwarded-For`` is
whatever the caller writes, and one app may call from many machines (or many apps from one
NAT). Requests without a valid credential are refused by authentication before any throttle
runs, so they cannot fill another app's bucket. State lives in Django's default cache (Redis in
production, shared by every web process; local memory in development and tests).

If the cache is down, requests are let through unthrottled rather than refused: the limit
protects the service, and an outage of its counter must not become an outage of the API. After
a failure the cache is left alone for a few seconds.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from feeds.auth import AppPrincipal

if TYPE_CHECKING:
    # Only for annotations: rest_framework.views imports this module (DEFAULT_THROTTLE_CLASSES).
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)

BACKOFF_SECONDS = 5.0
_down_until = 0.0


class AppCredentialRateThrottle(SimpleRateThrottle):
    scope = "app"

    def get_rate(self) -> str:
        # Read per request rather than from DRF's DEFAULT_THROTTLE_RATES, which a class attribute
        # captures once at import time (so overriding it in tests would silently do nothing).
        rate: str = settings.COMMONFEED_APP_RATE
        return rate

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        principal = request.user
        if not isinstance(principal, AppPrincipal):
            return None  # Not an app request (e.g. a moderator's session): not this throttle's.
        return self.cache_format % {"scope": self.scope, "ident": principal.credential.prefix}

    def allow_request(self, request: Request, view: APIView) -> bool:
        global _down_until
        if time.monotonic() < _down_until:
            return True
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # any cache outage: fail open, see the module docstring
            logger.warning("throttle cache unavailable, not throttling: %r", exc)
            _down_until = time.monotonic() + BACKOFF_SECONDS
            return True
