-- The approvers' web page (sessions, sign-in lockout) and notifications (deliveries).
-- Shared by every replica, so a sign-in, a lockout or a delivery claimed on one
-- replica holds on all of them.

-- A signed-in browser. The cookie carries a random token; only its SHA-256 is kept.
CREATE TABLE dbgate.web_sessions (
    token_hash   bytea PRIMARY KEY,
    approver     text NOT NULL REFERENCES dbgate.approvers (name) ON DELETE CASCADE,
    csrf_token   text NOT NULL,              -- every form of this session carries it
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,       -- absolute end (web.session_max_hours)
    ended_at     timestamptz,                -- signed out
    client_addr  text NOT NULL DEFAULT '',
    user_agent   text NOT NULL DEFAULT ''
);
CREATE INDEX web_sessions_approver ON dbgate.web_sessions (approver);

-- Failed sign-ins per key ('name:<approver>' or 'addr:<client address>').
CREATE TABLE dbgate.web_login_failures (
    key          text PRIMARY KEY,
    failures     integer NOT NULL,
    window_start timestamptz NOT NULL,
    locked_until timestamptz,
    last_failure timestamptz NOT NULL DEFAULT now()
);

-- One row per (request, event, target): the replica that inserts it sends it, so N
-- replicas that all hear of a new request send one message, not N.
CREATE TABLE dbgate.notification_deliveries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id   bigint NOT NULL REFERENCES dbgate.approval_requests (id) ON DELETE CASCADE,
    event        text NOT NULL CHECK (event IN ('created', 'finished')),
    target       text NOT NULL,              -- webhook:<name> | slack | teams
    status       text NOT NULL DEFAULT 'sending' CHECK (status IN ('sending', 'delivered', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text NOT NULL DEFAULT '',
    replica      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (request_id, event, target)
);
CREATE INDEX notification_deliveries_failed ON dbgate.notification_deliveries (updated_at)
    WHERE status = 'failed';
COMMENT ON TABLE dbgate.notification_deliveries IS
    'dbgate: webhook, Slack and Teams messages about approval requests, and whether they arrived';
