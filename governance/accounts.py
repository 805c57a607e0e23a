"""Signing in, with failed attempts throttled: per account and address, and per address.

Django's login accepts as many wrong passwords as a client cares to send. Here each failure
counts in the default cache (Redis in production) under the username with the client's address
and under the address alone; past ``COMMONFEED_LOGIN_FAILURES`` (per account) or five times that
(per address) within ``COMMONFEED_LOGIN_WINDOW_SECONDS``, sign-in is refused with 429 until the
window ends, whatever the password. If the cache cannot be reached, sign-in goes on unthrottled:
an outage must not lock everyone out.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

PER_ADDRESS_FACTOR = 5


def _keys(request: HttpRequest | None, username: str) -> tuple[str, str]:
    address = (request.META.get("REMOTE_ADDR", "") if request is not None else "") or "-"
    account = hashlib.sha256(f"{username.strip().lower()}|{address}".encode()).hexdigest()[:32]
    return f"cf:login:acct:{account}", f"cf:login:addr:{address}"


def _failures(request: HttpRequest | None, username: str) -> tuple[int, int]:
    account, address = _keys(request, username)
    try:
        counts = cache.get_many([account, address])
    except Exception:
        logger.exception("login throttle: the cache is unreachable; not throttling")
        return 0, 0
    return int(counts.get(account, 0)), int(counts.get(address, 0))


def _count_failure(request: HttpRequest | None, username: str) -> None:
    window = settings.COMMONFEED_LOGIN_WINDOW_SECONDS
    for key in _keys(request, username):
        try:
            # add() starts the window on the first failure; incr() never extends it.
            if not cache.add(key, 1, timeout=window):
                cache.incr(key)
        except Exception:
            logger.exception("login throttle: could not count a failed sign-in")


class ThrottledAuthentication:
    """Refuses before checking the password once the failures reach the limit."""

    throttled = False

    def clean(self: Any) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        account, address = _failures(self.request, username)
        limit = settings.COMMONFEED_LOGIN_FAILURES
        if account >= limit or address >= limit * PER_ADDRESS_FACTOR:
            self.throttled = True
            minutes = max(1, settings.COMMONFEED_LOGIN_WINDOW_SECONDS // 60)
            raise forms.ValidationError(
                f"Too many failed sign-ins. Try again in {minutes} minutes.", code="throttled"
            )
        try:
            return super().clean()  # type: ignore[misc,no-any-return]
        except forms.ValidationError:
            _count_failure(self.request, username)
            raise


class ThrottledAuthenticationForm(ThrottledAuthentication, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledAuthentication, AdminAuthenticationForm):
    pass


class ThrottledLoginView(LoginView):
    form_class = ThrottledAuthenticationForm

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        if getattr(form, "throttled", False):
            response.status_code = 429
            response["Retry-After"] = str(settings.COMMONFEED_LOGIN_WINDOW_SECONDS)
        return response
