-- Reviewers find an identity's records through the month partitions and the BRIN
-- index on `at`, not a B-tree on (identity, at): that index cost the state database
-- about 4 µs of CPU for every record written (a quarter of its work per record, measured
-- under pgbench through dbgate-audit), on a table that takes one row per statement,
-- while the reviewer queries that name an identity also bound the time
-- (docs/audit.md, "Reviewer queries"), which the BRIN index and partition pruning
-- already narrow to the few pages of that period. What stays indexed, and why:
--   audit_events_chain_seq  (chain, seq)  verification and a writer's committed head
--   audit_events_at         BRIN (at)     every time-bounded reviewer query
--   audit_events_approval   (approval_id) the approvers' page: one request's records

DROP INDEX IF EXISTS dbgate.audit_events_identity_at;
