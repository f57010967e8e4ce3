-- What reviewers read (docs/audit.md documents every column). `dbgate audit verify`
-- reads these same views, so a view changed to hide records fails verification.

CREATE VIEW dbgate.audit_log AS
SELECT id, at, identity, kind, event, statement, categories::text[] AS categories,
       decision, outcome, rows, round(duration_us / 1000.0, 3) AS duration_ms,
       session_id, application_name, client_addr, database, replica,
       purpose, model, params::text[] AS params, fingerprint, tables::text[] AS tables,
       columns::text[] AS columns, rule, approval_id,
       tokenized, actor, reason, details, statement_length, scrubbed, escaped,
       duration_us, logged_at, chain, seq, format,
       encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
  FROM dbgate.audit_events;

COMMENT ON VIEW dbgate.audit_log IS 'dbgate audit trail: one row per recorded event (docs/audit.md)';
COMMENT ON COLUMN dbgate.audit_log.id IS 'locator assigned by the database (not part of the hash; chain+seq is the tamper-evident order)';
COMMENT ON COLUMN dbgate.audit_log.at IS 'when the event happened';
COMMENT ON COLUMN dbgate.audit_log.identity IS 'the dbgate identity (agent) the event concerns';
COMMENT ON COLUMN dbgate.audit_log.kind IS 'statement | session | approval | detokenize | reload | audit';
COMMENT ON COLUMN dbgate.audit_log.event IS 'what happened within the kind (docs/audit.md)';
COMMENT ON COLUMN dbgate.audit_log.statement IS 'statement text with PII literals masked';
COMMENT ON COLUMN dbgate.audit_log.categories IS 'classifier categories (read, write, export, ...)';
COMMENT ON COLUMN dbgate.audit_log.decision IS 'allow | deny | hold | approved | rejected | expired | withdrawn | refused';
COMMENT ON COLUMN dbgate.audit_log.outcome IS 'command tag(s) on success, SQLSTATE on failure';
COMMENT ON COLUMN dbgate.audit_log.rows IS 'rows returned or affected';
COMMENT ON COLUMN dbgate.audit_log.duration_ms IS 'statement duration in milliseconds';
COMMENT ON COLUMN dbgate.audit_log.params IS 'bind parameters, masked or keyed-hashed (h:...)';
COMMENT ON COLUMN dbgate.audit_log.columns IS 'table.column names the statement touches';
COMMENT ON COLUMN dbgate.audit_log.approval_id IS 'the approval request (dbgate.approvals.id)';
COMMENT ON COLUMN dbgate.audit_log.actor IS 'who acted on the event: approver, operator';
COMMENT ON COLUMN dbgate.audit_log.scrubbed IS 'values the last-resort scrubber removed (should be 0)';
COMMENT ON COLUMN dbgate.audit_log.escaped IS 'true: text columns use the escaping in docs/audit.md';
COMMENT ON COLUMN dbgate.audit_log.chain IS 'the writer chain this record belongs to';
COMMENT ON COLUMN dbgate.audit_log.seq IS 'position in its chain, from 1';
COMMENT ON COLUMN dbgate.audit_log.hash IS 'sha256(prev_hash || sha256(canonical content)), hex';

CREATE VIEW dbgate.audit_writers AS
SELECT chain, replica, host, pid, version, started_at, registered_at
  FROM dbgate.audit_chains;
COMMENT ON VIEW dbgate.audit_writers IS 'dbgate audit: one row per writer chain (a dbgate process)';

CREATE VIEW dbgate.audit_archive AS
SELECT chain, seq, encode(hash, 'hex') AS hash, month, records, archived_at, archived_by
  FROM dbgate.audit_anchors;
COMMENT ON VIEW dbgate.audit_archive IS 'dbgate audit: where each chain stood when an archived month was detached';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbgate_auditor') THEN
        GRANT SELECT ON dbgate.audit_log, dbgate.audit_writers, dbgate.audit_archive
            TO dbgate_auditor;
    END IF;
END
$$;
