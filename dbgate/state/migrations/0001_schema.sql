-- The schema every dbgate table and view lives in.
CREATE SCHEMA IF NOT EXISTS dbgate;
COMMENT ON SCHEMA dbgate IS 'dbgate state: approvals, audit log, budgets (managed by dbgate migrations)';
