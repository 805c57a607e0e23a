"""Bluesky feed generator: serve community feeds over XRPC (app.bsky.feed.getFeedSkeleton).

A community's feed is published as ``at://<publisher DID>/app.bsky.feed.generator/<rkey>``; its
entries are the community's items whose external ids are at-uris of posts. A viewer who sends a
service-auth JWT (signed with the key of their DID) and is a member of the community (their DID
is their ``external_id``) gets their personal feed; anyone else gets the community's
non-personalised feed of the same run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import base58
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

GET_FEED_SKELETON = "app.bsky.feed.getFeedSkeleton"
FEED_COLLECTION = "app.bsky.feed.generator"
AT_URI = re.compile(r"^at://(?P<authority>[^/]+)/(?P<collection>[^/]+)/(?P<rkey>[^/]+)$")

# Multicodec prefixes of did:key public keys (varint-encoded): secp256k1-pub and p256-pub.
_MULTICODECS: dict[bytes, tuple[ec.EllipticCurve, str]] = {
    b"\xe7\x01": (ec.SECP256K1(), "ES256K"),
    b"\x80\x24": (ec.SECP256R1(), "ES256"),
}
# Clock skew tolerated when checking exp.
LEEWAY_SECONDS = 30


class XrpcError(Exception):
    """An XRPC error: ``{"error": name, "message": ...}`` with an HTTP status."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message


@dataclass(frozen=True)
class FeedUri:
    publisher: str
    rkey: str


def feed_uri_parse(uri: str) -> FeedUri:
    match = AT_URI.match(uri)
    if match is None or match["collection"] != FEED_COLLECTION:
        raise XrpcError(400, "InvalidRequest", f"feed must be an at-uri of a {FEED_COLLECTION}")
    return FeedUri(publisher=match["authority"], rkey=match["rkey"])


def feed_uri(rkey: str) -> str:
    return f"at://{settings.BSKY_PUBLISHER_DID}/{FEED_COLLECTION}/{rkey}"


def did_key_public_key(did_key: str) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The public key and JWS algorithm of a ``did:key`` (secp256k1 or P-256, compressed)."""
    if not did_key.startswith("did:key:z"):
        raise ValueError("not a base58btc did:key")
    raw = base58.b58decode(did_key[len("did:key:z") :])
    for prefix, (curve, alg) in _MULTICODECS.items():
        if raw.startswith(prefix):
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, raw[len(prefix) :]), alg
    raise ValueError("unsupported did:key type")


def signing_key_of(did: str) -> str | None:
    """The did:key that signs for ``did``: itself for a did:key, else from BSKY_DID_KEYS.

    Resolving did:plc and did:web documents over the network is left to a resolver in front of
    this server (or to the BSKY_DID_KEYS setting); an unknown DID cannot authenticate.
    """
    if did.startswith("did:key:"):
        return did
    keys: dict[str, str] = settings.BSKY_DID_KEYS
    return keys.get(did)


def viewer_did_verify(token: str, *, lxm: str = GET_FEED_SKELETON) -> str:
    """Verify a service-auth JWT for this generator and return the viewer's DID (``iss``)."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise XrpcError(401, "BadJwt", "The token is not a JWT.") from None
    iss = unverified.get("iss")
    if not isinstance(iss, str) or not iss.startswith("did:"):
        raise XrpcError(401, "BadJwt", "The token has no issuer DID.")
    # An iss such as did:plc:abc#atproto_labeler names a service of that DID; viewers are bare.
    did_key = signing_key_of(iss.split("#", 1)[0])
    if did_key is None:
        raise XrpcError(401, "BadJwt", f"No signing key is known for {iss}.")
    try:
        key, alg = did_key_public_key(did_key)
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=settings.BSKY_SERVICE_DID,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "aud", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise XrpcError(401, "JwtExpired", "The token has expired.") from None
    except jwt.InvalidAudienceError:
        raise XrpcError(401, "BadJwtAudience", "The token is for another service.") from None
    except (jwt.PyJWTError, ValueError):
        raise XrpcError(401, "BadJwtSignature", "The token's signature does not verify.") from None
    if claims.get("lxm") != lxm:
        raise XrpcError(401, "BadJwtLexiconMethod", f"The token is not bound to {lxm}.")
    return iss


def service_jwt(
    *, iss: str, private_key: ec.EllipticCurvePrivateKey, alg: str = "ES256K", **claims: Any
) -> str:
    """Sign a service-auth JWT as a viewer's PDS would (used by tests and tooling)."""
    payload = {
        "iss": iss,
        "aud": settings.BSKY_SERVICE_DID,
        "exp": int(time.time()) + 60,
        "lxm": GET_FEED_SKELETON,
        **claims,
    }
    return jwt.encode(payload, private_key, algorithm=alg, headers={"typ": "JWT"})


def did_key_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """The did:key for a secp256k1 or P-256 public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    point = public_key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    prefix = b"\xe7\x01" if isinstance(public_key.curve, ec.SECP256K1) else b"\x80\x24"
    return "did:key:z" + base58.b58encode(prefix + point).decode()
