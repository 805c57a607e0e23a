"""PostgreSQL function ``governance_ballot_cast``: a whole ballot, lock to audit entry, in one call.

``governance.proposal_services._ballot_cast`` calls it in autocommit, so the transaction, and with
it the community's advisory lock, ends inside the server right after the function returns: no
client round trip (and no wait of the calling thread for a CPU or the GIL) happens while the lock
is held. In one call, in this order, it:

1. takes the community lock (``pg_advisory_xact_lock``, the key of ``community_lock_key``);
2. upserts the ballot if, and only if, the proposal is the community's, is open, its deadline is
   still ahead (by the caller's clock and the server's), and the member is in its electorate.
   Each statement of a PL/pgSQL function in READ COMMITTED takes a new snapshot, so this check
   sees whatever the previous lock holder committed (a close, say);
3. reads the chain head, again with a fresh snapshot taken after the lock was granted, and
   appends the ``ballot.cast`` / ``ballot.changed`` entry with the hash construction of
   ``governance.audit_chain`` (docs/audit.md): the caller sends the canonical body's text around
   the three values only the server knows (time, ballot id, seq), as ``audit_append_locked``
   does for its single-statement append.

It returns ``outcome`` ``ok`` with the ballot id and the entry's seq, or a refusal and nothing
written: ``not_found`` (404), ``not_open`` (409, with the proposal's state) or
``not_in_electorate`` (403). SQLite keeps the Python path (its write lock is the whole database).
"""

from django.db import migrations

INSTALL = r"""
CREATE FUNCTION governance_ballot_cast(
    p_lock_key bigint,
    p_community_id bigint,
    p_proposal_id bigint,
    p_member_id bigint,
    p_choice varchar,
    p_cast_at timestamptz,
    p_nonce varchar,
    p_receipt varchar,
    p_actor_id bigint,
    p_actor_label varchar,
    p_object_type varchar,
    p_payload_json text,
    p_head_cast text,
    p_head_changed text,
    p_middle text,
    p_tail text,
    OUT o_outcome text,
    OUT o_ballot_id bigint,
    OUT o_seq bigint,
    OUT o_state text
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_inserted boolean;
    v_prev varchar(64);
    v_at timestamptz;
    v_closes_at timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_key);

    INSERT INTO governance_ballot AS b (proposal_id, member_id, choice, cast_at, nonce, receipt)
    SELECT p.id, e.member_id, p_choice, p_cast_at, p_nonce, p_receipt
    FROM governance_proposal AS p
    JOIN governance_electorateentry AS e ON e.proposal_id = p.id AND e.member_id = p_member_id
    WHERE p.id = p_proposal_id AND p.community_id = p_community_id AND p.state = 'open'
        AND p.closes_at > greatest(p_cast_at, clock_timestamp())
    ON CONFLICT (proposal_id, member_id) DO UPDATE SET choice = excluded.choice,
        cast_at = excluded.cast_at, nonce = excluded.nonce, receipt = excluded.receipt
    -- xmax is 0 on a freshly inserted row version and our transaction id on an updated one.
    RETURNING b.id, b.xmax = 0 INTO o_ballot_id, v_inserted;

    IF o_ballot_id IS NULL THEN
        -- Nothing written: say why, in the order the API reports it (404, 409, 403).
        SELECT p.state, p.closes_at INTO o_state, v_closes_at
        FROM governance_proposal AS p
        WHERE p.id = p_proposal_id AND p.community_id = p_community_id;
        IF NOT FOUND THEN
            o_outcome := 'not_found';
        ELSIF o_state <> 'open' OR v_closes_at IS NULL
                OR v_closes_at <= greatest(p_cast_at, clock_timestamp()) THEN
            o_outcome := 'not_open';
        ELSE
            o_outcome := 'not_in_electorate';
        END IF;
        RETURN;
    END IF;

    SELECT a.seq, a.entry_hash INTO o_seq, v_prev
    FROM governance_auditentry AS a
    WHERE a.community_id = p_community_id
    ORDER BY a.seq DESC LIMIT 1;
    o_seq := COALESCE(o_seq, 0) + 1;
    v_prev := COALESCE(v_prev, repeat('0', 64));
    v_at := clock_timestamp();  -- timestamptz keeps microseconds: what is stored is what is hashed

    -- entry_hash = SHA-256(0x01 || prev_hash || SHA-256(0x00 || canonical body)), docs/audit.md
    INSERT INTO governance_auditentry (community_id, seq, created_at, actor_id, actor_label,
        action, object_type, object_id, payload_json, prev_hash, entry_hash)
    VALUES (p_community_id, o_seq, v_at, p_actor_id, p_actor_label,
        CASE WHEN v_inserted THEN 'ballot.cast' ELSE 'ballot.changed' END,
        p_object_type, o_ballot_id::text, p_payload_json, v_prev,
        encode(sha256(decode('01', 'hex') || decode(v_prev, 'hex') || sha256(
            decode('00', 'hex') || convert_to(
                CASE WHEN v_inserted THEN p_head_cast ELSE p_head_changed END
                || to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                || p_middle || o_ballot_id::text || p_tail || o_seq::text || ',"v":1}',
                'UTF8'))), 'hex'));

    o_outcome := 'ok';
END;
$$;
"""

UNINSTALL = r"""
DROP FUNCTION governance_ballot_cast(
    bigint, bigint, bigint, bigint, varchar, timestamptz, varchar, varchar, bigint, varchar,
    varchar, text, text, text, text, text
);
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("governance", "0005_charter_proposals")]

    operations = [
        migrations.RunPython(_on_postgresql(INSTALL), _on_postgresql(UNINSTALL), elidable=False)
    ]
