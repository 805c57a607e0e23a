"""PostgreSQL triggers: the audit log is append-only; stored versions only change is_current.

SQLite has no equivalent worth the name (anyone with the file can rewrite it) and Django's test
flush there is a DELETE, so this migration does nothing on SQLite. See docs/audit.md.
"""

from django.db import migrations

INSTALL = r"""
CREATE FUNCTION governance_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TRUNCATE is allowed only together with the communities the log belongs to, as a whole
    -- database reset does (manage.py flush, the test runner); never the log on its own.
    IF TG_OP = 'TRUNCATE' AND current_query() ~* 'governance_community' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'governance_auditentry is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Audit entries are never changed or removed; see docs/audit.md.';
END;
$$;

CREATE TRIGGER governance_auditentry_no_update BEFORE UPDATE ON governance_auditentry
    FOR EACH ROW EXECUTE FUNCTION governance_audit_refuse();
CREATE TRIGGER governance_auditentry_no_delete BEFORE DELETE ON governance_auditentry
    FOR EACH ROW EXECUTE FUNCTION governance_audit_refuse();
CREATE TRIGGER governance_auditentry_no_truncate BEFORE TRUNCATE ON governance_auditentry
    FOR EACH STATEMENT EXECUTE FUNCTION governance_audit_refuse();

CREATE FUNCTION governance_version_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- is_current moves by compare-and-set; created_by may become NULL when a user is deleted.
    IF (NEW.id, NEW.community_id, NEW.number, NEW.document, NEW.sha256, NEW.parent_id,
        NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.community_id, OLD.number, OLD.document, OLD.sha256, OLD.parent_id,
        OLD.created_at) THEN
        RAISE EXCEPTION '% rows are immutable: only is_current may change', TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation',
                  HINT = 'A change is a new version.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER governance_policyversion_immutable BEFORE UPDATE ON governance_policyversion
    FOR EACH ROW EXECUTE FUNCTION governance_version_immutable();
CREATE TRIGGER governance_charterversion_immutable BEFORE UPDATE ON governance_charterversion
    FOR EACH ROW EXECUTE FUNCTION governance_version_immutable();
"""

UNINSTALL = r"""
DROP TRIGGER governance_charterversion_immutable ON governance_charterversion;
DROP TRIGGER governance_policyversion_immutable ON governance_policyversion;
DROP FUNCTION governance_version_immutable();
DROP TRIGGER governance_auditentry_no_truncate ON governance_auditentry;
DROP TRIGGER governance_auditentry_no_delete ON governance_auditentry;
DROP TRIGGER governance_auditentry_no_update ON governance_auditentry;
DROP FUNCTION governance_audit_refuse();
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("governance", "0002_auditentry_charterversion")]

    operations = [
        migrations.RunPython(_on_postgresql(INSTALL), _on_postgresql(UNINSTALL), elidable=False)
    ]
