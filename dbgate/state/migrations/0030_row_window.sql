-- Rows read per identity and table, in time buckets, for the rules'
-- max_rows_per_window (docs/rules.md, "Run-time limits"). Every replica adds what
-- its sessions read and sums what all replicas read over each rule's window, so the
-- limit holds across sessions and replicas. Only counts are kept: no statement text,
-- no values.

CREATE TABLE dbgate.row_window_counts (
    identity   text NOT NULL,             -- the dbgate identity that read the rows
    table_name text NOT NULL,             -- as the classifier names it; '' = every table
                                          -- of the identity (counts folded when a
                                          -- replica had too many to keep apart)
    bucket_end timestamptz NOT NULL,      -- the rows were read before this time, in the
                                          -- bucket that ends here (10 s by default)
    replica    text NOT NULL,             -- the replica that served them
    rows       bigint NOT NULL CHECK (rows >= 0),
    PRIMARY KEY (identity, table_name, bucket_end, replica)
);
-- Reading the totals of the recent buckets, and deleting the old ones.
CREATE INDEX row_window_counts_bucket_end ON dbgate.row_window_counts (bucket_end);
COMMENT ON TABLE dbgate.row_window_counts IS
    'dbgate: rows read per identity and table per time bucket (max_rows_per_window)';
