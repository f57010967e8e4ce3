-- The database a held statement was sent to. An identity may reach several
-- (identities[].databases), so approvers are shown which one, and an approval —
-- a retry's or a shape's — covers statements sent to that database only.
ALTER TABLE dbgate.approval_requests ADD COLUMN database text NOT NULL DEFAULT '';
ALTER TABLE dbgate.shape_approvals ADD COLUMN database text NOT NULL DEFAULT '';

CREATE OR REPLACE VIEW dbgate.approvals AS
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
       r.shape_id,
       r.database
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

CREATE OR REPLACE VIEW dbgate.approval_shapes AS
SELECT id, identity, fingerprint, params_fixed, statement, source_request, created_by, reason,
       created_at, expires_at, revoked_at, revoked_by, revoke_reason, uses,
       (revoked_at IS NULL AND expires_at > now()) AS active, database
FROM dbgate.shape_approvals;
