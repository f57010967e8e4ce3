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
    OPAQUE,
    PRIVILEGE,
    READ,
    WRITE,
)
from dbgate.policy.walk import expressions, prepared, queries
from dbgate.policy.walk.command_names import command_name
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.fixed_statements import FIXED_EFFECTS
from dbgate.policy.walk.nodes import (
    KNOWN,
    QUERY_NODES,
    catalog_read,
    is_catalog,
    relname,
    strs,
    table_key,
    value_of,
)
from dbgate.policy.walk.settings import function_options, transaction_options, variable_set


def statement(node: dict[str, Any], facts: StatementFacts) -> None:
    """Classify one top-level statement node ``{"XxxStmt": body}``."""
    for k, body in node.items():
        facts.command = command_name(k, body)
        stmt_body(k, body, facts)


def stmt_body(k: str, body: dict[str, Any], facts: StatementFacts) -> None:
    if k in QUERY_NODES:
        queries.query(k, body, facts, True, {})
        return
    h = _STMT.get(k)
    if h is not None:
        h(body, facts)
        return
    static = FIXED_EFFECTS.get(k)
    if static is not None:
        for cat, code, msg in static:
            facts.add(cat, code, msg)
        rel = body.get("relation")
        if isinstance(rel, dict) and "relname" in rel:
            facts.tables.add(table_key(*relname(rel)))
        definition(body, facts)
        return
    facts.add(OPAQUE, "unknown-statement", f"{k} is not analysed by the classifier")


_DEFINITION_KEEP = frozenset({ADMIN, EXPORT, PRIVILEGE, ESCAPE})


def definition(body: Any, facts: StatementFacts) -> None:
    """Walk the expressions of a DDL statement (defaults, view queries, rule actions).

    They do not run now, so reads/dumps/unknown functions are not charged to the
    statement; functions with known dangerous effects are (a view calling
    ``pg_read_file`` is an admin action waiting to happen).
    """
    sub = StatementFacts(facts.params, facts.prepared, facts.extra_pure, facts.depth)
    expressions.walk(body, sub, False, {})
    for r in sub.reasons:
        if r.category in _DEFINITION_KEEP:
            facts.add(r.category, r.code, r.message)
    facts.tables |= sub.tables
    facts.functions |= sub.functions
    facts.sensitive |= sub.sensitive


def _transaction(body: dict[str, Any], facts: StatementFacts) -> None:
    transaction_options(body.get("options"), facts)


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
    facts.add(READ, "explain", "EXPLAIN only plans the statement")
    sub = StatementFacts(facts.params, facts.prepared, facts.extra_pure, facts.depth)
    for k, b in q.items():
        stmt_body(k, b, sub)
    # planning can evaluate IMMUTABLE functions: unknown ones stay opaque
    facts.merge(sub.result(), only=frozenset({OPAQUE}))
    facts.sensitive |= sub.sensitive
    facts.uncacheable |= sub.uncacheable


def _copy(body: dict[str, Any], facts: StatementFacts) -> None:
    rel = body.get("relation")
    is_from = body.get("is_from", False)
    if body.get("is_program"):
        facts.add(ADMIN, "copy-program", "COPY runs a program on the database server")
    elif body.get("filename"):
        facts.add(ADMIN, "copy-server-file", "COPY reads or writes a file on the database server")
    if is_from:
        if rel:
            queries.target_write(rel, facts)
        facts.add(WRITE, "copy-from", "COPY FROM loads rows")
        expressions.walk(body.get("whereClause"), facts, False, {})
        return
    facts.add(EXPORT, "copy-to", "COPY TO sends data out in bulk")
    facts.add(DUMP, "copy-to", "COPY TO reads in bulk")
    if rel:
        schema, name = relname(rel)
        facts.tables.add(table_key(schema, name))
        facts.add(READ, "select", "reads data")
        if is_catalog(schema, name):
            catalog_read(schema, name, facts)
    for a in body.get("attlist", ()):
        s = a.get("String")
        if s is not None:
            facts.columns.add(s.get("sval", ""))
    q = body.get("query") or {}
    for k, b in q.items():
        queries.query(k, b, facts, True, {})


def _declare(body: dict[str, Any], facts: StatementFacts) -> None:
    q = body.get("query") or {}
    unbounded = False
    for k, b in q.items():
        unbounded = queries.query(k, b, facts, True, {})
    if unbounded and body.get("options", 0) & 0x20:
        facts.add(DUMP, "held-cursor", "WITH HOLD cursor over whole tables")


def _fetch(body: dict[str, Any], facts: StatementFacts) -> None:
    if body.get("ismove"):
        facts.add(CONTROL, "move", "MOVE repositions a cursor")
    else:
        facts.add(READ, "fetch", "FETCH reads from a cursor classified at DECLARE")


def _call(body: dict[str, Any], facts: StatementFacts) -> None:
    fc = body.get("funccall") or {}
    names = strs(fc.get("funcname"))
    facts.functions.add(".".join(names))
    facts.add(OPAQUE, "call-procedure", f"CALL {'.'.join(names)}: procedure effects are unknown")
    expressions.walk(fc.get("args"), facts, True, {})


def _do(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(OPAQUE, "do-block", "DO runs an anonymous code block")


def _notify(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(WRITE, "notify", "NOTIFY sends a message to listening sessions")


def _truncate(body: dict[str, Any], facts: StatementFacts) -> None:
    for r in body.get("relations", ()):
        rv = r.get("RangeVar")
        if rv:
            queries.target_write(rv, facts)
    facts.add(DESTRUCTIVE, "truncate", "TRUNCATE removes all rows")


_DROP_EXTRA = {
    "OBJECT_EXTENSION": (ADMIN, "extension", "drops an extension"),
    "OBJECT_POLICY": (PRIVILEGE, "policy", "drops a row-level security policy"),
    "OBJECT_PUBLICATION": (ADMIN, "replication-object", "drops a publication"),
    "OBJECT_EVENT_TRIGGER": (ADMIN, "event-trigger", "drops an event trigger"),
    "OBJECT_FOREIGN_SERVER": (EXPORT, "foreign-data", "drops a foreign server"),
    "OBJECT_FDW": (EXPORT, "foreign-data", "drops a foreign-data wrapper"),
    "OBJECT_LANGUAGE": (ADMIN, "language", "drops a procedural language"),
    "OBJECT_ACCESS_METHOD": (ADMIN, "access-method", "drops an access method"),
    "OBJECT_TRANSFORM": (ADMIN, "transform", "drops a transform"),
}


def _drop(body: dict[str, Any], facts: StatementFacts) -> None:
    rt = body.get("removeType", "")
    facts.add(DDL, "drop", "DROP changes the schema")
    facts.add(DESTRUCTIVE, "drop", f"DROP {rt.removeprefix('OBJECT_').lower()} removes objects")
    extra = _DROP_EXTRA.get(rt)
    if extra is not None:
        facts.add(*extra)
    if rt in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
        for o in body.get("objects", ()):
            lst = o.get("List")
            if lst:
                facts.tables.add(".".join(strs(lst.get("items"))))


def _alter_table(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "alter", "ALTER changes the schema")
    rel = body.get("relation") or {}
    facts.tables.add(table_key(*relname(rel)))
    for c in body.get("cmds", ()):
        cmd = c.get("AlterTableCmd") or {}
        st = cmd.get("subtype", "")
        if st == "AT_DropColumn":
            facts.add(DESTRUCTIVE, "drop-column", "ALTER TABLE ... DROP COLUMN removes data")
        elif st == "AT_ChangeOwner":
            facts.add(PRIVILEGE, "owner-to", "ALTER ... OWNER TO changes ownership")
        elif st in ("AT_DisableRowSecurity", "AT_NoForceRowSecurity"):
            facts.add(PRIVILEGE, "row-security-off", "turns row-level security off")
        elif st in ("AT_DisableTrig", "AT_DisableTrigAll", "AT_DisableTrigUser", "AT_DisableRule"):
            facts.add(PRIVILEGE, "disable-trigger", "disables triggers or rules (audit, integrity)")
        definition(cmd.get("def"), facts)


def _create_table_as(body: dict[str, Any], facts: StatementFacts) -> None:
    into = body.get("into") or {}
    rel = into.get("rel") or {}
    facts.tables.add(table_key(*relname(rel)))
    if into.get("skipData"):  # WITH NO DATA: structure only, the query does not run
        facts.add(DDL, "create", "creates a table or materialized view WITH NO DATA")
        definition(body.get("query"), facts)
        return
    facts.add(DDL, "create-table-as", "CREATE TABLE AS creates a table")
    facts.add(WRITE, "create-table-as", "CREATE TABLE AS writes rows")
    q = body.get("query") or {}
    for k, b in q.items():
        if k == "SelectStmt":
            if queries.select(b, facts, True, {}, False):
                facts.add(DUMP, "copy-table-into-table", "copies whole tables into a new table")
        else:
            stmt_body(k, b, facts)


def _create_function(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "create-function", "creates a function or procedure")
    facts.add(OPAQUE, "function-body", "function bodies are not analysed")
    function_options(body.get("options"), facts)
    names = strs(body.get("funcname"))
    facts.functions.add(".".join(names))


def _alter_function(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "alter-function", "alters a function")
    function_options(body.get("actions"), facts)


def _alter_role_set(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(PRIVILEGE, "alter-role", "changes a role's defaults")
    variable_set(body.get("setstmt") or {}, facts)


def _alter_database_set(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "alter-database", "changes a database's defaults")
    variable_set(body.get("setstmt") or {}, facts)


def _alter_system(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(ADMIN, "alter-system", "ALTER SYSTEM rewrites server configuration")
    variable_set(body.get("setstmt") or {}, facts)


def _vacuum(body: dict[str, Any], facts: StatementFacts) -> None:
    if body.get("is_vacuumcmd"):
        facts.add(ADMIN, "vacuum", "VACUUM is server maintenance")
    else:
        facts.add(CONTROL, "analyze", "ANALYZE refreshes planner statistics")
    for r in body.get("rels", ()):
        vr = r.get("VacuumRelation") or {}
        rel = vr.get("relation")
        if rel:
            facts.tables.add(table_key(*relname(rel)))


def _rename(body: dict[str, Any], facts: StatementFacts) -> None:
    if body.get("renameType") == "OBJECT_ROLE":
        facts.add(PRIVILEGE, "rename-role", "renames a role")
    else:
        facts.add(DDL, "rename", "renames an object")
    rel = body.get("relation")
    if rel:
        facts.tables.add(table_key(*relname(rel)))


def _create_schema(body: dict[str, Any], facts: StatementFacts) -> None:
    facts.add(DDL, "create-schema", "creates a schema")
    role = body.get("authrole") or {}
    if role.get("roletype") == "ROLESPEC_CSTRING":  # owned by another, named role
        facts.add(PRIVILEGE, "owner-to", "CREATE SCHEMA ... AUTHORIZATION gives it to a role")
    for e in body.get("schemaElts", ()):
        for k, b in e.items():
            stmt_body(k, b, facts)


def _variable_set_stmt(body: dict[str, Any], facts: StatementFacts) -> None:
    variable_set(body, facts)


def _create(body: dict[str, Any], facts: StatementFacts) -> None:
    rel = body.get("relation") or {}
    facts.tables.add(table_key(*relname(rel)))
    facts.add(DDL, "create", "creates a table")
    definition(body.get("tableElts"), facts)


_STMT: dict[str, Callable[[dict[str, Any], StatementFacts], None]] = {
    "TransactionStmt": _transaction,
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
