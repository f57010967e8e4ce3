"""The function catalog: which functions are harmless and which ones act.

A statement is only as safe as the functions it calls. ``SELECT pg_read_file('...')``
parses like ``SELECT lower('...')``, so the classifier looks every called function up
here. There are three outcomes:

* **effects** (:data:`EFFECTS`): built-ins and well-known extension functions with
  side effects or data egress, mapped to categories and a reason. These match on the
  bare name *in any schema*: extensions (dblink, adminpack, postgres_fdw) install
  into arbitrary schemas, and flagging ``public.dblink`` as ``export`` on top of
  ``opaque`` only adds information.
* **special** (:data:`SPECIAL`): functions whose effect depends on their arguments
  (``set_config('role', ...)``, ``pg_notify(ch, <row data>)``, ``query_to_xml('<sql>')``)
  — the classifier inspects the arguments (or defers to Bind for ``$n``).
* **pure** (:data:`PURE`): everything else PostgreSQL ships in ``pg_catalog`` that is
  IMMUTABLE or STABLE, plus a reviewed list of VOLATILE built-ins that only read
  or touch session-local state (``random``, ``clock_timestamp``, advisory locks...).
  Pure names match only when the call is unqualified or qualified with
  ``pg_catalog`` — ``public.lower(x)`` is a user function that merely shares a name.

Anything else is unknown and makes the statement ``opaque`` (fail closed) unless the
caller vouches for it through ``extra_pure_functions``.

Why STABLE/IMMUTABLE is not enough on its own: volatility is a promise about
*writes and result stability*, not about egress. ``table_to_xml``,
``schema_to_xml`` and ``database_to_xml`` are STABLE and return whole tables;
``current_setting`` is STABLE and harmless. So :data:`PURE` is the catalog's
STABLE/IMMUTABLE set *minus* every name in :data:`EFFECTS` and :data:`SPECIAL`.
See docs/classifier.md for the reasoning about user functions, and
:mod:`dbgate.policy.vouch` for vouching for them from a live catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbgate.policy import catalog_builtin as _cat
from dbgate.policy.model import DDL, A, C, Category, D, E, L, W, X


@dataclass(frozen=True, slots=True)
class Effect:
    """What calling a function does, for policy purposes."""

    categories: frozenset[Category]
    code: str
    message: str


def _fx(cats: tuple[Category, ...], code: str, message: str, names: str) -> dict[str, Effect]:
    eff = Effect(frozenset(cats), code, message)
    return dict.fromkeys(names.split(), eff)


EFFECTS: dict[str, Effect] = {
    # --- server files and programs -------------------------------------------------
    **_fx(
        (A,),
        "server-file-read",
        "reads files or directories on the database server",
        """pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_ls_logdir pg_ls_waldir
        pg_ls_tmpdir pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir
        pg_ls_replslotdir pg_ls_summariesdir pg_logdir_ls pg_file_read
        pg_file_length pg_hba_file_rules pg_ident_file_mappings pg_show_all_file_settings
        pg_wal_summary_contents pg_available_wal_summaries""",
    ),
    **_fx(
        (A,),
        "server-file-write",
        "writes, renames or deletes files on the database server (adminpack)",
        "pg_file_write pg_file_rename pg_file_unlink pg_file_sync",
    ),
    # --- large objects ----------------------------------------------------------------
    **_fx(
        (A,), "lo-import", "imports a file on the database server into a large object", "lo_import"
    ),
    **_fx(
        (E, A),
        "lo-export",
        "exports a large object into a file on the database server",
        "lo_export",
    ),
    **_fx(
        (W,),
        "lo-write",
        "creates or changes a large object",
        "lo_create lo_creat lo_put lo_from_bytea lowrite lo_truncate lo_truncate64",
    ),
    # --- locks that outlive the transaction -------------------------------------------
    **_fx(
        (L,),
        "advisory-lock",
        "takes a session-level advisory lock, which outlives the transaction and blocks "
        "other sessions until it is released or the session ends",
        "pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock pg_try_advisory_lock_shared",
    ),
    **_fx((X,), "lo-unlink", "deletes a large object", "lo_unlink"),
    # --- remote connections: dblink / postgres_fdw ----------------------------------
    **_fx(
        (E,),
        "dblink",
        "opens a connection to another server (dblink), so data can leave the database",
        """dblink dblink_exec dblink_connect dblink_connect_u dblink_send_query dblink_get_result
        dblink_open dblink_fetch dblink_close dblink_disconnect dblink_get_connections
        dblink_error_message dblink_is_busy dblink_cancel_query dblink_get_notify
        dblink_build_sql_insert dblink_build_sql_update dblink_build_sql_delete dblink_get_pkey""",
    ),
    **_fx(
        (E,),
        "foreign-connection",
        "manages postgres_fdw connections to another server",
        "postgres_fdw_disconnect postgres_fdw_disconnect_all postgres_fdw_get_connections",
    ),
    # --- backend signalling, configuration reload, logs ------------------------------
    **_fx(
        (A,),
        "backend-signal",
        "signals other server processes or reloads the server's configuration",
        """pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile
        pg_rotate_logfile_old pg_log_backend_memory_contexts pg_promote pg_signal_backend""",
    ),
    **_fx(
        (A,),
        "stats-reset",
        "erases monitoring statistics, which are evidence of activity",
        """pg_stat_reset pg_stat_reset_shared pg_stat_reset_single_table_counters
        pg_stat_reset_single_function_counters pg_stat_reset_slru pg_stat_reset_replication_slot
        pg_stat_reset_subscription_stats pg_stat_reset_backend_stats pg_stat_statements_reset""",
    ),
    **_fx(
        (A,),
        "planner-stats-write",
        "overwrites the planner's statistics",
        """pg_clear_attribute_stats pg_clear_relation_stats pg_restore_attribute_stats
        pg_restore_relation_stats pg_set_relation_stats pg_set_attribute_stats""",
    ),
    # --- replication, WAL, backup -------------------------------------------------------
    **_fx(
        (A,),
        "replication",
        "manages replication slots, replication origins, WAL or backups",
        """pg_create_physical_replication_slot pg_create_logical_replication_slot
        pg_drop_replication_slot pg_copy_physical_replication_slot pg_copy_logical_replication_slot
        pg_replication_slot_advance pg_sync_replication_slots pg_replication_origin_create
        pg_replication_origin_drop pg_replication_origin_advance pg_replication_origin_session_setup
        pg_replication_origin_session_reset pg_replication_origin_xact_setup
        pg_replication_origin_xact_reset pg_backup_start pg_backup_stop pg_start_backup
        pg_stop_backup pg_switch_wal pg_switch_xlog pg_create_restore_point pg_wal_replay_pause
        pg_wal_replay_resume pg_xlog_replay_pause pg_xlog_replay_resume pg_log_standby_snapshot
        pg_logical_emit_message""",
    ),
    **_fx(
        (E, A),
        "logical-decoding",
        "streams decoded row changes out of a replication slot",
        """pg_logical_slot_get_changes pg_logical_slot_peek_changes
        pg_logical_slot_get_binary_changes pg_logical_slot_peek_binary_changes""",
    ),
    # --- internal / upgrade / maintenance -------------------------------------------------
    **_fx(
        (A,),
        "server-maintenance",
        "changes internal server state (a maintenance function)",
        """pg_import_system_collations pg_nextoid pg_stop_making_pinned_objects
        pg_extension_config_dump brin_desummarize_range brin_summarize_new_values
        brin_summarize_range gin_clean_pending_list binary_upgrade_add_sub_rel_state
        binary_upgrade_create_empty_extension binary_upgrade_logical_slot_has_caught_up
        binary_upgrade_replorigin_advance binary_upgrade_set_missing_value
        binary_upgrade_set_next_array_pg_type_oid binary_upgrade_set_next_heap_pg_class_oid
        binary_upgrade_set_next_heap_relfilenode binary_upgrade_set_next_index_pg_class_oid
        binary_upgrade_set_next_index_relfilenode
        binary_upgrade_set_next_multirange_array_pg_type_oid
        binary_upgrade_set_next_multirange_pg_type_oid binary_upgrade_set_next_pg_authid_oid
        binary_upgrade_set_next_pg_enum_oid binary_upgrade_set_next_pg_tablespace_oid
        binary_upgrade_set_next_pg_type_oid binary_upgrade_set_next_toast_pg_class_oid
        binary_upgrade_set_next_toast_relfilenode binary_upgrade_set_record_init_privs""",
    ),
    # --- sequences ------------------------------------------------------------------------
    **_fx((W,), "sequence-advance", "advances a sequence", "nextval"),
    **_fx(
        (DDL,),
        "sequence-set",
        "moves a sequence's position, like ALTER SEQUENCE RESTART",
        "setval",
    ),
    # --- bulk exporters -------------------------------------------------------------------
    **_fx(
        (D,),
        "xml-table-export",
        "returns whole tables, schemas or databases as XML",
        """table_to_xml table_to_xmlschema table_to_xml_and_xmlschema schema_to_xml
        schema_to_xmlschema schema_to_xml_and_xmlschema database_to_xml database_to_xmlschema
        database_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema""",
    ),
    **_fx(
        (D,),
        "snapshot-export",
        "exports a snapshot for another session to read, as parallel dump tools do",
        "pg_export_snapshot",
    ),
}

#: Functions whose effect depends on argument values; the classifier handles them.
#: ``query_to_xml``-style functions execute a SQL string: when it is a literal the
#: classifier classifies it too, otherwise the call is opaque.
SQL_STRING_FUNCTIONS: dict[str, int] = {
    # name -> index of the argument holding SQL text
    "query_to_xml": 0,
    "query_to_xmlschema": 0,
    "query_to_xml_and_xmlschema": 0,
    "ts_stat": 0,
    "ts_rewrite": 1,
}
#: Large-object functions whose arguments decide: data computed from rows written into
#: a large object is a copy that row limits do not follow; a large object chosen by a
#: computed value (one per row of ``pg_largeobject_metadata``) is read in bulk.
LO_WRITES: frozenset[str] = frozenset(
    ["lo_create", "lo_creat", "lo_put", "lo_from_bytea", "lowrite", "lo_truncate", "lo_truncate64"]
)
LO_READS: frozenset[str] = frozenset({"lo_get", "loread"})
#: Sleeps: a constant one longer than the identity's statement timeout is refused.
SLEEPS: frozenset[str] = frozenset({"pg_sleep", "pg_sleep_for", "pg_sleep_until"})
SPECIAL: frozenset[str] = frozenset(
    {"set_config", "pg_notify", *SQL_STRING_FUNCTIONS, *LO_WRITES, *LO_READS, *SLEEPS}
)

#: Functions of the ``hypopg`` extension (installed in any schema): hypothetical indexes
#: live in this session's planner only and change no data (issue: availability guards).
#: ``hypopg_create_index`` parses the CREATE INDEX it is given and never runs it.
SESSION_PLANNING: frozenset[str] = frozenset(
    [
        "hypopg",
        "hypopg_create_index",
        "hypopg_drop_index",
        "hypopg_reset",
        "hypopg_reset_index",
        "hypopg_list_indexes",
        "hypopg_get_indexdef",
        "hypopg_relation_size",
        "hypopg_hide_index",
        "hypopg_unhide_index",
        "hypopg_unhide_all_indexes",
        "hypopg_hidden_indexes",
    ]
)
SESSION_PLANNING_EFFECT = Effect(
    frozenset({C}),
    "hypothetical-index",
    "creates or inspects hypothetical indexes (hypopg), which exist only in this "
    "session's planner and change no data",
)

#: VOLATILE built-ins reviewed as harmless: they read, return fresh values, or touch
#: only session-local state. Transaction-level advisory locks end with the transaction,
#: which the session guards bound (``transaction_timeout``,
#: ``idle_in_transaction_session_timeout``); session-level ones are ``lock`` (above).
#: ``pg_current_logfile`` returns the path of the server's log file and reads no file.
REVIEWED_VOLATILE_PURE: frozenset[str] = _cat._names(
    """
    array_sample array_shuffle clock_timestamp current_query currval lastval gen_random_uuid
    uuidv4 uuidv7 random random_normal setseed timeofday txid_status pg_xact_status
    pg_xact_commit_timestamp pg_xact_commit_timestamp_origin pg_last_committed_xact
    pg_advisory_unlock pg_advisory_unlock_all
    pg_advisory_unlock_shared pg_advisory_xact_lock pg_advisory_xact_lock_shared
    pg_try_advisory_xact_lock pg_try_advisory_xact_lock_shared pg_current_logfile
    pg_blocking_pids pg_safe_snapshot_blocking_pids pg_isolation_test_session_is_blocked
    pg_lock_status pg_notification_queue_usage pg_prepared_xact pg_collation_actual_version
    pg_database_collation_actual_version pg_control_checkpoint pg_control_init
    pg_control_recovery pg_control_system pg_current_wal_flush_lsn pg_current_wal_insert_lsn
    pg_current_wal_lsn pg_last_wal_receive_lsn pg_last_wal_replay_lsn
    pg_last_xact_replay_timestamp pg_is_in_recovery pg_is_wal_replay_paused
    pg_get_wal_replay_pause_state pg_get_wal_resource_managers pg_get_wal_summarizer_state
    pg_jit_available pg_database_size pg_relation_size pg_table_size pg_indexes_size
    pg_total_relation_size pg_tablespace_size pg_partition_ancestors pg_partition_tree
    pg_sequence_last_value pg_get_sequence_data pg_get_backend_memory_contexts
    pg_get_multixact_members pg_get_wait_events pg_get_aios pg_get_loaded_modules
    pg_get_shmem_allocations pg_get_shmem_allocations_numa pg_stat_clear_snapshot
    pg_stat_force_next_flush pg_stat_have_stats pg_stat_get_backend_io pg_stat_get_backend_wal
    pg_stat_get_io pg_stat_get_recovery_prefetch pg_stat_get_xact_blocks_fetched
    pg_stat_get_xact_blocks_hit pg_stat_get_xact_function_calls
    pg_stat_get_xact_function_self_time pg_stat_get_xact_function_total_time
    pg_stat_get_xact_numscans pg_stat_get_xact_tuples_deleted pg_stat_get_xact_tuples_fetched
    pg_stat_get_xact_tuples_hot_updated pg_stat_get_xact_tuples_inserted
    pg_stat_get_xact_tuples_newpage_updated pg_stat_get_xact_tuples_returned
    pg_stat_get_xact_tuples_updated lo_open lo_close lo_lseek lo_lseek64 lo_tell lo_tell64
    """
)

#: Aggregates that return the collected input values rather than reducing them: an
#: ``array_agg(email)`` over a whole table is the table's column, i.e. a dump.
COLLECTING_AGGREGATES: frozenset[str] = _cat._names(
    """array_agg string_agg json_agg json_agg_strict jsonb_agg jsonb_agg_strict
    json_object_agg json_object_agg_strict json_object_agg_unique json_object_agg_unique_strict
    jsonb_object_agg jsonb_object_agg_strict jsonb_object_agg_unique
    jsonb_object_agg_unique_strict xmlagg range_agg"""
)

#: Ordered-set aggregates whose result is drawn from their ``WITHIN GROUP (ORDER BY
#: ...)`` input: one value per fraction, and an array of fractions
#: (``percentile_disc(ARRAY(SELECT ...))``) makes them return as many input values as
#: it has fractions. Called with anything but one numeric constant, they are recorded
#: under the name ``<name>[]`` (see ``walk.expressions``), which collects.
FRACTION_AGGREGATES: frozenset[str] = frozenset({"percentile_disc", "percentile_cont"})
#: The names of calls that collect their input, as the walk records them.
COLLECTING_CALLS: frozenset[str] = COLLECTING_AGGREGATES | {f"{n}[]" for n in FRACTION_AGGREGATES}

#: Hypothetical-set aggregates: ``rank(v) WITHIN GROUP (ORDER BY x)`` returns a number,
#: not a value of ``x``.
HYPOTHETICAL_AGGREGATES: frozenset[str] = frozenset(
    {"rank", "dense_rank", "percent_rank", "cume_dist"}
)

#: Set-returning built-ins (``proretset``): in a target list, any number of rows.
SET_RETURNING: frozenset[str] = _cat._names(
    """aclexplode generate_series generate_subscripts json_array_elements
    json_array_elements_text json_each json_each_text json_object_keys json_populate_recordset
    json_to_recordset jsonb_array_elements jsonb_array_elements_text jsonb_each jsonb_each_text
    jsonb_object_keys jsonb_path_query jsonb_path_query_tz jsonb_populate_recordset
    jsonb_to_recordset pg_available_extension_versions pg_available_extensions
    pg_available_wal_summaries pg_config pg_cursor pg_event_trigger_ddl_commands
    pg_event_trigger_dropped_objects pg_extension_update_paths pg_get_aios
    pg_get_backend_memory_contexts pg_get_catalog_foreign_keys pg_get_keywords
    pg_get_loaded_modules pg_get_multixact_members pg_get_publication_tables
    pg_get_replication_slots pg_get_shmem_allocations pg_get_shmem_allocations_numa
    pg_get_wait_events pg_get_wal_resource_managers pg_hba_file_rules pg_ident_file_mappings
    pg_listening_channels pg_lock_status pg_logical_slot_get_binary_changes
    pg_logical_slot_get_changes pg_logical_slot_peek_binary_changes pg_logical_slot_peek_changes
    pg_ls_archive_statusdir pg_ls_dir pg_ls_logdir pg_ls_logicalmapdir pg_ls_logicalsnapdir
    pg_ls_replslotdir pg_ls_summariesdir pg_ls_tmpdir pg_ls_waldir pg_mcv_list_items
    pg_options_to_table pg_partition_ancestors pg_partition_tree pg_prepared_statement
    pg_prepared_xact pg_show_all_file_settings pg_show_all_settings
    pg_show_replication_origin_status pg_snapshot_xip pg_stat_get_activity
    pg_stat_get_backend_idset pg_stat_get_backend_io pg_stat_get_io pg_stat_get_progress_info
    pg_stat_get_recovery_prefetch pg_stat_get_slru pg_stat_get_subscription
    pg_stat_get_wal_senders pg_tablespace_databases pg_timezone_abbrevs_abbrevs
    pg_timezone_abbrevs_zone pg_timezone_names pg_wal_summary_contents regexp_matches
    regexp_split_to_table string_to_table ts_debug ts_parse ts_stat ts_token_type
    txid_snapshot_xip unnest"""
)

#: Aggregates that reduce many rows to one value (count, sum, max ...).
REDUCING_AGGREGATES: frozenset[str] = _cat.AGGREGATES - COLLECTING_AGGREGATES

#: Names safe to call unqualified or as ``pg_catalog.<name>``.
PURE: frozenset[str] = (
    (
        _cat.STABLE_OR_IMMUTABLE
        | _cat.WINDOW_FUNCTIONS
        | _cat.AGGREGATES
        | _cat.BUILTIN_TYPES  # function-style casts: regclass('t'), tsquery('a & b')
        | REVIEWED_VOLATILE_PURE
    )
    - frozenset(EFFECTS)
    - SPECIAL
)

#: Every function name PostgreSQL itself ships in pg_catalog (any volatility).
BUILTIN_NAMES: frozenset[str] = _cat.STABLE_OR_IMMUTABLE | _cat.VOLATILE | _cat.AGGREGATES
#: Built-in type names, callable as function-style casts (``regclass('t')``).
BUILTIN_TYPES: frozenset[str] = _cat.BUILTIN_TYPES

#: Schema-qualified names known to be pure (information_schema helpers used by JDBC).
QUALIFIED_PURE: frozenset[str] = frozenset(
    f"information_schema.{n}" for n in _cat.INFORMATION_SCHEMA_FUNCTIONS
)

#: Schemas whose functions we know: a call qualified with anything else is a user
#: (or extension) function and unknown.
BUILTIN_SCHEMAS: frozenset[str] = frozenset({"pg_catalog"})


def is_pure(name: str, schema: str | None) -> bool:
    """True when ``schema.name`` (schema None = unqualified) is a known harmless built-in."""
    if schema is None or schema == "pg_catalog":
        return name in PURE
    return f"{schema}.{name}" in QUALIFIED_PURE


def effect(name: str) -> Effect | None:
    """The side effect of a function named ``name`` in any schema, if we know one."""
    return EFFECTS.get(name)
