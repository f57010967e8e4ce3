-- What decides what a held statement does besides its text and values: the
-- session's search_path, user, literal-reading settings and the parameters'
-- declared types (dbgate.approvals.matching.statement_context). The retry hash
-- (match_hash) covers it; a shape approval with free values is tied to its source
-- request's context by this keyed hash. Rows from before have none: a shape
-- approved then covers nothing (approve it again).
ALTER TABLE dbgate.approval_requests ADD COLUMN context_hash bytea;
ALTER TABLE dbgate.shape_approvals ADD COLUMN context_hash bytea;
