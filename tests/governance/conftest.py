"""Governance test helpers: personas and raw-SQL tampering that bypasses the guards."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from governance.models import Community
from tests.factories import make_community

on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the append-only triggers exist on PostgreSQL only"
)
# SQLite serialises every write transaction (BEGIN IMMEDIATE), so there is no race to test.
concurrent_on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="concurrent writers are tested on PostgreSQL"
)


@pytest.fixture
def owner(django_user_model):  # type: ignore[no-untyped-def]
    return django_user_model.objects.create_user(username="olivia", password="x")


@pytest.fixture
def community(db: None) -> Community:
    return make_community("garden")


def tamper(sql: str, params: list[object] | None = None) -> None:
    """Run raw SQL against the audit table as someone with database rights would.

    On PostgreSQL the triggers are disabled first, as the table owner or a superuser can; inside
    the test's transaction, so they are back when the test's transaction rolls back.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The test's own inserts leave deferred foreign-key checks pending, and PostgreSQL
            # will not ALTER a table with pending trigger events: run them first.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE governance_auditentry DISABLE TRIGGER USER")
        cursor.execute(sql, params or [])
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE governance_auditentry ENABLE TRIGGER USER")


def verify_failure(slug: str) -> str:
    """Run audit_verify on a community expected to fail; return the error message."""
    with pytest.raises(CommandError) as failure:
        call_command("audit_verify", community=slug)
    return str(failure.value)
