"""The product's URLs plus two bare Django views returning fixed bytes (the benchmark's
references): ``bare-auth`` authenticates the bearer token as the app API does, ``bare`` does not
authenticate at all."""

import hmac
import os
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.urls import path

from config import urls as config_urls
from feeds.credentials.auth import TOKEN_PREFIX, token_digest
from feeds.models import AppCredential

_BODY = Path(os.environ.get("BENCH_BARE_BODY", "/dev/null")).read_bytes()


def bare(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_BODY, content_type="application/json")


def bare_auth(request: HttpRequest) -> HttpResponse:
    """The bytes, once the bearer token is checked as
    ``feeds.credentials.auth.AppCredentialAuthentication`` checks it (the credential row by its
    prefix, one indexed query, then the digest), without DRF around it and without publishing
    the credential to the cache."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    parts = token.split("_", 2)
    if scheme != "Bearer" or len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return HttpResponse(status=401)
    credential = (
        AppCredential.objects.filter(prefix=parts[1], revoked_at__isnull=True)
        .select_related("community")
        .first()
    )
    if credential is None or not hmac.compare_digest(credential.secret_sha256, token_digest(token)):
        return HttpResponse(status=401)
    return HttpResponse(_BODY, content_type="application/json")


# The product's patterns as they are in production (not one include() deeper), after the bare
# views: every side resolves its URL as a production server would.
urlpatterns = [
    path("bench/bare/", bare),
    path("bench/bare-auth/", bare_auth),
    *config_urls.urlpatterns,
]
