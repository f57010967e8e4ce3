"""The built-in functions and types the walk knows by name.

A function's name decides how values flow through it: most built-ins pass their
arguments' values on, but some carry none (``count``), some read data the walk cannot
follow (``query_to_xml``), some store or send their arguments (``set_config``), and
set-returning ones in FROM have a width the schema snapshot may not give.
"""

from __future__ import annotations

#: Window functions whose result, called without arguments, is a position, not a value
#: (their window's PARTITION BY and ORDER BY are walked as choices). Called with
#: arguments (the hypothetical-set aggregates: ``rank(x) WITHIN GROUP (ORDER BY g)``)
#: the arguments flow into the result. ``count`` is its own case (``e_FuncCall``).
VALUE_FREE_FUNCTIONS = frozenset(
    {"grouping", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist"}
)
#: Built-in functions that read data by name, or files, or other sessions' text: their
#: result's provenance cannot be followed.
DATA_READERS = frozenset(
    {
        # functions that run SQL given as text (the classifier's SQL_STRING_FUNCTIONS)
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_rewrite",
        "table_to_xml",
        "table_to_xml_and_xmlschema",
        "cursor_to_xml",
        "schema_to_xml",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xml_and_xmlschema",
        "ts_stat",
        "pg_read_file",
        "pg_read_binary_file",
        "lo_get",
        "loread",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes",
        # the text of this session's statements, cursors and prepared statements: it
        # holds the raw values of the tokens dbgate resolved in the SQL it forwarded
        "current_query",
        "pg_cursor",
        "pg_prepared_statement",
        "pg_get_backend_memory_contexts",
    }
)
#: Ordered-set aggregates whose result is *not* drawn from the WITHIN GROUP input
#: (hypothetical-set aggregates return a rank or a fraction). Every other aggregate
#: called WITHIN GROUP (mode, percentile_disc, percentile_cont, user-defined ones)
#: takes its value from the ORDER BY expressions: they flow like arguments.
HYPOTHETICAL_SET_AGGREGATES = frozenset({"rank", "dense_rank", "percent_rank", "cume_dist"})
#: Built-in functions whose arguments are stored or sent somewhere a later read does
#: not trace back to a PII column: a resolved token must not reach them.
SIDE_EFFECTS = frozenset(
    {
        "set_config",
        "pg_notify",
        "lo_from_bytea",
        "lo_put",
        "lowrite",
        # a large object's size, an open descriptor's position (lo_tell), which
        # descriptors and objects exist (their numbers, pg_largeobject_metadata): all
        # read back later in the transaction or the database
        "lo_lseek",
        "lo_lseek64",
        "lo_truncate",
        "lo_truncate64",
        "lo_create",
        "lo_creat",
        "lo_open",
        "lo_close",
        "lo_unlink",
        "lo_import",
        "lo_export",
        "pg_logical_emit_message",
        "pg_file_write",
        "dblink",
        "dblink_exec",
        "pg_advisory_lock",
        *(
            f"pg_{t}advisory_{x}lock{sh}"
            for t in ("", "try_")
            for x in ("", "xact_")
            for sh in ("", "_shared")
        ),
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "setseed",
        "setval",
        "nextval",  # how many times it ran is the sequence's value
    }
)
#: Built-in functions named so count work (``pg_stat_get_xact_tuples_returned``,
#: ``pg_stat_get_numscans`` ...): read like data dbgate cannot follow, as the
#: ``pg_stat_*`` views are (``dbgate.pii.catalog.WORK_COUNTER_COLUMNS``).
WORK_COUNTER_PREFIX = ("pg_stat_get_", "pg_stat_statements", "pg_get_backend_memory_contexts")
#: Built-in functions that keep an argument where a later statement reads it back
#: (a setting, a lock key in pg_locks, the random seed behind random(), a sequence's
#: value, a large object, a notification): a value derived from PII given to one is a
#: copy the catalog cannot follow, held like an INSERT of it into a plain column.
STATE_WRITERS = SIDE_EFFECTS - {"pg_advisory_unlock", "pg_advisory_unlock_shared"}
#: Functions of PostgreSQL's own extensions (in whatever schema they are installed) that
#: keep an argument in session state a later statement reads back, as STATE_WRITERS do:
#: pg_trgm's ``set_limit`` sets ``pg_trgm.similarity_threshold``, which ``SHOW`` and
#: ``current_setting`` print (``set_limit(ascii(substr(email, 1, 1)) / 1000.0)``).
EXTENSION_STATE_WRITERS = frozenset({"set_limit"})
#: Functions of PostgreSQL's own extensions that run SQL given as text (tablefunc's
#: ``crosstab`` and ``connectby``, dblink's): they return as many rows as that query
#: does, which dbgate does not read (``count(*)`` of ``crosstab('select … from
#: generate_series(1, (select ascii(email) …))')`` is the code).
EXTENSION_SQL_RUNNERS = frozenset(
    {"crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "dblink", "dblink_get_result"}
)
#: Built-in functions that draw from the session's random generator, which
#: ``setseed`` seeds (and whose state a few of its outputs give away): how many times
#: they ran is where the next ``random()`` stands in a sequence the agent can compute,
#: a count a later, clean statement reads back. TABLESAMPLE without REPEATABLE draws
#: its seed from it too, at each scan (``Sources``).
PRNG_DRAWS = frozenset({"random", "random_normal", "array_shuffle", "array_sample"})
#: Width of built-in set-returning functions when no schema snapshot says.
BUILTIN_SRF_WIDTH = {
    "json_each": 2,
    "jsonb_each": 2,
    "json_each_text": 2,
    "jsonb_each_text": 2,
    "pg_options_to_table": 2,
}
#: Polymorphic pseudo-types (anyelement, anynonarray, anycompatible,
#: anycompatiblenonarray): a set-returning function declared to return one of them
#: has as many columns as its actual argument type, which may be composite.
POLYMORPHIC_TYPES = frozenset({2283, 2776, 5077, 5079})
#: Built-in set-returning functions returning such a type, for snapshots without functions.
POLYMORPHIC_SRFS = frozenset(
    {
        "unnest",
        "json_populate_record",
        "json_populate_recordset",
        "jsonb_populate_record",
        "jsonb_populate_recordset",
    }
)
#: Base types whose values are scalars (an array of them unnests to one column).
SCALAR_TYPE_NAMES = frozenset(
    [
        "bool",
        "boolean",
        "bytea",
        "char",
        "bpchar",
        "varchar",
        "text",
        "name",
        "int2",
        "int4",
        "int8",
        "int",
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "decimal",
        "float4",
        "float8",
        "real",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "uuid",
        "json",
        "jsonb",
        "xml",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "money",
        "oid",
        "bit",
        "varbit",
    ]
)
#: Built-in set-returning functions, for snapshots without function information: in a
#: select list, the rows they return multiply the level's (``SELECT generate_series(1,
#: ascii(...))``), so what sizes them sizes the level.
BUILTIN_SET_RETURNING = frozenset(
    {
        "generate_series",
        "generate_subscripts",
        "unnest",
        "regexp_matches",
        "regexp_split_to_table",
        "string_to_table",
        "json_array_elements",
        "json_array_elements_text",
        "jsonb_array_elements",
        "jsonb_array_elements_text",
        "json_each",
        "json_each_text",
        "jsonb_each",
        "jsonb_each_text",
        "json_object_keys",
        "jsonb_object_keys",
        "json_populate_recordset",
        "jsonb_populate_recordset",
        "json_to_recordset",
        "jsonb_to_recordset",
        "jsonb_path_query",
        "ts_stat",
        "ts_debug",
        "ts_parse",
        "ts_token_type",
    }
)
