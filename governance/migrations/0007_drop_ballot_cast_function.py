"""Drop ``governance_ballot_cast``: ballots are written by one Python path on every database.

The function wrote a ballot and its audit entry in one server-side call, computing the entry's
hash in SQL: a second implementation of the ballot rules and of the hash. Both now live only in
Python (``governance.services.ballots``, ``governance.audit_chain``). Reversing
this migration installs the function again, as migration 0006 did.
"""

from importlib import import_module

from django.db import migrations

_0006 = import_module("governance.migrations.0006_ballot_cast_function")


class Migration(migrations.Migration):
    dependencies = [("governance", "0006_ballot_cast_function")]

    operations = [
        migrations.RunPython(
            _0006._on_postgresql(_0006.UNINSTALL),
            _0006._on_postgresql(_0006.INSTALL),
            elidable=False,
        )
    ]
