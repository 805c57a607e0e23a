"""Signals governance sends; other apps (feeds) subscribe. Governance never imports them."""

from __future__ import annotations

import django.dispatch

# Sent once, after the commit that made ``version`` the community's current policy version
# through a ratified proposal. Keyword arguments: ``community``, ``version``, ``proposal``.
policy_version_ratified = django.dispatch.Signal()
