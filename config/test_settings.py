"""Settings for the test suite: the real settings module, with a throwaway key and DEBUG on.

Everything else (DATABASE_URL, CELERY_BROKER_URL, ...) still comes from the environment, so the
same suite runs against PostgreSQL + Redis or SQLite + the filesystem broker.
"""

import os

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")

from config.settings import *  # noqa: F403

# PBKDF2's many rounds cost a third of the governance tests; the suite tests logins, not hashing.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
