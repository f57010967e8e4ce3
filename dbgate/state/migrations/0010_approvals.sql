-- Approval requests, decisions, shape approvals and approver accounts.
-- Raw statement text and parameter values are never stored: only their masked
-- form and a keyed hash (match_hash) for recognising an identical retry.

CREATE TABLE dbgate.approvers (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$'),
    groups        text[] NOT NULL DEFAULT '{}',
    password_hash text,                      -- scrypt$ln=..,r=..,p=..$salt$key; NULL: tokens only
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);
COMMENT ON TABLE dbgate.approvers IS 'dbgate: people who may decide held statements';

CREATE TABLE dbgate.approver_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    approver     text NOT NULL REFERENCES dbgate.approvers (name) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE,      -- sha256 of the token; the token itself is never stored
    label        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,                -- NULL: never
    revoked_at   timestamptz,
    last_used_at timestamptz
);
COMMENT ON TABLE dbgate.approver_tokens IS 'dbgate: API bearer tokens of approvers (hashed)';

-- Secrets shared by every replica (the HMAC key for retry matching when the config
-- does not set one). Not granted to anyone but the owner.
CREATE TABLE dbgate.approval_secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dbgate.approval_requests (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN
                       ('pending', 'approved', 'rejected', 'expired', 'withdrawn', 'abandoned', 'executed')),
    -- wait: a session waits for the decision; retry: wait_seconds 0, the agent
    -- re-sends once approved; shape: recorded when a shape approval let it run.
    mode             text NOT NULL CHECK (mode IN ('wait', 'retry', 'shape')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    deadline         timestamptz NOT NULL,   -- a pending request expires at this time
    identity         text NOT NULL,
    identity_groups  text[] NOT NULL DEFAULT '{}',
    owners           text[] NOT NULL DEFAULT '{}',  -- approvers who may not decide it
    application_name text NOT NULL DEFAULT '',
    client_addr      text NOT NULL DEFAULT '',
    session_id       bigint NOT NULL DEFAULT 0,
    replica          text NOT NULL,
    purpose          text NOT NULL DEFAULT '',
    model            text NOT NULL DEFAULT '',
    statement        text NOT NULL,          -- PII masked
    params           jsonb NOT NULL DEFAULT '[]',  -- PII masked
    match_hash       bytea NOT NULL,         -- HMAC of the raw normalized text + values
    fingerprint      text NOT NULL DEFAULT '',
    categories       text[] NOT NULL DEFAULT '{}',
    reasons          jsonb NOT NULL DEFAULT '[]',  -- [{"code": ..., "text": ...}]
    rule             text NOT NULL DEFAULT '',
    rule_message     text NOT NULL DEFAULT '',
    tables           text[] NOT NULL DEFAULT '{}',
    columns          text[] NOT NULL DEFAULT '{}',
    approver_groups  text[] NOT NULL DEFAULT '{}',  -- empty: any approver
    approvals_needed integer NOT NULL DEFAULT 1 CHECK (approvals_needed >= 1),
    wait_seconds     double precision NOT NULL DEFAULT 0,
    estimated_rows   bigint,
    estimate_note    text NOT NULL DEFAULT '',
    decided_at       timestamptz,            -- approved or rejected by approvers
    finished_at      timestamptz,            -- left 'pending' (any way)
    reason           text NOT NULL DEFAULT '',  -- why it ended: approver's reason, expiry, ...
    valid_until      timestamptz,            -- approved: the identical retry may run until then
    claimed_at       timestamptz,            -- approved: taken by its waiting session or a retry
    executed_at      timestamptz,
    shape_id         bigint
);
COMMENT ON TABLE dbgate.approval_requests IS 'dbgate: held statements and their outcome (masked)';

CREATE INDEX approval_requests_pending ON dbgate.approval_requests (id) WHERE status = 'pending';
CREATE INDEX approval_requests_retry ON dbgate.approval_requests (identity, match_hash)
    WHERE status = 'approved' AND claimed_at IS NULL;
CREATE INDEX approval_requests_fingerprint ON dbgate.approval_requests (fingerprint, id);
CREATE INDEX approval_requests_status ON dbgate.approval_requests (status, id);

CREATE TABLE dbgate.approval_decisions (
    request_id bigint NOT NULL REFERENCES dbgate.approval_requests (id) ON DELETE CASCADE,
    approver   text NOT NULL,
    decision   text NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason     text NOT NULL DEFAULT '',
    via        text NOT NULL DEFAULT 'api',  -- api | cli | shape
    decided_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, approver)       -- N-of-M counts distinct approvers
);

CREATE TABLE dbgate.shape_approvals (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identity       text NOT NULL,
    fingerprint    text NOT NULL CHECK (fingerprint <> ''),
    params_fixed   boolean NOT NULL,
    match_hash     bytea,                    -- params fixed: only this exact statement and values
    statement      text NOT NULL,            -- the masked statement it was approved from
    source_request bigint REFERENCES dbgate.approval_requests (id),
    created_by     text NOT NULL,
    reason         text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_by     text,
    revoke_reason  text NOT NULL DEFAULT '',
    uses           integer NOT NULL DEFAULT 0,
    CHECK (params_fixed = (match_hash IS NOT NULL))
);
CREATE INDEX shape_approvals_active ON dbgate.shape_approvals (identity, fingerprint)
    WHERE revoked_at IS NULL;

-- Only these status changes exist; anything else is a bug or tampering.
CREATE FUNCTION dbgate.approval_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = NEW.status THEN
        RETURN NEW;
    END IF;
    IF (OLD.status = 'pending' AND NEW.status IN ('approved', 'rejected', 'expired', 'withdrawn', 'abandoned'))
       OR (OLD.status = 'approved' AND NEW.status = 'executed') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'dbgate: approval request % cannot go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER approval_status_guard BEFORE UPDATE OF status ON dbgate.approval_requests
    FOR EACH ROW EXECUTE FUNCTION dbgate.approval_status_guard();

-- Wake-up: every replica LISTENs on dbgate_approvals. Payload "request:<id>:<status>",
-- "decision:<id>" or "shape:<id>"; sent at commit, so a listener never sees a
-- change it cannot read yet.
CREATE FUNCTION dbgate.approvals_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'approval_requests' THEN
        PERFORM pg_notify('dbgate_approvals', 'request:' || NEW.id || ':' || NEW.status);
    ELSIF TG_TABLE_NAME = 'approval_decisions' THEN
        PERFORM pg_notify('dbgate_approvals', 'decision:' || NEW.request_id);
    ELSE
        PERFORM pg_notify('dbgate_approvals', 'shape:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER approvals_notify_insert AFTER INSERT ON dbgate.approval_requests
    FOR EACH ROW EXECUTE FUNCTION dbgate.approvals_notify();
CREATE TRIGGER approvals_notify_status AFTER UPDATE OF status ON dbgate.approval_requests
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION dbgate.approvals_notify();
CREATE TRIGGER approvals_notify_decision AFTER INSERT ON dbgate.approval_decisions
    FOR EACH ROW EXECUTE FUNCTION dbgate.approvals_notify();
CREATE TRIGGER approvals_notify_shape AFTER INSERT OR UPDATE ON dbgate.shape_approvals
    FOR EACH ROW EXECUTE FUNCTION dbgate.approvals_notify();

-- The reviewers' view (docs/approvals.md documents every column).
CREATE VIEW dbgate.approvals AS
SELECT r.id,
       r.status,
       r.identity,
       r.statement,
       coalesce(d.decided_by, '{}') AS decided_by,
       r.reason,
       r.created_at,
       r.decided_at,
       r.finished_at,
       r.executed_at,
       r.deadline,
       r.valid_until,
       r.mode,
       r.params,
       r.fingerprint,
       r.categories,
       r.reasons,
       r.rule,
       r.tables,
       r.columns,
       r.approver_groups,
       r.approvals_needed,
       coalesce(d.approvals, 0) AS approvals,
       r.purpose,
       r.model,
       r.application_name,
       r.client_addr,
       r.session_id,
       r.replica,
       r.estimated_rows,
       r.shape_id
FROM dbgate.approval_requests r
LEFT JOIN LATERAL (
    SELECT array_agg(x.approver ORDER BY x.decided_at, x.approver)
               FILTER (WHERE x.decision = CASE WHEN r.status = 'rejected' THEN 'reject' ELSE 'approve' END)
               AS decided_by,
           count(*) FILTER (WHERE x.decision = 'approve') AS approvals
    FROM dbgate.approval_decisions x
    WHERE x.request_id = r.id
) d ON true;
COMMENT ON VIEW dbgate.approvals IS 'dbgate: every approval request, PII masked (docs/approvals.md)';

CREATE VIEW dbgate.approval_shapes AS
SELECT id, identity, fingerprint, params_fixed, statement, source_request, created_by, reason,
       created_at, expires_at, revoked_at, revoked_by, revoke_reason, uses,
       (revoked_at IS NULL AND expires_at > now()) AS active
FROM dbgate.shape_approvals;
COMMENT ON VIEW dbgate.approval_shapes IS 'dbgate: shape approvals (one identity, one fingerprint, for a while)';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dbgate_auditor') THEN
        GRANT SELECT ON dbgate.approvals, dbgate.approval_shapes TO dbgate_auditor;
    END IF;
END
$$;
