-- The audit trail (dbgate/audit, docs/audit.md): one append-only table of hash-chained
-- records, partitioned by month of logged_at so old months can be archived.
--
-- Each writer (one dbgate process) appends to its own chain: (chain, seq) orders it,
-- prev_hash/hash link it. Nothing here trusts the database to keep records honest;
-- the triggers only refuse ordinary changes, and `dbgate audit verify` recomputes
-- every chain to catch what a superuser did with the triggers disabled.

CREATE SEQUENCE dbgate.audit_events_id_seq;

CREATE TABLE dbgate.audit_events (
    id               bigint      NOT NULL DEFAULT nextval('dbgate.audit_events_id_seq'),
    format           smallint    NOT NULL,
    chain            text        NOT NULL,
    seq              bigint      NOT NULL,
    logged_at        timestamptz NOT NULL,
    at               timestamptz NOT NULL,
    kind             text        NOT NULL,
    event            text        NOT NULL,
    replica          text,
    session_id       bigint,
    identity         text,
    application_name text,
    client_addr      text,
    database         text,
    purpose          text,
    model            text,
    statement        text,
    statement_length bigint,
    params           text,        -- text[] literals: see the note below
    fingerprint      text,
    categories       text,
    tables           text,
    columns          text,
    decision         text,
    rule             text,
    approval_id      text,
    outcome          text,
    rows             bigint,
    duration_us      bigint,
    tokenized        boolean,
    actor            text,
    reason           text,
    details          json,
    scrubbed         integer,
    escaped          boolean     NOT NULL,
    prev_hash        bytea       NOT NULL,
    hash             bytea       NOT NULL
) PARTITION BY RANGE (logged_at);

-- params, categories, tables and columns hold text[] literals ('{"read","write"}'):
-- the writer sends them as text, which costs it a fraction of binary array encoding,
-- and dbgate.audit_log presents them as text[].

ALTER SEQUENCE dbgate.audit_events_id_seq OWNED BY dbgate.audit_events.id;

-- (chain, seq): verification and a writer's committed head; the others: reviewers.
CREATE INDEX audit_events_chain_seq ON dbgate.audit_events (chain, seq);
CREATE INDEX audit_events_identity_at ON dbgate.audit_events (identity, at);
CREATE INDEX audit_events_at ON dbgate.audit_events USING brin (at);
CREATE INDEX audit_events_approval ON dbgate.audit_events (approval_id)
    WHERE approval_id IS NOT NULL;

-- One row per chain: which process wrote it. A chain id is claimed once.
CREATE TABLE dbgate.audit_chains (
    chain      text        PRIMARY KEY,
    replica    text        NOT NULL,
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    version    text        NOT NULL,
    started_at timestamptz NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Where each chain stood when an archived month was detached: the remaining records
-- of the chain continue from (seq, hash), so verification of what stays keeps working.
CREATE TABLE dbgate.audit_anchors (
    chain       text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        bytea       NOT NULL,
    month       date        NOT NULL,
    records     bigint      NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    archived_by text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (chain, seq)
);

CREATE FUNCTION dbgate.audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dbgate audit: % on %.% is refused: the audit trail is append-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'old months are archived with dbgate audit archive (docs/audit.md)';
END
$$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON dbgate.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION dbgate.audit_append_only();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON dbgate.audit_chains
    FOR EACH STATEMENT EXECUTE FUNCTION dbgate.audit_append_only();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON dbgate.audit_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION dbgate.audit_append_only();

-- The partition for the month of `month` (UTC), created with its own triggers
-- (statement-level triggers are not inherited by partitions). Writers call it before
-- they write into a month they have not seen; the lock makes concurrent calls safe.
CREATE FUNCTION dbgate.audit_ensure_month(month date) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    first date := date_trunc('month', month)::date;
    part  text := 'audit_events_' || to_char(first, 'YYYY_MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dbgate.audit partitions'));
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'dbgate.audit_events'::regclass AND c.relname = part) THEN
        RETURN part;
    END IF;
    IF to_regclass(format('dbgate.%I', part)) IS NOT NULL THEN
        RAISE EXCEPTION 'dbgate audit: month % was archived (table dbgate.% is detached); '
                        'records logged in it cannot be written: check this host''s clock',
            to_char(first, 'YYYY-MM'), part;
    END IF;
    EXECUTE format(
        'CREATE TABLE dbgate.%I PARTITION OF dbgate.audit_events FOR VALUES FROM (%L) TO (%L)',
        part, first::timestamp AT TIME ZONE 'UTC',
        (first + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    EXECUTE format(
        'CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON dbgate.%I '
        'FOR EACH STATEMENT EXECUTE FUNCTION dbgate.audit_append_only()', part);
    RETURN part;
END
$$;
REVOKE ALL ON FUNCTION dbgate.audit_ensure_month(date) FROM PUBLIC;

-- Archive step 2 (after exporting the month): record where every chain stands at the
-- end of the oldest attached month, then detach that month's partition. The detached
-- table stays in the database until the operator drops it (or dbgate audit archive
-- --drop does). Months leave in order, oldest first, and never the current one.
CREATE FUNCTION dbgate.audit_detach_month(month date) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    first  date := date_trunc('month', month)::date;
    part   text := 'audit_events_' || to_char(first, 'YYYY_MM');
    oldest text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dbgate.audit partitions'));
    IF first >= date_trunc('month', now() AT TIME ZONE 'UTC')::date THEN
        RAISE EXCEPTION 'dbgate audit: % is the current month (UTC) or later; only past months are archived',
            to_char(first, 'YYYY-MM');
    END IF;
    SELECT c.relname INTO oldest
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'dbgate.audit_events'::regclass
     ORDER BY c.relname LIMIT 1;
    IF oldest IS DISTINCT FROM part THEN
        RAISE EXCEPTION 'dbgate audit: % is not the oldest attached month (that is %); archive months in order',
            to_char(first, 'YYYY-MM'), coalesce(oldest, 'none: nothing is attached');
    END IF;
    EXECUTE format(
        'INSERT INTO dbgate.audit_anchors (chain, seq, hash, month, records) '
        'SELECT DISTINCT ON (chain) chain, seq, hash, %L::date, count(*) OVER (PARTITION BY chain) '
        'FROM dbgate.%I ORDER BY chain, seq DESC', first, part);
    EXECUTE format('ALTER TABLE dbgate.audit_events DETACH PARTITION dbgate.%I', part);
    RETURN part;
END
$$;
REVOKE ALL ON FUNCTION dbgate.audit_detach_month(date) FROM PUBLIC;
