"""Statements: one handler per statement type, and a query wherever one nests.

:meth:`Statements.statement` dispatches on the parse-tree node name to
``stmt_<name>``; a statement type without a handler returns no rows and is walked for
tokens only (refused: it may store them). :meth:`Statements.query` walks a query node
wherever it nests (a CTE, a sub-select, DECLARE, CREATE ... AS): a SELECT, or DML with
RETURNING.
"""

from __future__ import annotations

from typing import Any

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage.context import OUTPUT, Ctx, refused
from dbgate.pii.lineage.nodes import Node, one, strs
from dbgate.pii.lineage.results import Output, StatementLineage, TokenSite
from dbgate.pii.lineage.scope import Scope
from dbgate.pii.lineage.state import WalkState
from dbgate.pii.schema import Relation


class Statements(WalkState):
    """The walker's entry: a statement, or a query nested in one."""

    def statement(self, node: Node) -> StatementLineage:
        kind, body = one(node)
        handler = getattr(self, "stmt_" + kind, None)
        if handler is None:
            self.walk_side(body, f"a {kind} statement")
            return StatementLineage(kind, None)
        self.rules_met = False
        out = handler(body)
        if self.rules_met:
            # a rule's DO ALSO SELECT answers with rows of its own, of any shape
            why = "a write to a relation with rewrite rules may return their rows"
            return StatementLineage(kind, _unexplained(self.unknown(why)))
        return out if isinstance(out, StatementLineage) else StatementLineage(kind, out)

    def query(self, node: Node, scope: Scope | None, ctx: Ctx) -> Output:
        """Output of a query node (SELECT, or DML with RETURNING inside a CTE)."""
        kind, body = one(node)
        if kind == "SelectStmt":
            return self.select(body, scope, ctx)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return getattr(self, "dml_" + kind)(body, scope) or Output()
        self.walk_side(body, f"a {kind} inside a query")
        out = _unexplained(self.unknown(f"cannot follow a {kind} inside a query"))
        return out

    def stmt_SelectStmt(self, body: Node) -> StatementLineage:
        if _selects_into(body):
            out = self.select(body, None, OUTPUT)
            self.note_copy(out, "SELECT INTO copies PII into a new table")
            return StatementLineage("SelectStmt", None)
        wrapped = _wrapper(body)
        if wrapped is not None:
            inner, picks, sorts = wrapped
            if any(isinstance(key, int) for key in sorts):
                # ORDER BY 2: the literal picks an output (plan_cache.py)
                self.r.reads_literals = True
            out = self.select(inner, None, OUTPUT)
            return StatementLineage("SelectStmt", _picked(out, picks, sorts))
        return StatementLineage("SelectStmt", self.select(body, None, OUTPUT))

    def stmt_InsertStmt(self, body: Node) -> Output | None:
        return self.dml_InsertStmt(body, None)

    def stmt_UpdateStmt(self, body: Node) -> Output | None:
        return self.dml_UpdateStmt(body, None)

    def stmt_DeleteStmt(self, body: Node) -> Output | None:
        return self.dml_DeleteStmt(body, None)

    def stmt_MergeStmt(self, body: Node) -> Output | None:
        return self.dml_MergeStmt(body, None)

    def stmt_ExplainStmt(self, body: Node) -> Output:
        # The plan text echoes literals (a resolved token would come back raw), but
        # no data values: the output is clean, tokens inside are refused. Under
        # ANALYZE it also counts the rows each node returned and removed, which a
        # query can make spell values: the plan carries what the query's rows do.
        why = "EXPLAIN (its plan shows literal values)"
        ctas = (body.get("query") or {}).get("CreateTableAsStmt")
        execute = (body.get("query") or {}).get("ExecuteStmt") or (
            ((ctas or {}).get("query") or {}).get("ExecuteStmt")
        )
        if execute is not None:
            # the plan of a prepared statement shows the literals it was prepared with,
            # which may be values dbgate resolved from tokens: not the agent's to read
            # (``CREATE TABLE … AS EXECUTE p`` plans it as well)
            if _analyzes(body):
                # and ANALYZE runs it: its arguments go where its parameters do (a
                # copy of another session's query text written into a plain column);
                # a token among them is refused all the same (the plan shows it)
                first = len(self.r.token_sites)
                self.stmt_ExecuteStmt(execute)
                if ctas is not None:  # and makes the table (held as the bare one is)
                    self.stmt_CreateTableAsStmt(ctas)
                del self.r.token_sites[first:]
            self.walk_side(body.get("query"), why)
            return Output(
                tail=self.unknown(
                    "EXPLAIN EXECUTE shows the literals of a prepared statement, which may"
                    " hold values resolved from tokens"
                )
            )
        query = body.get("query") or {}
        if _analyzes(body):
            # ANALYZE runs it: a CREATE TABLE AS or SELECT INTO makes its table, and
            # ``email AS note`` stored there would be read back raw
            if "CreateTableAsStmt" in query:
                self.stmt_CreateTableAsStmt(query["CreateTableAsStmt"])
            elif _selects_into(query.get("SelectStmt") or {}):
                self.stmt_SelectStmt(query["SelectStmt"])
        if not _analyzes(body) or body.get("query") is None:
            # Nothing runs, but the planner evaluates the stable expressions that read
            # no column, and prints what they gave: row estimates (``LIMIT f()``,
            # ``id < f()``, ``generate_series(1, f())``) and the partitions pruned when
            # the executor starts. Values of columns never get there (only their
            # statistics: docs/security.md); a built-in that reads what dbgate cannot
            # follow does (``pg_stat_get_backend_activity(n)``, another session's text
            # with the raw values of its tokens; ``table_to_xml``): the plan is unknown.
            # The query is walked without its FROM: the column names it qualifies
            # (``o.id``) do not resolve there, and count for nothing, as bare ones do.
            saved, self.seen, self.unscoped_names = self.seen, CLEAN, True
            try:
                self.walk_side(body.get("query"), why)
                seen = self.seen
            finally:
                self.seen, self.unscoped_names = saved, False
            self.saw(seen)
            if seen.unknown:
                return Output(
                    [
                        self.unknown(
                            "EXPLAIN: the planner evaluates what the statement computes"
                            " without reading a column, and prints it in its estimates"
                        )
                    ],
                    ["QUERY PLAN"],
                )
            return Output([CLEAN], ["QUERY PLAN"])
        # ... and its memory, disk and buffer figures are sizes of every value the
        # query computes, its outputs' or not: ``Sort Method: quicksort  Memory:
        # 150kB`` of a sub-select's ``repeat('x', ascii(substr(email, 1, 1)))``
        # spells the code; so the plan carries everything the query computes
        saved, self.seen = self.seen, CLEAN
        try:
            inner = self.query(body["query"], None, refused(why))
            seen = self.seen
        finally:
            self.seen = saved
        self.saw(seen)
        computed = Lin(seen.entities, seen.unknown, seen.params)
        return Output([inner.union() | inner.chosen | computed], ["QUERY PLAN"])

    def stmt_VariableShowStmt(self, body: Node) -> Output:
        return Output([CLEAN], [body.get("name", "")])

    def stmt_DeclareCursorStmt(self, body: Node) -> None:
        out = self.query(body["query"], None, OUTPUT)
        name = body.get("portalname", "")
        self.r.declares[name] = out
        if int(body.get("options") or 0) & _CURSOR_OPT_HOLD:
            self.r.hold_cursors.add(name)

    def stmt_FetchStmt(self, body: Node) -> Output | None:
        name = body.get("portalname", "")
        self.r.runs_cursors.add(name)  # MOVE too: it runs the query, returning nothing
        if body.get("ismove"):
            return None
        out = self.r.declares.get(name)  # declared earlier in the same query string
        if out is None and self.session is not None:
            out = self.session.cursor(name)
        if out is None:
            return _unexplained(
                self.unknown(f"FETCH from cursor {name!r} declared where dbgate did not see it")
            )
        return out

    def stmt_PrepareStmt(self, body: Node) -> None:
        # the parameters it writes (into a plain column, a setting, the rows it writes
        # chosen by them): an EXECUTE argument derived from PII there is a copy
        writes, stores = self.r.param_writes, self.r.param_stores
        self.r.param_writes, self.r.param_stores = set(), set()
        try:
            out = self.query(
                body["query"], None, refused("PREPARE (the value would outlive the statement)")
            )
            out.writes = frozenset(self.r.param_writes | self.r.param_stores)
        finally:
            self.r.param_writes = writes | self.r.param_writes
            self.r.param_stores = stores | self.r.param_stores
        self.r.prepares[body.get("name", "")] = out

    def stmt_ExecuteStmt(self, body: Node) -> Output:
        # each argument is the value of a parameter of the prepared statement: what
        # flows from it (pg_stat_get_backend_activity(n), another session's query text
        # with the values of the tokens it sent) flows wherever that parameter does
        ctx = refused("EXECUTE parameters")
        args = [self.expr(arg, Scope(None), ctx) for arg in body.get("params") or ()]
        name = body.get("name", "")
        self.r.runs_prepared.add(name)
        out = self.r.prepares.get(name)
        if out is None and self.session is not None:
            out = self.session.prepared(name)
        if out is None:
            out = _unexplained(
                self.unknown(f"EXECUTE of {name!r}, prepared where dbgate did not see it")
            )
            written = range(1, len(args) + 1)  # what it does is not known
        else:
            written = out.writes
        if any(n > len(args) or args[n - 1].pii or args[n - 1].unknown for n in written):
            why = (
                f"EXECUTE of {name!r} writes, keeps or chooses by an argument derived from PII"
                " (or from what dbgate cannot follow)"
            )
            if why not in self.r.pii_writes:
                self.r.pii_writes.append(why)
        return _with_arguments(out, args)

    def stmt_DeallocateStmt(self, body: Node) -> None:
        self.r.deallocates.add(body.get("name") or "*")

    def stmt_DoStmt(self, body: Node) -> StatementLineage:
        """A DO block runs code dbgate does not read (held before it runs): once
        approved, it may read any PII and say it (``RAISE NOTICE '%', r`` of a name it
        selected through ``EXECUTE 'SELECT full' || '_name FROM cust' || 'omers'``,
        which names nothing the text shows), as a user function may: unknown, so its
        errors and notices are withheld."""
        self.walk_side(body, "a DoStmt statement")
        self.unknown("a DO block runs code dbgate does not read", computed=False)
        return StatementLineage("DoStmt", None)

    def stmt_CallStmt(self, body: Node) -> Output:
        self.walk_side(body, "CALL (a procedure may store its arguments)")
        return _unexplained(self.unknown("CALL returns what a procedure chose to return"))

    def stmt_CopyStmt(self, body: Node) -> StatementLineage:
        if body.get("is_from"):
            self.walk_side(body, "COPY FROM")
            if body.get("relation") is not None:  # its rows fire the table's triggers
                self.target_relation(body["relation"], Scope(None), changes=False)
                self.rules_met = False  # (COPY applies no rewrite rules)
            return StatementLineage("CopyStmt", None)
        if body.get("query") is not None:
            out = self.query(body["query"], None, OUTPUT)
        else:
            item = self.range_var(body["relation"], Scope(None))
            attlist = strs(body.get("attlist"))
            out = Output()
            if attlist:
                for name in attlist:
                    out.add(
                        item.get(name) or self.unknown(f"COPY of unknown column {name!r}"), name
                    )
            else:
                for name, lin in zip(item.names, item.cols, strict=True):
                    out.add(lin, name)
                if item.open:
                    out.tail = item.rest
        if body.get("filename") is not None or body.get("is_program"):
            self.note_copy(out, "COPY TO a file or program writes PII outside the database")
            return StatementLineage("CopyStmt", None)
        return StatementLineage("CopyStmt", out, copy_out=True)

    def stmt_CreateTableAsStmt(self, body: Node) -> None:
        if body.get("objtype") == "OBJECT_MATVIEW":  # a matview is covered by its definition
            self.definition(body["query"], "a materialized view definition")
            return
        ctx = refused("CREATE ... AS (the value would be stored)")
        out = self.query(body["query"], None, ctx)
        self.note_copy(out, "CREATE TABLE AS copies PII into a new table")

    def stmt_ViewStmt(self, body: Node) -> None:
        self.definition(body["query"], "a view definition")

    def definition(self, query: Node, what: str) -> None:
        """The query of a view: the server stores its text (``pg_views.definition``,
        ``pg_get_viewdef``), literals included, so a token anywhere in it — WHERE,
        JOIN, a sub-select, not only an output — would be stored as the raw value."""
        why = f"{what} (the value would be stored)"
        first = len(self.r.token_sites)
        self.query(query, None, refused(why))
        sites = self.r.token_sites
        sites[first:] = [
            s if not s.allowed else TokenSite(s.location, False, why, s.text) for s in sites[first:]
        ]

    def stmt_RuleStmt(self, body: Node) -> None:
        self.rule_writes(body)
        self.walk_side(body, "a rule definition")

    def rule_writes(self, body: Node) -> None:
        """What a rule's actions write, judged as the statements would be: once the rule
        is made (an approver may take it for ordinary DDL), every write to its relation
        runs them, and ``DO ALSO INSERT INTO notes SELECT id, email FROM customers`` or
        ``VALUES (NEW.email)`` stores PII where the catalog will not find it, read back
        raw from ``notes``. ``NEW`` and ``OLD`` are rows of the rule's relation. Tokens
        are refused anywhere in a rule (its text is stored), as by ``walk_side``."""
        rv = body.get("relation")
        if rv:
            self.stored_writes(body.get("actions") or (), "a rule definition", rv)

    def stmt_CreateFunctionStmt(self, body: Node) -> None:
        """A function in SQL is judged by what its body writes, as a rule's actions
        are (``LANGUAGE sql AS 'INSERT INTO notes SELECT id, email FROM customers'``,
        or ``BEGIN ATOMIC … END``): a call of it, or a trigger that runs it, copies
        PII where the catalog will not find it. Other languages stay opaque."""
        self.walk_side(body, "a CreateFunctionStmt statement")
        names = strs(body.get("funcname") or [])
        if names:
            self.shadows(names[-1], "a function")
        options = {
            d["DefElem"].get("defname"): d["DefElem"].get("arg")
            for d in body.get("options") or ()
            if "DefElem" in d
        }
        language = ((options.get("language") or {}).get("String") or {}).get("sval", "sql")
        if language.lower() != "sql":
            return
        stmts: list[Node] = []
        sql_body = body.get("sql_body")
        if sql_body:
            for part in (sql_body.get("List") or {}).get("items") or ():
                stmts.extend((part.get("List") or {}).get("items") or ())
        for item in ((options.get("as") or {}).get("List") or {}).get("items") or ():
            text = (item.get("String") or {}).get("sval")
            if text:
                from dbgate.pii.lineage.walker import parse

                try:
                    stmts.extend(parse(text))
                except Exception:  # the server rejects it too
                    continue
        self.stored_writes(stmts, "a function body")

    def shadows(self, name: str, what: str) -> None:
        """A function or aggregate named like one of PostgreSQL's own: dbgate reads a
        call of the name as the built-in's until its snapshot lists the new one, which
        it cannot while the transaction that made it is open (``public.lower(bigint)``
        returning a customer's e-mail: ``lower(2::bigint)`` came back raw)."""
        if self.snap.assume_builtin_functions:
            return
        if any(f.builtin for f in self.snap.functions_named(name)):
            self.r.pii_writes.append(
                f"creates {what} named like PostgreSQL's own {name}(): until dbgate reads"
                " the schema again (after this transaction) a call is taken for the built-in's"
            )

    def stmt_DefineStmt(self, body: Node) -> None:
        self.walk_side(body, "a DefineStmt statement")
        names = strs(body.get("defnames") or [])
        if body.get("kind") == "OBJECT_AGGREGATE" and names:
            self.shadows(names[-1], "an aggregate")
        elif body.get("kind") == "OBJECT_OPERATOR" and names:
            self.r.pii_writes.append(
                f"creates operator {names[-1]}: until dbgate reads the schema again (after"
                " this transaction) its uses are taken for PostgreSQL's own, which return"
                " their operands"
            )

    def stmt_CreateCastStmt(self, body: Node) -> None:
        self.walk_side(body, "a CreateCastStmt statement")
        if body.get("func"):
            self.r.pii_writes.append(
                "creates a cast that runs a function: until dbgate reads the schema again"
                " (after this transaction) it is taken for PostgreSQL's own, which returns"
                " its argument"
            )

    def stored_writes(self, stmts: Any, what: str, rv: Node | None = None) -> None:
        """Walk the writes among ``stmts`` (code the server stores and runs later) for
        what they copy where; ``NEW`` and ``OLD`` are rows of ``rv``. Tokens there
        are refused (the text is stored)."""
        first = len(self.r.token_sites)
        for action in stmts:
            kind = next(iter(action), "")
            if kind not in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
                continue
            scope = Scope(None)
            for alias in ("new", "old") if rv else ():
                self.range_var({**rv, "alias": {"aliasname": alias}}, scope)
            getattr(self, f"dml_{kind}")(action[kind], scope)
        why = f"{what} (the value would be stored)"
        sites = self.r.token_sites
        sites[first:] = [
            s if not s.allowed else TokenSite(s.location, False, why, s.text) for s in sites[first:]
        ]

    # Statements that run over the rows of an existing relation, whose errors quote
    # them: REFRESH ... CONCURRENTLY's ``DETAIL: Row: (…)`` of a duplicate, CREATE
    # UNIQUE INDEX's ``Key (…)=(…) is duplicated``, ALTER TABLE's casts of stored
    # values. Their relation is looked up, so that one the snapshot lacks (created
    # since) is reported unknown: the snapshot is read again, and until then their
    # errors are withheld.
    def stmt_RefreshMatViewStmt(self, body: Node) -> None:
        self.walk_side(body, "a RefreshMatViewStmt statement")
        self.existing_relation(body.get("relation"))

    def stmt_IndexStmt(self, body: Node) -> None:
        self.walk_side(body, "a IndexStmt statement")
        self.existing_relation(body.get("relation"))

    def stmt_AlterTableStmt(self, body: Node) -> None:
        self.walk_side(body, "a AlterTableStmt statement")
        if body.get("objtype") in ("OBJECT_TABLE", "OBJECT_MATVIEW"):  # not an index's
            self.existing_relation(body.get("relation"))
        subtypes = {
            cmd.get("subtype")
            for c in body.get("cmds") or ()
            if (cmd := c.get("AlterTableCmd") or {})
            and not (
                cmd.get("subtype") == "AT_AlterColumnType"
                and not self.column_holds_pii(body.get("relation"), cmd.get("name") or "")
            )
        }
        if body.get("objtype") == "OBJECT_TYPE" and subtypes:
            self.unmarks("changes a composite type")
        elif subtypes & _UNMARKING and self.holds_pii(body.get("relation")):
            self.unmarks(
                f"changes a column's type, key, parent or options of {_shown(body.get('relation'))}"
            )
        self.retyped(body)

    def stmt_RenameStmt(self, body: Node) -> None:
        self.walk_side(body, "a RenameStmt statement")
        kind = body.get("renameType")
        if kind == "OBJECT_SCHEMA":
            name = body.get("subname") or ""
            if any(self.rel_has_pii(r) for r in self.snap.relations.values() if r.schema == name):
                self.unmarks(f"renames schema {name}")
        elif kind in _TYPE_OBJECTS or body.get("relationType") in _TYPE_OBJECTS:
            self.unmarks("renames a type, a domain or a field of one")
        elif self.holds_pii(body.get("relation")):
            self.unmarks(f"renames {_shown(body.get('relation'))} or a column of it")

    def stmt_AlterObjectSchemaStmt(self, body: Node) -> None:
        self.walk_side(body, "a AlterObjectSchemaStmt statement")
        if body.get("objectType") in _TYPE_OBJECTS:
            self.unmarks("moves a type or a domain to another schema")
        elif self.holds_pii(body.get("relation")):
            self.unmarks(f"moves {_shown(body.get('relation'))} to another schema")

    def stmt_CommentStmt(self, body: Node) -> None:
        self.walk_side(body, "a CommentStmt statement")
        if body.get("objtype") != "OBJECT_COLUMN" or "pii:" in (body.get("comment") or "").lower():
            return
        names = strs((body.get("object") or {}).get("List", {}).get("items"))
        if len(names) < 2:
            return
        *qualifier, column = names
        for rel in self.snap.lookup(qualifier[-1], qualifier[-2] if len(qualifier) > 1 else None):
            for col, lin in zip(rel.columns, self.source.relation_lins(rel), strict=False):
                if col.name == column and (lin.pii or lin.unknown):
                    self.unmarks(f"replaces the comment of {'.'.join(names)}")
                    return

    def stmt_DropStmt(self, body: Node) -> None:
        self.walk_side(body, "a DropStmt statement")
        if body.get("removeType") != "OBJECT_TRIGGER":
            return
        for obj in body.get("objects") or ():
            names = strs(obj.get("List", {}).get("items"))
            if len(names) < 2:
                continue
            rv = {"relname": names[-2], "schemaname": names[-3] if len(names) > 2 else None}
            if self.holds_pii(rv):
                self.unmarks(f"drops a trigger of {_shown(rv)}")
                return

    def unmarks(self, what: str) -> None:
        """A schema change after which the catalog may no longer find PII a relation
        holds: what marks a column is its name, its comment, its type's or domain's name,
        a key, a parent, a generation expression, a foreign table's options — change it
        (``ALTER TABLE t RENAME COLUMN email TO x``, ``COMMENT ON COLUMN t.body IS
        NULL`` of a ``pii:`` comment) and the stored values read back raw. Held like a
        copy of PII where the catalog will not find it."""
        why = f"{what}, which holds PII: the catalog may no longer find it there"
        if why not in self.r.pii_writes:
            self.r.pii_writes.append(why)

    def holds_pii(self, rv: Node | None) -> bool:
        if not rv:
            return False
        rels = self.snap.lookup(rv.get("relname") or "", rv.get("schemaname"))
        return any(self.rel_has_pii(rel) for rel in rels)

    def column_holds_pii(self, rv: Node | None, column: str) -> bool:
        """Whether ``column`` of the relation ``rv`` names is PII (or unknown): a type
        change of a clean column (``id TYPE bigint``) takes no mark away."""
        if not rv:
            return False
        for rel in self.snap.lookup(rv.get("relname") or "", rv.get("schemaname")):
            for col, lin in zip(rel.columns, self.source.relation_lins(rel), strict=False):
                if col.name == column and (lin.pii or lin.unknown):
                    return True
        return False

    def rel_has_pii(self, rel: Relation) -> bool:
        return any(lin.pii or lin.unknown for lin in self.source.relation_lins(rel))

    def retyped(self, body: Node) -> None:
        """``ALTER COLUMN c TYPE … USING expr`` rewrites every row's ``c`` with ``expr``
        over the row's columns: an UPDATE by another name. ``ALTER COLUMN created_at
        TYPE text USING email`` copies the e-mails into a plain column, read back raw;
        ``USING substr(email, 1, 1)`` stores a value made from PII in a PII column.
        Judged as the assignment would be. Tokens stay refused."""
        rv = body.get("relation")
        cmds = [
            c["AlterTableCmd"]
            for c in body.get("cmds") or ()
            if c.get("AlterTableCmd", {}).get("subtype") == "AT_AlterColumnType"
        ]
        using = [
            (c.get("name", ""), c["def"]["ColumnDef"]["raw_default"])
            for c in cmds
            if rv and ((c.get("def") or {}).get("ColumnDef") or {}).get("raw_default")
        ]
        for c in cmds if rv else ():
            # a type that keeps a part of each value (``"char"`` its first byte, a
            # precision rounds): the PII column then holds values made from PII, whose
            # stored tokens match those of texts the agent stores itself
            type_name = ((c.get("def") or {}).get("ColumnDef") or {}).get("typeName") or {}
            tname = (strs(type_name.get("names") or []) or [""])[-1].lower()
            cuts = tname in ("char", "name", "float4", "float8") or (
                bool(type_name.get("typmods"))
                and tname not in ("varchar", "bpchar", "bit", "varbit")
            )
            for rel in (
                self.snap.lookup(rv.get("relname", ""), rv.get("schemaname")) if cuts else ()
            ):
                col = rel.column(c.get("name", ""))
                if col is None:
                    continue
                lin = self.source.relation_lins(rel)[rel.columns.index(col)]
                if lin.pii or lin.unknown:
                    self.r.pii_writes.append(
                        f"stores a value made from PII in {rel.qualified}.{col.name}: its new"
                        f" type {tname} keeps a part of each value, whose token could be"
                        " matched to a chosen text's"
                    )
        if not using:
            return
        first = len(self.r.token_sites)
        scope = Scope(None)
        item = self.range_var(rv, scope)
        for name, expr in using:
            ctx = self.column_ctx(item, rv.get("relname", ""), name)
            self.check_write(self.expr(expr, scope, ctx), ctx, expr)
        why = "ALTER TABLE (the value would be stored)"
        sites = self.r.token_sites
        sites[first:] = [
            s if not s.allowed else TokenSite(s.location, False, why, s.text) for s in sites[first:]
        ]

    def existing_relation(self, rv: Node | None) -> None:
        if rv and not self.snap.lookup(rv.get("relname", ""), rv.get("schemaname")):
            name, schema = rv.get("relname", ""), rv.get("schemaname")
            self.r.unknown_relations.add(f"{schema}.{name}" if schema else name)


#: Objects whose names may be what marks a column as PII (a domain ``email_address``,
#: a composite type's field ``email``).
_TYPE_OBJECTS = frozenset({"OBJECT_TYPE", "OBJECT_DOMAIN", "OBJECT_ATTRIBUTE"})
#: ALTER TABLE commands after which a column may no longer be found PII: its type (a
#: domain's name), a generation expression dropped, a foreign key or a parent dropped,
#: a partition detached, a foreign table's options (the remote column's name).
_UNMARKING = frozenset(
    {
        "AT_AlterColumnType",
        "AT_DropExpression",
        "AT_DropConstraint",
        "AT_DropInherit",
        "AT_DetachPartition",
        "AT_DetachPartitionFinalize",
        "AT_AlterColumnGenericOptions",
        "AT_GenericOptions",
        "AT_DropOf",
    }
)


def _shown(rv: Node | None) -> str:
    rv = rv or {}
    name = rv.get("relname") or "?"
    return f"{rv['schemaname']}.{name}" if rv.get("schemaname") else name


def _with_arguments(out: Output, args: list[Lin]) -> Output:
    """``out`` (a prepared statement's) with each of its parameters ``$n`` replaced by
    the lineage of EXECUTE's ``n``-th argument (unknown when there is none)."""

    def bound(lin: Lin) -> Lin:
        if not lin.params:
            return lin
        flows = Lin(lin.entities, lin.unknown, token=lin.token)
        for n in lin.params:
            flows = flows | (args[n - 1] if 0 < n <= len(args) else UNKNOWN_LIN)
        return flows

    return Output(
        [bound(lin) for lin in out.columns],
        list(out.names),
        None if out.tail is None else bound(out.tail),
        bound(out.chosen),
    )


#: DECLARE ... WITH HOLD (PostgreSQL's CURSOR_OPT_HOLD)
_CURSOR_OPT_HOLD = 0x0020


def _selects_into(body: Node) -> bool:
    """Whether a SELECT makes a table (``SELECT … INTO t``): the parser leaves the
    ``INTO`` on the first SELECT of a set operation, ``SELECT id, email AS note INTO t
    FROM customers UNION ALL SELECT 1, 'x'``, which stores the whole result."""
    while body:
        if body.get("intoClause"):
            return True
        body = (body.get("larg") or {}) if body.get("op") not in (None, "SETOP_NONE") else {}
    return False


def _analyzes(body: Node) -> bool:
    """Whether an EXPLAIN runs its statement: ``ANALYZE``, unless set false (anything
    but a plain false counts as true: fail closed). PostgreSQL takes the last of
    several ``analyze`` options (``EXPLAIN (ANALYZE false, ANALYZE) INSERT …`` runs the
    INSERT), so one set true anywhere counts."""
    runs = False
    for option in body.get("options") or ():
        d = option.get("DefElem", {})
        if d.get("defname") == "analyze":
            arg = d.get("arg") or {}
            said = (arg.get("String") or {}).get("sval", "").lower()
            zero = "Integer" in arg and not arg["Integer"].get("ival")
            runs = runs or not (said in ("false", "off", "no") or zero)
    return runs


#: Clauses that make a SELECT more than a projection of its FROM item.
_NOT_A_WRAPPER = (
    "withClause",
    "whereClause",
    "groupClause",
    "havingClause",
    "windowClause",
    "distinctClause",
    "lockingClause",
    "valuesLists",
    "intoClause",
    "op",
    "larg",
    "rarg",
)


def _wrapper(
    body: Node,
) -> tuple[Node, list[tuple[str | None, str]], list[int | tuple[bool, str]]] | None:
    """A statement that only passes one sub-select's rows on: ``SELECT "source"."a" AS
    "a", "source"."n" FROM (…) AS "source" ORDER BY "source"."n" DESC LIMIT 10``, as
    Metabase wraps a question built on another, and Superset a virtual dataset —
    columns of the sub-select as they are, no WHERE, GROUP BY, DISTINCT, window or
    lock, a constant LIMIT, over a sub-select with no ORDER BY, LIMIT, OFFSET or
    DISTINCT ON of its own. Its rows are the sub-select's, in an order of their own
    values and cut by a constant, as the sub-select's own statement-level ORDER BY
    and LIMIT would: the sub-select is the statement's query. So is the one CTE of
    ``WITH agg AS (…) SELECT … FROM agg``. Returns the sub-select
    and, per output, the qualifier and column it names (``*`` for all); None when
    the statement is anything more."""
    if body.get("op") not in (None, "SETOP_NONE") or any(
        body.get(k) for k in _NOT_A_WRAPPER if k not in ("op", "withClause")
    ):
        return None
    source = body.get("fromClause") or []
    if len(source) != 1:
        return None
    with_clause = body.get("withClause")
    if with_clause is not None:
        # WITH x AS (…) SELECT … FROM x: the same, written as a CTE
        ctes = with_clause.get("ctes") or []
        cte = ctes[0].get("CommonTableExpr") or {} if len(ctes) == 1 else {}
        ref = source[0].get("RangeVar") or {}
        if (
            with_clause.get("recursive")
            or cte.get("aliascolnames")
            or not cte.get("ctename")
            or ref.get("relname") != cte["ctename"]
            or ref.get("schemaname")
            or ref.get("catalogname")
            or (ref.get("alias") or {}).get("colnames")
        ):
            return None
        alias = (ref.get("alias") or {}).get("aliasname") or cte["ctename"]
        inner = (cte.get("ctequery") or {}).get("SelectStmt")
        if inner is None:
            return None
    else:
        if "RangeSubselect" not in source[0]:
            return None
        sub = source[0]["RangeSubselect"]
        alias = (sub.get("alias") or {}).get("aliasname")
        inner = (sub.get("subquery") or {}).get("SelectStmt")
        if sub.get("lateral") or inner is None or (sub.get("alias") or {}).get("colnames"):
            return None
    if any(inner.get(k) for k in ("sortClause", "limitCount", "limitOffset")) or (
        inner.get("distinctClause") not in (None, [{}])
    ):
        # an order of its own, cut or made distinct: one level's order only, and the
        # statement's own ORDER BY is the one it may have (docs/security.md)
        return None
    for limit in (body.get("limitCount"), body.get("limitOffset")):
        if limit is not None and "A_Const" not in limit:
            return None
    # outputs by position, else (qualified, name): a bare name is an output's first
    sorts: list[int | tuple[bool, str]] = []
    for item in body.get("sortClause") or ():
        node = (item.get("SortBy") or {}).get("node") or {}
        fields = (node.get("ColumnRef") or {}).get("fields") or []
        position = ((node.get("A_Const") or {}).get("ival") or {}).get("ival")
        if isinstance(position, int):
            sorts.append(position)
        elif 1 <= len(fields) <= 2 and all("String" in f for f in fields):
            if len(fields) == 2 and strs(fields[:1]) != [alias]:
                return None
            sorts.append((len(fields) == 2, strs(fields[-1:])[0]))
        else:
            return None
    picks: list[tuple[str | None, str]] = []
    for target in body.get("targetList") or ():
        val = target["ResTarget"].get("val") or {}
        fields = (val.get("ColumnRef") or {}).get("fields")
        if not fields or len(fields) > 2:
            return None
        if len(fields) == 2 and strs(fields[:1]) != [alias]:
            return None
        last = strs(fields[-1:])
        if "A_Star" not in fields[-1] and len(last) != 1:
            return None
        column = "*" if "A_Star" in fields[-1] else last[0]
        picks.append((target["ResTarget"].get("name") or column, column))
    return (inner, picks, sorts) if picks else None


def _picked(
    out: Output, picks: list[tuple[str | None, str]], sorts: list[int | tuple[bool, str]]
) -> Output:
    """The wrapper's outputs: the sub-select's columns it names, in its order. Where
    a name does not pick one column (a width not known, a name twice), every output
    carries what all of the sub-select's do. Its ORDER BY of a column that is not a
    stored one as it is (``lower(email) e … ORDER BY s.e LIMIT 1``, a distance to
    another row source's value) chooses the rows by that value, as at any level:
    every output carries it."""
    columns: list[Lin] = []
    names: list[str] = []
    stored: set[int] = set()
    sources: list[int] = []  # per output, the sub-select's column
    whole = out.tail
    for name, column in picks:
        if whole is not None:
            break
        if column == "*":
            positions = list(range(len(out.columns)))
        else:
            positions = [k for k, n in enumerate(out.names) if n == column]
            if len(positions) != 1:
                whole = CLEAN
                break
        for k in positions:
            if k in out.stored:
                stored.add(len(columns))
            sources.append(k)
            columns.append(out.columns[k])
            names.append(out.names[k] if column == "*" else name or column)
    chosen = CLEAN
    for key in sorts if whole is None else ():
        if isinstance(key, int):
            found = [sources[key - 1]] if 0 < key <= len(sources) else []
        else:
            qualified, name = key
            outputs = [] if qualified else [k for k, n in enumerate(names) if n == name]
            if outputs:  # ORDER BY reads a bare name as an output's first
                found = [sources[k] for k in outputs]
            else:
                found = [k for k, n in enumerate(out.names) if n == name]
        if len(found) != 1:
            whole = CLEAN
            break
        lin = out.columns[found[0]]
        if found[0] not in out.stored and (lin.pii or lin.unknown or lin.params):
            chosen = chosen | lin
    if whole is not None:
        for lin in out.columns:
            whole = whole | lin
        columns, names, stored = [], [], set()
    elif chosen is not CLEAN:
        columns = [lin | chosen for lin in columns]
    return Output(
        columns=columns,
        names=names,
        tail=whole,
        chosen=out.chosen | chosen,
        asked=out.asked,
        asked_levels=out.asked_levels,
        ordered=out.ordered,
        stored=frozenset(stored),
    )


def _unexplained(lin: Lin) -> Output:
    """The output of a query dbgate did not see (a cursor or prepared statement made
    where it could not follow, a rule's own rows): its values are ``lin``, and so is
    what chose its rows. A column the RowDescription names as stored is a stored
    value, but of rows that query may have chosen by PII (``c2.id`` of ``JOIN
    customers c2 ON c2.id = ascii(substr(c.email, 1, 1))`` is the code): it gets a
    fresh pseudonym, not the stored value."""
    return Output(tail=lin, chosen=lin)
