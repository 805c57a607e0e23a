"""Commonfeed settings: every knob comes from the environment, read here and nowhere else.

Bad values fail at start-up with a message naming the variable (in the style of healthchecks'
``envbool``/``envint``), rather than surfacing later as a confusing runtime error. With no
environment at all you get the embedded mode: a SQLite file and a filesystem Celery broker under
``var/``, which still runs tasks in a real worker process.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# ALS fits in implicit are multithreaded already; a second layer of BLAS threads makes them slower
# (measured 2.25x on a 2-core machine). implicit warns about this too. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true/false, 1/0, yes/no).")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be at least {minimum}.")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


DEBUG = env_bool("DEBUG", False)
VAR_DIR = Path(env_str("COMMONFEED_VAR_DIR", str(BASE_DIR / "var")) or "")

_secret_key = env_str("SECRET_KEY")
if _secret_key is None:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set DEBUG=true for local development, "
            "or generate a key: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    _secret_key = "insecure-development-key-only-used-with-debug-on-" + "x" * 20
SECRET_KEY: str = _secret_key

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if urlsplit(_origin).scheme not in {"http", "https"}:
        raise ImproperlyConfigured(
            f"CSRF_TRUSTED_ORIGINS entry {_origin!r} must start with http:// or https://"
        )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "governance",
    "feeds",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Before any view: a NUL in the path, query or a form field is a 400, never a DataError.
    # After authentication only so that its 400 page can render the layout (it shows the user).
    "config.input_gate.InputGateMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------------
_default_db_url = f"sqlite:///{VAR_DIR / 'commonfeed.sqlite3'}"
DATABASE_URL = env_str("DATABASE_URL", _default_db_url) or _default_db_url
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not usable: {exc}") from None
if _db["ENGINE"] not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"}:
    raise ImproperlyConfigured(
        f"DATABASE_URL must be postgres:// or sqlite:// (got engine {_db['ENGINE']})."
    )
if _db["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # The worker and the web process share the file: wait for locks instead of failing at once,
    # and use WAL so readers never block on the worker's long feed write.
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests start a real worker process, so the test database must be a file it can open too.
    _db["TEST"] = {"NAME": str(Path(_db["NAME"]).with_suffix(".test.sqlite3"))}
    _db["CONN_MAX_AGE"] = 0
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery ---------------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
# "localhost" only keeps kombu from warning that no hostname was given; the transport is local.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL) or "filesystem://localhost//"
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Embedded mode: messages are files under var/broker, so a real worker process consumes them
    # without Redis. Good for one machine; use Redis for anything bigger.
    _broker_dir = Path(
        env_str("COMMONFEED_BROKER_DIR", str(VAR_DIR / "broker")) or str(VAR_DIR / "broker")
    )
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
elif not CELERY_BROKER_URL.startswith(("redis://", "rediss://", "amqp://", "pyamqp://")):
    raise ImproperlyConfigured(
        f"CELERY_BROKER_URL={CELERY_BROKER_URL!r}: use redis://, amqp:// or filesystem://"
    )
# Task state lives in the database (FeedRun rows), not in a result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "commonfeed") or "commonfeed"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}

# --- Caches ---------------------------------------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth, i18n, static ---------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Members, moderators and creators sign in on the site's own page; the admin's login form only
# accepts staff accounts.
LOGIN_URL = "login"
# Failed sign-ins allowed per account and address (five times that per address) in the window;
# past it, 429 until the window ends (governance.accounts).
COMMONFEED_LOGIN_FAILURES = env_int("COMMONFEED_LOGIN_FAILURES", 10, minimum=1)
COMMONFEED_LOGIN_WINDOW_SECONDS = env_int("COMMONFEED_LOGIN_WINDOW_SECONDS", 900, minimum=1)
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles")) or "")
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# In development, whitenoise serves straight from the app folders without collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
if DEBUG:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440, minimum=1024)
# JSON nested deeper than this is refused with a 400 (config/input_gate.py); a policy is 3 deep.
INPUT_MAX_JSON_DEPTH = env_int("INPUT_MAX_JSON_DEPTH", 64, minimum=8)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["feeds.credentials.auth.AppCredentialAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # The API speaks JSON only; form encodings would be advertised in the schema but cannot
    # carry a batch.
    # Behind the input gate: too deep a document or a NUL is a 400 (config/input_gate.py).
    "DEFAULT_PARSER_CLASSES": ["config.input_gate.StrictJSONParser"],
    "EXCEPTION_HANDLER": "feeds.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    # Keyed by the app credential, not the client address (see feeds/credentials/throttling.py).
    "DEFAULT_THROTTLE_CLASSES": ["feeds.credentials.throttling.AppCredentialRateThrottle"],
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Commonfeed API",
    "DESCRIPTION": (
        "Apps push catalogue and interaction events and pull each member's feed, ranked under "
        "the community's ratified policy. Authenticate with `Authorization: Bearer <token>` "
        '(see `manage.py create_app_credential`). Errors are `{"error": code, "detail": ...}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # The docs page's JavaScript and CSS are served by this project, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several serializers have a "kind" field with different choices; name this set explicitly.
    "ENUM_NAME_OVERRIDES": {"ProposalKindEnum": "governance.models.Proposal.Kind"},
}

# --- Security (production) ------------------------------------------------------------------------
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    if env_bool("SECURE_PROXY_SSL_HEADER", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Commonfeed -----------------------------------------------------------------------------------
# How many entries a stored feed holds per member.
COMMONFEED_FEED_LENGTH = env_int("COMMONFEED_FEED_LENGTH", 50, minimum=1)
# How many of them apps show: run metrics, the impact preview and the creator dashboard report
# every figure over these first places (where members look) as well as over the whole feed.
COMMONFEED_VISIBLE_DEPTH = env_int("COMMONFEED_VISIBLE_DEPTH", 10, minimum=1)
# A worker computing a run renews its claim every lease/4 seconds; a run whose claim is older
# than the lease belongs to a dead worker and is taken over.
COMMONFEED_RUN_LEASE_SECONDS = env_int("COMMONFEED_RUN_LEASE_SECONDS", 120, minimum=2)
# A queued run whose message has not been picked up this long is sent again (brokers lose
# messages: Redis restarts, a flushed queue).
COMMONFEED_QUEUE_GRACE_SECONDS = env_int("COMMONFEED_QUEUE_GRACE_SECONDS", 300, minimum=1)
# The beat schedule recomputes a community whose data changed (new interactions, member or
# creator choices, data deletions) once this long has passed since its newest run was requested.
COMMONFEED_RECOMPUTE_INTERVAL_SECONDS = env_int(
    "COMMONFEED_RECOMPUTE_INTERVAL_SECONDS", 3600, minimum=60
)
# Feed runs are trained once, then scored in shards of this many members, one Celery task per
# shard (acks_late), so several workers share a big community. A community with no more members
# than this is scored by the worker that trained it, in the same task.
COMMONFEED_SHARD_MEMBERS = env_int("COMMONFEED_SHARD_MEMBERS", 50_000, minimum=1)
# Members ranked per vectorised batch (bounds a shard's memory). Shards are rounded up to whole
# multiples of it, which makes a sharded run's feeds bit-identical to an unsharded one's.
COMMONFEED_SCORE_CHUNK = env_int("COMMONFEED_SCORE_CHUNK", 10_000, minimum=1)
# Trained models (feed run artifacts) live in the "feedmodels" storage (see STORAGES): local
# disk under this folder by default; point STORAGES["feedmodels"] at a shared backend (e.g.
# django-storages' S3Storage) when workers run on several machines.
COMMONFEED_MODEL_DIR = Path(
    env_str("COMMONFEED_MODEL_DIR", str(VAR_DIR / "feedmodels")) or str(VAR_DIR / "feedmodels")
)
STORAGES["feedmodels"] = {
    "BACKEND": "django.core.files.storage.FileSystemStorage",
    "OPTIONS": {"location": str(COMMONFEED_MODEL_DIR)},
}
# Fold-in ("fresh between runs"): a member's new events, choice changes and data deletion
# re-rank that member's served feed within seconds, in a worker, against the served run's model
# (no retraining). Off: feeds change only when a feed run swaps in.
COMMONFEED_FOLD_IN = env_bool("COMMONFEED_FOLD_IN", True)
# Requests one app credential may make to the app API, e.g. "6000/min" (per s, min, hour, day).
# Counted per credential in the default cache; over it, 429 with Retry-After.
COMMONFEED_APP_RATE = env_str("COMMONFEED_APP_RATE", "6000/min") or "6000/min"
# A policy proposal's impact preview (feeds.insights.impact): an offline evaluation of current
# vs proposed policy on the community's data, reused until it is this old, on at most this many
# members (a seeded sample beyond that keeps it to seconds).
COMMONFEED_IMPACT_MAX_AGE_SECONDS = env_int("COMMONFEED_IMPACT_MAX_AGE_SECONDS", 3600, minimum=0)
COMMONFEED_IMPACT_MAX_MEMBERS = env_int("COMMONFEED_IMPACT_MAX_MEMBERS", 20_000, minimum=100)
if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", COMMONFEED_APP_RATE):
    raise ImproperlyConfigured(
        f"COMMONFEED_APP_RATE={COMMONFEED_APP_RATE!r} is not a rate like '6000/min'."
    )

# --- Bluesky feed generator (optional) ------------------------------------------------------------
# The generator's service DID (did:web:<host> is served at /.well-known/did.json) and the DID of
# the account that publishes the feed records. Unset: the XRPC endpoints answer 501.
BSKY_SERVICE_DID = env_str("BSKY_SERVICE_DID")
BSKY_PUBLISHER_DID = env_str("BSKY_PUBLISHER_DID")
BSKY_SERVICE_ENDPOINT = env_str("BSKY_SERVICE_ENDPOINT")
for _name, _did in (
    ("BSKY_SERVICE_DID", BSKY_SERVICE_DID),
    ("BSKY_PUBLISHER_DID", BSKY_PUBLISHER_DID),
):
    if _did is not None and not _did.startswith("did:"):
        raise ImproperlyConfigured(f"{_name}={_did!r} is not a DID (did:web:..., did:plc:...).")
if (BSKY_SERVICE_DID is None) != (BSKY_PUBLISHER_DID is None):
    raise ImproperlyConfigured("Set both BSKY_SERVICE_DID and BSKY_PUBLISHER_DID, or neither.")
# Signing keys of viewers' DIDs: "did:plc:abc=did:key:z...,did:web:x=did:key:z...". A viewer whose
# DID is itself a did:key needs no entry.
BSKY_DID_KEYS: dict[str, str] = {}
for _pair in env_list("BSKY_DID_KEYS", []):
    _did, _, _key = _pair.partition("=")
    if not _did.startswith("did:") or not _key.startswith("did:key:"):
        raise ImproperlyConfigured(f"BSKY_DID_KEYS entry {_pair!r} is not DID=did:key:...")
    BSKY_DID_KEYS[_did] = _key

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
