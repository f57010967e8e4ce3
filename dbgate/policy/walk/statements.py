"""Statements: the entry point of the walk, and one handler per statement type.

:func:`statement` classifies one top-level statement node. Queries go to
:mod:`~dbgate.policy.walk.queries`; statements with a handler in :data:`_STMT` are
judged by it; statements whose categories never depend on their arguments come from
:mod:`~dbgate.policy.walk.fixed_statements`; anything else is ``opaque``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbgate.policy.model import (
    ADMIN,
    CONTROL,
    DDL,
    DESTRUCTIVE,
    DUMP,
    ESCAPE,
    EXPORT,
    LOCK,
    OPAQUE,
    PRIVILEGE,
    READ,
    WRITE,
)
from dbgate.policy.walk import dml, expressions, prepared, queries
from dbgate.policy.walk.command_names import command_name
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.fixed_statements import FIXED_EFFECTS
from dbgate.policy.walk.nodes import (
    KNOWN,
    QUERY_NODES,
    WholeTables,
    catalog_read,
    is_catalog,
    name_list,
    relname,
    strs,
    table_key,
    value_of,
)
from dbgate.policy.walk.settings import (
    declaration,
    function_options,
    transaction_options,
    variable_set,
)


def statement(node: dict[str, Any], facts: StatementFacts) -> None:
    """Classify one top-level statement node ``{"XxxStmt": body}``."""
    for k, body in node.items():
        facts.command = command_name(k, body)
        facts.top = body
        stmt_body(k, body, facts)


def stmt_body(k: str, body: dict[str, Any], facts: StatementFacts) -> None:
    if k in QUERY_NODES:
        produced = queries.query(k, body, facts, True, {})
        if k == "SelectStmt" and body is facts.top:
            facts.result_rows = 0 if "intoClause" in body else produced.rows
        return
    h = _STMT.get(k)
    if h is not None:
        h(body, facts)
        return
    static = FIXED_EFFECTS.get(k)
    if static is not None:
        command = command_name(k, body)
        for cat, code, msg in static:
            facts.add(cat, code, msg.replace("{command}", command))
        if k == "RefreshMatViewStmt" and body.get("skipData"):
            facts.add(
                DESTRUCTIVE,
                "refresh-no-data",
                "empties a materialized view (REFRESH ... WITH NO DATA): every row is "
                "discarded and it cannot be read until refreshed again",
            )
        rel = body.get("relation")
        if isinstance(rel, dict) and "relname" in rel:
            facts.tables.add(table_key(*relname(rel)))
        definition(body, facts)
        return
    facts.add(
        OPAQUE,
        "unknown-statement",
        f"runs {command_name(k, body)} ({k}), a statement dbgate does not analyse",
    )


_DEFINITION_KEEP = frozenset({ADMIN, EXPORT, PRIVILEGE, ESCAPE})


def definition(body: Any, facts: StatementFacts) -> None:
    """Walk the expressions of a DDL statement (defaults, view queries, rule actions).

    They do not run now, so reads/dumps/unknown functions are not charged to the
    statement; functions with known dangerous effects are (a view calling
    ``pg_read_file`` is an admin action waiting to happen).
    """
    sub = StatementFacts(facts.params, facts.prepared, facts.extra_pure, facts.depth)
    expressions.walk(body, sub, False, {})
    sub.reads = {}  # a definition does not run now: it reads nothing
    for r in sub.result().reasons:
        if r.category in _DEFINITION_KEEP:
            facts.add(r.category, r.code, r.message)
    facts.tables |= sub.tables
    facts.functions |= sub.functions
    facts.sensitive |= sub.sensitive


_TWO_PHASE = {
    "TRANS_STMT_PREPARE": (
        "prepared-transaction",
        "prepares the transaction for two-phase commit (PREPARE TRANSACTION), which keeps "
        "its locks after the session ends, until someone commits or rolls it back",
    ),
    "TRANS_STMT_COMMIT_PREPARED": (
        "finish-prepared-transaction",
        "commits a prepared transaction (COMMIT PREPARED), which may be another session's",
    ),
    "TRANS_STMT_ROLLBACK_PREPARED": (
        "finish-prepared-transaction",
        "rolls back a prepared transaction (ROLLBACK PREPARED), which may be another session's",
    ),
}


def _transaction(body: dict[str, Any], facts: StatementFacts) -> None:
    transaction_options(body.get("options"), facts)
    two_phase = _TWO_PHASE.get(body.get("kind", ""))
    if two_phase is not None:
        facts.add(LOCK, *two_phase)


def _explain(body: dict[str, Any], facts: StatementFacts) -> None:
    analyze = False
    for o in body.get("options", ()):
        d = o.get("DefElem") or {}
        if d.get("defname") == "analyze":
            if "arg" not in d:
                analyze = True
            else:
                state, text = value_of(d["arg"], facts)
                analyze = not (
                    state == KNOWN and (text or "").strip().lower() in ("off", "false", "0", "no")
                )
    q = body.get("query") or {}
    if analyze:
        for k, b in q.items():
            stmt_body(k, b, facts)
        return
    facts.add(READ, "explain", "plans a statement without running it (EXPLAIN)")
    _evaluated_arguments(q, facts)
    sub = StatementFacts(facts.params, facts.prepared, facts.extra_pure, facts.depth, facts.keys)
    for k, b in q.items():
        stmt_body(k, b, sub)
    # planning can evaluate IMMUTABLE functions: unknown ones stay opaque
    facts.merge(sub.result(), only=frozenset({OPAQUE}))
    facts.sensitive |= sub.sensitive
    facts.uncacheable |= sub.uncacheable


def _evaluated_arguments(q: dict[str, Any], facts: StatementFacts) -> None:
    """The arguments of an ``EXECUTE`` that does not run its statement (under a plain
    ``EXPLAIN``, or ``CREATE TABLE ... AS EXECUTE ... WITH NO DATA``): PostgreSQL
    evaluates them all the same, to plan with their values (``EXPLAIN EXECUTE
    p(pg_terminate_backend(n)::text)`` ended another session, and a plan's ``Filter``
    prints what they returned), so they are judged as a bare ``EXECUTE``'s are."""
    execute = q.get("ExecuteStmt")
    if execute is None:  # EXPLAIN CREATE TABLE ... AS EXECUTE p(...) plans it too
        execute = ((q.get("CreateTableAsStmt") or {}).get("query") or {}).get("ExecuteStmt")
    if execute is not None:
        expressions.walk(execute.get("params"), facts, True, {})


def _copy(body: dict[str, Any], facts: StatementFacts) -> None:
    """COPY: what it reads or writes, and where the data goes.

    ``COPY (query) TO STDOUT`` returns the query's rows to the client, as the query
    itself would in another format (psql's ``\\copy (...) to``, asyncpg's
    ``copy_from_query``): it is classified as that query. ``COPY table TO`` copies
    the whole table, and COPY to or from a server file or program acts on the server.
    """
    rel = body.get("relation")
    is_from = body.get("is_from", False)
    on_server = bool(body.get("is_program") or body.get("filename"))
    if body.get("is_program"):
        facts.add(
            ADMIN,
            "copy-program",
            "runs a program on the database server (COPY ... PROGRAM); use STDIN or STDOUT",
        )
    elif body.get("filename"):
        facts.add(
            ADMIN,
            "copy-server-file",
            "reads or writes a file on the database server (COPY with a file name); "
            "use STDIN or STDOUT",
        )
    if is_from:
        target = table_key(*relname(rel)) if rel else "a table"
        if rel:
            dml.target_write(rel, facts)
        facts.add(WRITE, "copy-from", f"loads rows into {target} (COPY FROM)")
        facts.writes[target] = None  # as many as the client sends; "COPY n" counts them
        expressions.walk(body.get("whereClause"), facts, False, {})
        return
    for a in body.get("attlist", ()):
        s = a.get("String")
        if s is not None:
            facts.columns.add(s.get("sval", ""))
    if rel:
        schema, name = relname(rel)
        key = table_key(schema, name)
        facts.tables.add(key)
        facts.add(READ, "select", "reads data with a query")
        facts.add(
            EXPORT, "copy-to", f"copies the table {key} out of the database in bulk (COPY TO)"
        )
        facts.add(
            DUMP,
            "copy-to",
            f"reads every row of {key} (COPY of a table copies all of it; "
            "COPY (SELECT ... WHERE ...) TO STDOUT copies only what the query selects)",
        )
        if not is_catalog(schema, name):
            facts.reads[key] = None
        if is_catalog(schema, name):
            catalog_read(schema, name, facts, name, whole=not body.get("attlist"))
        return
    q = body.get("query") or {}
    for k, b in q.items():
        produced = queries.query(k, b, facts, True, {})
        if k == "SelectStmt":
            facts.result_rows = produced.rows  # the rows it copies out
    if on_server:
        facts.add(
            EXPORT, "copy-to", "writes a query's result to a file or program on the database server"
        )
        facts.add(DUMP, "copy-to", "copies a query's result in bulk to the database server")


def _declare(body: dict[str, Any], facts: StatementFacts) -> None:
    q = body.get("query") or {}
    whole: WholeTables = ()
    for k, b in q.items():
        whole = queries.query(k, b, facts, True, {}).whole
    if whole and body.get("options", 0) & 0x20:
        facts.add(
            DUMP,
            "held-cursor",
            f"keeps a cursor over every row of {name_list(whole)} open after the "
            "transaction ends (WITH HOLD)",
        )


#: LOCK modes in the parse tree, weakest first (lockdefs.h).
_LOCK_MODES = {
    1: "ACCESS SHARE",
    2: "ROW SHARE",
    3: "ROW EXCLUSIVE",
    4: "SHARE UPDATE EXCLUSIVE",
    5: "SHARE",
    6: "SHARE ROW EXCLUSIVE",
    7: "EXCLUSIVE",
    8: "ACCESS EXCLUSIVE",
}


def _lock(body: dict[str, Any], facts: StatementFacts) -> None:
    """LOCK TABLE: ``read`` for ACCESS SHARE and ROW SHARE, ``lock`` for anything stronger.

    ACCESS SHARE is the lock every SELECT takes: it conflicts only with ACCESS
    EXCLUSIVE (DROP, TRUNCATE, most ALTER TABLE), so it blocks nobody's reads or
    writes; pg_dump takes it on every table it dumps. ROW SHARE (what SELECT ... FOR
    UPDATE takes on the table) conflicts only with EXCLUSIVE and ACCESS EXCLUSIVE.
    Stronger modes block other sessions' writes (or reads) until the transaction ends.
    """
    tables = []
    for r in body.get("relations", ()):
        rv = r.get("RangeVar")
        if rv:
            key = table_key(*relname(rv))
            facts.tables.add(key)
            tables.append(key)
    mode = _LOCK_MODES.get(body.get("mode", 8), "ACCESS EXCLUSIVE")
    names = name_list(tuple(tables))
    if mode == "ACCESS SHARE":
        facts.add(
            READ,
            "lock-access-share",
            f"takes a reader's lock on {names} (ACCESS SHARE conflicts only with ACCESS EXCLUSIVE)",
        )
    elif mode == "ROW SHARE":
        facts.add(
            READ,
            "lock-row-share",
            f"takes a row-share lock on {names} (conflicts only with EXCLUSIVE and "
            "ACCESS EXCLUSIVE)",
        )
    else:
        facts.add(
            LOCK,
            "lock-table",
            f"locks {names} in {mode} mode, which blocks other sessions until the transaction ends",
        )


def _fetch(body: dict[str, Any], facts: StatementFacts) -> None:
    if body.get("ismove"):
        facts.add(CONTROL, "move", "repositions a cursor (MOVE)")
    else:
        facts.add(READ, "fetch", "reads rows from a cursor, judged at its DECLARE (FETCH)")
        facts.reads[("rows", "fetch")] = None  # counted against the run-time row limit


def _call(body: dict[str, Any], facts: StatementFacts) -> None:
    fc = body.get("funccall") or {}
    names = strs(fc.get("funcname"))
    facts.functions.add(".".join(names))
    facts.add(
        OPAQUE,
        "call-procedure",
        f"calls the procedure {'.'.join(names)}, whose effects dbgate cannot know",
    )
    expressions.walk(fc.get("args"), facts, True, {})


def _do(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(
        OPAQUE, "do-block", "runs an anonymous code block (DO), whose effects dbgate cannot know"
    )


def _notify(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(WRITE, "notify", "sends a notification to listening sessions (NOTIFY)")


def _truncate(body: dict[str, Any], facts: StatementFacts) -> None:
    tables = []
    for r in body.get("relations", ()):
        rv = r.get("RangeVar")
        if rv:
            dml.target_write(rv, facts)
            tables.append(table_key(*relname(rv)))
    facts.add(
        DESTRUCTIVE, "truncate", f"removes every row of {name_list(tuple(tables))} (TRUNCATE)"
    )


_DROP_EXTRA = {
    "OBJECT_EXTENSION": (ADMIN, "extension", "drops an extension, code that runs in the server"),
    "OBJECT_POLICY": (PRIVILEGE, "policy", "drops a row-level security policy"),
    "OBJECT_PUBLICATION": (ADMIN, "replication-object", "drops a publication"),
    "OBJECT_EVENT_TRIGGER": (ADMIN, "event-trigger", "drops an event trigger"),
    "OBJECT_FOREIGN_SERVER": (EXPORT, "foreign-data", "drops a foreign server"),
    "OBJECT_FDW": (EXPORT, "foreign-data", "drops a foreign-data wrapper"),
    "OBJECT_LANGUAGE": (ADMIN, "language", "drops a procedural language"),
    "OBJECT_ACCESS_METHOD": (ADMIN, "access-method", "drops an access method"),
    "OBJECT_TRANSFORM": (ADMIN, "transform", "drops a transform"),
}


#: Object kinds whose parse-node name does not spell the SQL keyword.
_OBJECT_KINDS = {
    "OBJECT_MATVIEW": "MATERIALIZED VIEW",
    "OBJECT_FDW": "FOREIGN DATA WRAPPER",
    "OBJECT_TSCONFIGURATION": "TEXT SEARCH CONFIGURATION",
    "OBJECT_TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "OBJECT_TSPARSER": "TEXT SEARCH PARSER",
    "OBJECT_TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OBJECT_OPCLASS": "OPERATOR CLASS",
    "OBJECT_OPFAMILY": "OPERATOR FAMILY",
    "OBJECT_FOREIGN_SERVER": "SERVER",
    "OBJECT_STATISTIC_EXT": "STATISTICS",
}


def _drop(body: dict[str, Any], facts: StatementFacts) -> None:
    rt = body.get("removeType", "")
    kind = _OBJECT_KINDS.get(rt) or rt.removeprefix("OBJECT_").replace("_", " ")
    facts.add(DDL, "drop", f"changes the schema (DROP {kind})")
    names = []
    for o in body.get("objects", ()):
        lst = o.get("List")
        if lst:
            names.append(".".join(strs(lst.get("items"))))
        elif "String" in o:  # schemas, extensions, servers ...: a bare name
            names.extend(strs([o]))
    if names:
        held = "what they hold" if len(set(names)) > 1 else "what it holds"
        what = f"{kind.lower()} {name_list(tuple(names))} and {held}"
    else:
        what = f"objects of type {kind.lower()}"
    facts.add(DESTRUCTIVE, "drop", f"removes {what} (DROP)")
    extra = _DROP_EXTRA.get(rt)
    if extra is not None:
        facts.add(*extra)
    if rt in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
        facts.tables.update(names)


def _alter_table(body: dict[str, Any], facts: StatementFacts) -> None:
    rel = body.get("relation") or {}
    table = table_key(*relname(rel))
    facts.tables.add(table)
    facts.add(
        DDL, "alter", f"changes the definition of {table} ({command_name('AlterTableStmt', body)})"
    )
    for c in body.get("cmds", ()):
        cmd = c.get("AlterTableCmd") or {}
        st = cmd.get("subtype", "")
        if st == "AT_DropColumn":
            facts.add(DESTRUCTIVE, "drop-column", f"drops a column of {table} and its data")
        elif st == "AT_ChangeOwner":
            facts.add(PRIVILEGE, "owner-to", f"gives {table} to another owner (OWNER TO)")
        elif st in ("AT_DisableRowSecurity", "AT_NoForceRowSecurity"):
            facts.add(PRIVILEGE, "row-security-off", f"turns row-level security off for {table}")
        elif st in ("AT_DisableTrig", "AT_DisableTrigAll", "AT_DisableTrigUser", "AT_DisableRule"):
            facts.add(
                PRIVILEGE,
                "disable-trigger",
                f"disables triggers or rules on {table}, which may enforce integrity or audit",
            )
        definition(cmd.get("def"), facts)


def _create_table_as(body: dict[str, Any], facts: StatementFacts) -> None:
    into = body.get("into") or {}
    rel = into.get("rel") or {}
    target = table_key(*relname(rel))
    facts.tables.add(target)
    command = command_name("CreateTableAsStmt", body)
    if into.get("skipData"):  # WITH NO DATA: structure only, the query does not run
        facts.add(DDL, "create", f"creates {target} without data ({command} ... WITH NO DATA)")
        _evaluated_arguments(body.get("query") or {}, facts)
        definition(body.get("query"), facts)
        return
    facts.add(DDL, "create-table-as", f"creates {target} ({command})")
    facts.add(WRITE, "create-table-as", f"writes the query's rows into the new {target}")
    q = body.get("query") or {}
    for k, b in q.items():
        if k == "SelectStmt":
            whole = queries.select(b, facts, True, {}, False).whole
            if whole:
                queries.copies_whole_tables(whole, target, facts)
        else:
            stmt_body(k, b, facts)


def _create_function(body: dict[str, Any], facts: StatementFacts) -> None:
    names = strs(body.get("funcname"))
    name = ".".join(names)
    kind = "procedure" if body.get("is_procedure") else "function"
    facts.add(DDL, "create-function", f"creates the {kind} {name}")
    facts.add(OPAQUE, "function-body", f"stores the body of {name}, which dbgate does not analyse")
    function_options(body.get("options"), facts)
    facts.functions.add(name)


def _alter_function(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "alter-function", "changes a function or procedure (ALTER FUNCTION)")
    function_options(body.get("actions"), facts)


def _alter_role_set(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(PRIVILEGE, "alter-role", "changes a role's default settings (ALTER ROLE ... SET)")
    variable_set(body.get("setstmt") or {}, facts)


def _alter_database_set(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(
        DDL, "alter-database", "changes a database's default settings (ALTER DATABASE ... SET)"
    )
    variable_set(body.get("setstmt") or {}, facts)


def _alter_system(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(ADMIN, "alter-system", "rewrites the server's configuration file (ALTER SYSTEM)")
    variable_set(body.get("setstmt") or {}, facts)


def _vacuum(body: dict[str, Any], facts: StatementFacts) -> None:
    if body.get("is_vacuumcmd"):
        facts.add(ADMIN, "vacuum", "runs storage maintenance (VACUUM), which can load the server")
    else:
        facts.add(CONTROL, "analyze", "refreshes the planner's statistics (ANALYZE)")
    for r in body.get("rels", ()):
        vr = r.get("VacuumRelation") or {}
        rel = vr.get("relation")
        if rel:
            facts.tables.add(table_key(*relname(rel)))


def _rename(body: dict[str, Any], facts: StatementFacts) -> None:
    if body.get("renameType") == "OBJECT_ROLE":
        facts.add(PRIVILEGE, "rename-role", "renames a role")
    else:
        facts.add(DDL, "rename", "renames a schema object (ALTER ... RENAME)")
    rel = body.get("relation")
    if rel:
        facts.tables.add(table_key(*relname(rel)))


def _create_schema(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "create-schema", "creates a schema")
    role = body.get("authrole") or {}
    if role.get("roletype") == "ROLESPEC_CSTRING":  # owned by another, named role
        facts.add(
            PRIVILEGE,
            "owner-to",
            "creates a schema owned by another role (CREATE SCHEMA ... AUTHORIZATION)",
        )
    for e in body.get("schemaElts", ()):
        for k, b in e.items():
            stmt_body(k, b, facts)


def _variable_set_stmt(body: dict[str, Any], facts: StatementFacts) -> None:
    if not declaration(body, facts):
        variable_set(body, facts, session=True)


def _create(body: dict[str, Any], facts: StatementFacts) -> None:
    rel = body.get("relation") or {}
    table = table_key(*relname(rel))
    facts.tables.add(table)
    facts.add(DDL, "create", f"creates the table {table}")
    definition(body.get("tableElts"), facts)


_STMT: dict[str, Callable[[dict[str, Any], StatementFacts], None]] = {
    "TransactionStmt": _transaction,
    "LockStmt": _lock,
    "VariableSetStmt": _variable_set_stmt,
    "ExplainStmt": _explain,
    "CopyStmt": _copy,
    "PrepareStmt": prepared.prepare,
    "ExecuteStmt": prepared.execute,
    "DeallocateStmt": prepared.deallocate,
    "DiscardStmt": prepared.discard,
    "DeclareCursorStmt": _declare,
    "FetchStmt": _fetch,
    "CallStmt": _call,
    "DoStmt": _do,
    "NotifyStmt": _notify,
    "TruncateStmt": _truncate,
    "DropStmt": _drop,
    "AlterTableStmt": _alter_table,
    "CreateTableAsStmt": _create_table_as,
    "CreateFunctionStmt": _create_function,
    "AlterFunctionStmt": _alter_function,
    "AlterRoleSetStmt": _alter_role_set,
    "AlterDatabaseSetStmt": _alter_database_set,
    "AlterSystemStmt": _alter_system,
    "VacuumStmt": _vacuum,
    "RenameStmt": _rename,
    "CreateSchemaStmt": _create_schema,
    "CreateStmt": _create,
}
