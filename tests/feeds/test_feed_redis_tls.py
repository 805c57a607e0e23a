"""The feed cache over TLS: a ``rediss://`` cache URL serves feed GET hits and invalidations.

A ``redis-server`` is started here with TLS only (no plaintext port), under a self-signed
certificate made for the test, and the default cache is pointed at it; redis-py verifies the
certificate against it (``ssl_ca_certs``). Runs with or without REDIS_URL.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from feeds.credentials.services import app_credential_create, app_credential_revoke
from feeds.runs.services import feed_run_execute, feed_run_request
from feeds.serving import cache as feedcache
from tests.factories import make_community, small_catalogue

pytestmark = pytest.mark.django_db


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: ``(certificate, key)`` files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "commonfeed-test-redis")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "redis.crt", folder / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``(rediss:// URL, port)`` of a TLS-only Redis that lives as long as this module."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    folder = tmp_path_factory.mktemp("redis-tls")
    cert, key = _self_signed(folder)
    port = _free_port()
    server = subprocess.Popen(
        [
            binary,
            *("--port", "0"),  # no plaintext listener: every byte goes through TLS
            *("--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(folder)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server with TLS did not start (exit {server.poll()})")
                time.sleep(0.1)
        yield url, port
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def tls_cache(tls_redis: tuple[str, int], settings: Any) -> str:
    url, _ = tls_redis
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    }
    feedcache._down_until = 0.0
    return url


def _get(client: Client, url: str, token: str) -> tuple[Any, int]:
    """The response and how many SQL queries it took."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}")
    return response, len(queries)


def test_the_tls_server_refuses_plaintext(tls_redis: tuple[str, int]) -> None:
    _, port = tls_redis
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_timeout=2, retry=None).ping()


def test_feed_hits_and_invalidations_work_over_rediss(
    tls_cache: str, client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    store = feedcache.redis_store()
    assert store is not None
    assert store[0].connection_pool.connection_class is redis.SSLConnection
    community = make_community("tls")
    data = small_catalogue(community)
    feed_run_execute(run_id=feed_run_request(community=community).pk)
    credential, token = app_credential_create(
        community=community, name="app", scopes=["feeds:read"]
    )
    url = reverse("api-member-feed", args=[community.slug, data["members"][0].external_id])

    cold, cold_queries = _get(client, url, token)
    warm, warm_queries = _get(client, url, token)
    assert cold.status_code == warm.status_code == 200
    assert cold_queries > 0 and warm_queries == 0  # the hit came from Redis, over TLS
    assert warm.content == cold.content
    # As after a Redis restart (done here, on this test's own server): the read script is
    # loaded again, and the request is still a hit.
    store[0].script_flush()
    reloaded, reloaded_queries = _get(client, url, token)
    assert reloaded.content == cold.content and reloaded_queries == 0

    # A swap reaches the next request, which then fills the cache again.
    with django_capture_on_commit_callbacks(execute=True):
        newer = feed_run_execute(run_id=feed_run_request(community=community).pk)
    swapped, _ = _get(client, url, token)
    again, again_queries = _get(client, url, token)
    assert swapped.json()["run"] == again.json()["run"] == newer.pk
    assert again_queries == 0

    app_credential_revoke(credential=credential)
    refused, _ = _get(client, url, token)
    assert refused.status_code == 401
    assert feedcache.available()  # no Redis call failed on the way
