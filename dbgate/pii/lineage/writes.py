"""Writes: INSERT, UPDATE, DELETE and MERGE, and PII stored out of the catalog's sight.

A value written into a column the catalog marks as PII is fine (it is read back
tokenized); written anywhere else it is noted (:meth:`Writes.check_write`), as is PII a
statement copies out whole (:meth:`Writes.note_copy`: SELECT INTO, CREATE TABLE AS,
COPY TO a file). RETURNING is an output like a SELECT's.
"""

from __future__ import annotations

from dbgate.pii.lin import CLEAN, Lin
from dbgate.pii.lineage.context import OUTPUT, Ctx, refused
from dbgate.pii.lineage.nodes import Node, lossless_cast
from dbgate.pii.lineage.results import Output
from dbgate.pii.lineage.scope import Item, Scope
from dbgate.pii.lineage.state import WalkState
from dbgate.pii.schema import Relation


def _view_defaults(rel: Relation) -> bool:
    """Whether ``rel`` is a view with column defaults of its own (``ALTER VIEW v ALTER
    note SET DEFAULT current_query()``): an INSERT through it stores them in its base
    table's columns, which the catalog reads as their own (clean)."""
    return rel.kind == "v" and any(c.default is not None or c.coded_default for c in rel.columns)


class Writes(WalkState):
    """DML statements, and the bookkeeping of what a statement writes."""

    def target_relation(
        self, rv: Node, scope: Scope, changes: bool = True
    ) -> tuple[Item, Relation | None]:
        """``changes``: the write may change or delete stored rows (not a plain INSERT
        or COPY FROM), which a foreign key's action cascades to the rows referencing
        them."""
        item = self.range_var(rv, scope)
        rels = self.snap.lookup(rv.get("relname", ""), rv.get("schemaname"))
        rel = rels[0] if rels else None
        if rel is not None and (
            rel.rules
            or rel.triggers
            or rel.code
            or (changes and rel.cascades)
            or _view_defaults(rel)
        ):
            self.hidden_code(rel, changes)
        return item, rel

    def hidden_code(self, rel: Relation, changes: bool = True) -> None:
        """A write to ``rel`` runs its rules or triggers: code the walk does not see.

        Its notices and errors may say what it read (``Analysis.hidden_code``), and a
        rule's ``DO ALSO SELECT`` returns rows of its own, which nothing in the
        statement explains (``rules_met``: the statement's output is unknown)."""
        kinds = [
            k
            for k, on in (
                ("rules", rel.rules),
                ("triggers", rel.triggers),
                ("column defaults and checks", rel.code),
                ("column defaults", _view_defaults(rel)),
            )
            if on
        ]
        notes = [f"the {' and '.join(kinds)} of {rel.qualified}"] if kinds else []
        if changes and rel.cascades:
            notes.append(
                f"the code of {rel.cascades}, which a write to {rel.qualified} cascades to"
            )
        for note in notes:
            if note not in self.r.hidden_code:
                self.r.hidden_code.append(note)
        if rel.rules:
            self.rules_met = True

    def returning(
        self, body: Node, scope: Scope, item: Item, written_only: bool = False
    ) -> Output | None:
        """``written_only``: a DELETE's (its RETURNING shows the rows as they were stored)."""
        rc = body.get("returningClause") or {}
        exprs = rc.get("exprs") if isinstance(rc, dict) else None
        if exprs is None:
            exprs = body.get("returningList")
        if not exprs:
            return None
        if not written_only:
            self.r.returns_written = True
        for alias in ("old", "new"):
            scope.items.append(Item(alias, item.names, item.cols, item.open, item.rest))
        out = Output()
        for target in exprs:
            rt = target["ResTarget"]
            self.target(rt.get("val"), rt.get("name"), scope, OUTPUT, out)
        return scope.mark(out)

    def column_ctx(self, item: Item, rel_name: str, column: str) -> Ctx:
        lin = item.get(column)
        if lin is not None and (lin.pii or lin.unknown):
            rels = self.snap.lookup(rel_name)
            if not rels:
                # made since the snapshot, perhaps by this very text or an uncommitted
                # transaction a reload cannot see (``CREATE TABLE sink (id int, body
                # text); INSERT INTO sink SELECT id, email FROM customers``): its
                # columns are not known to be PII, and the next snapshot would call the
                # copies clean
                why = f"relation {rel_name} is not in dbgate's schema snapshot"
                return Ctx(False, why, target=f"{rel_name}.{column} ({why})")
            for rel in rels:
                # the same name in several schemas (a temporary table over a table):
                # the session's search_path decides which one is written, so each must
                # store PII there (a read takes the union, a write the intersection)
                col = rel.column(column)
                if col is not None and len(rels) > 1:
                    other = self.source.relation_lins(rel)[rel.columns.index(col)]
                    if not (other.pii or other.unknown):
                        why = f"{rel.qualified}.{column} is not PII in the catalog"
                        return Ctx(False, why, target=f"{rel_name}.{column} ({why})")
                stored = self.view_stores_pii(rel, column)
                if stored is not None:
                    return Ctx(False, stored, target=f"{rel_name}.{column} ({stored})")
                col = rel.column(column)
                cut = None if col is None else self.cutting_type(col.type_oid)
                if cut is not None:
                    # stored cut (its first byte), read back as that part's token
                    return Ctx(
                        False,
                        f"column {rel_name}.{column} is of type {cut}, which keeps only "
                        "part of a value",
                        target=f"{rel_name}.{column}",
                        stores=True,
                    )
            # written into a column of an array type, json or jsonb, a literal in
            # that syntax is read as one (``Ctx.container``)
            cols = [rel.column(column) for rel in rels]
            container = all(c is not None and self.container_oid(c.type_oid) for c in cols)
            return Ctx(True, target=f"{rel_name}.{column}", stores=True, container=container)
        return Ctx(
            False,
            f"column {rel_name}.{column} is not PII in the catalog",
            target=f"{rel_name}.{column}",
        )

    def view_stores_pii(self, rel: Relation, column: str, depth: int = 0) -> str | None:
        """Why a value written into ``column`` of view ``rel`` is not stored in a PII
        column (None when it is, or ``rel`` is no view). A view's column is PII by what
        its definition reads, and by its name too (``SELECT id, note AS email FROM
        memos``); a write into it is stored in the column of the base relation the
        definition names, which is PII only by its own name, mark or lineage: a copy
        written there would be read back raw from the base relation. A column dbgate
        cannot map to one base column (not an automatically updatable view's: an
        ``INSTEAD OF`` trigger or rule decides) is not known to store PII either."""
        if rel.kind != "v":
            return None
        from dbgate.pii.lineage.walker import parse

        names = [c.name for c in rel.columns]
        base: Relation | None = None
        target = ""
        try:
            (stmt,) = parse(rel.definition or "")
            body = stmt["SelectStmt"]
            (source,) = body.get("fromClause") or ()
            rv = source["RangeVar"]
            val = body["targetList"][names.index(column)]["ResTarget"]["val"]
            target = val["ColumnRef"]["fields"][-1]["String"]["sval"]
            if body.get("op", "SETOP_NONE") == "SETOP_NONE":
                found = self.snap.lookup(rv.get("relname", ""), rv.get("schemaname"))
                base = found[0] if len(found) == 1 else None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            base = None
        if base is None or depth > 16:
            return "a view column whose stored column dbgate cannot tell"
        if base.kind == "v":
            return self.view_stores_pii(base, target, depth + 1)
        base_names = [c.name for c in base.columns]
        if target not in base_names:
            return "a view column whose stored column dbgate cannot tell"
        lin = self.source.relation_lins(base)[base_names.index(target)]
        if lin.pii or lin.unknown:
            return None
        return f"a view column stored in {base.qualified}.{target}"

    def check_write(self, lin: Lin, ctx: Ctx, value: Node | None = None) -> None:
        """``lin`` (of the expression ``value``, when one is at hand) is written where
        ``ctx`` says: PII into a column the catalog does not mark is held; so is a
        value *made* from PII stored in a PII column (``SET email = substr(email, 1,
        1)``): read back it would get the deterministic token of a stored value, which
        the agent could compare with the token of a text it stored itself, a codebook
        one character at a time. A copy (a column, a constant, a parameter) is not made
        from anything; a token among them is resolved only when it stands for a stored
        value (see ``tokens_in``)."""
        if ctx.stores:
            if lin.params and not _a_copy(value):
                # a parameter computed on (``$1::varchar(1)``) may be a token: its value
                # would be stored made from PII, as above
                for n in lin.params:
                    self.r.param_sites[n] = f"a value made from it would be stored in {ctx.target}"
            # a column of a type that keeps a part of a value (``"char"``) makes even a
            # copy one: ``INSERT INTO guess (email) SELECT email …`` stores first bytes
            if (lin.pii or lin.unknown) and (not _a_copy(value) or not ctx.allowed):
                what = (
                    f"stores a value made from PII ({', '.join(sorted(lin.entities)) or 'unknown'}) in "
                    f"{ctx.target}: read back, its token could be matched to a chosen text's"
                )
                if what not in self.r.pii_writes:
                    self.r.pii_writes.append(what)
            return
        if ctx.allowed or ctx.target is None:
            return
        if lin.pii:
            what = f"writes PII ({', '.join(sorted(lin.entities))}) into {ctx.target}, which the catalog does not mark"
            if lin.token:
                self.r.token_writes.append(what)
            if what not in self.r.pii_writes:
                self.r.pii_writes.append(what)
        if lin.params:
            self.r.param_writes |= lin.params

    def written_rows_chosen(self, chosen: Lin, what: str) -> None:
        """The rows a write changes were chosen by a value derived from PII (or
        unknown) related with another row source: which rows changed spells the value
        (``UPDATE orders SET total = 1000 + n FROM customers c, generate_series(1, 40)
        n WHERE c.id = 1 AND orders.id = n * 128 + ascii(substr(c.email, n, 1))``
        marks one order per character, and a clean read of ``orders`` spells the
        e-mail back). A read of those rows would have every output tokenized
        (``Scope.mark``); a write keeps the choice in the table, where a later, clean
        statement reads it: held, like a copy of PII into a plain column. A row chosen
        by its own PII (``WHERE email LIKE 'a%'``) marks nothing (one bit per row)."""
        # a bind parameter that chose them may carry a token: one there is refused
        self.r.param_writes |= chosen.params
        if chosen.pii or chosen.unknown:
            why = (
                f"{what} chosen by a value derived from PII"
                f" ({', '.join(sorted(chosen.entities)) or 'unknown'}): which rows they are"
                " spells the value"
            )
            if why not in self.r.pii_writes:
                self.r.pii_writes.append(why)

    def written_rows_asked(self, out: Output | Scope, what: str) -> None:
        """The rows a write stores were kept by questions of their own PII: one level's
        rows answer a bit each, as a read of them would (``INSERT INTO seg SELECT id
        FROM customers WHERE email LIKE '%@x.com'``), but rows kept at several levels
        — the branches of a ``UNION ALL``, or several ``INSERT``s in CTEs, each keeping
        a row of constants by another bit of one value — store a bit per level, which a
        clean ``string_agg`` of the table gives back in one row: held, as a read that
        packs them is tokenized. So are the rows an ``UPDATE``, ``DELETE`` or ``MERGE``
        changes (``WHERE id IN (SELECT 0 … <bit 0> UNION ALL SELECT 1 … <bit 1> …)``,
        ``out`` its level). Counted over the whole statement (``written_asked``)."""
        asked, levels = (
            out.level_asked() if isinstance(out, Scope) else (out.asked, out.asked_levels)
        )
        if not (asked.pii or asked.unknown):
            return
        self.written_asked = self.written_asked | levels
        if len(self.written_asked) > 1:
            why = (
                f"{what} kept by questions of PII at several levels: which of them"
                " are stored spells a bit per level"
            )
            if why not in self.r.pii_writes:
                self.r.pii_writes.append(why)

    def current_of(self, where: Node | None) -> Lin:
        """``WHERE CURRENT OF c`` writes the row cursor ``c`` stands on: one of the rows
        its query chose, by what chose them (``DECLARE c CURSOR FOR SELECT id FROM
        orders WHERE id = 128 + ascii(...)``, then ``FETCH``). A cursor dbgate did not
        see declared is unknown."""
        if not where or "CurrentOfExpr" not in where:
            return CLEAN
        name = where["CurrentOfExpr"].get("cursor_name", "")
        self.r.current_of.add(name)
        out = self.r.declares.get(name)
        if out is None and self.session is not None:
            out = self.session.cursor(name)
        if out is None:
            return self.unknown(f"WHERE CURRENT OF {name!r}, declared where dbgate did not see it")
        return out.chosen

    def dml_InsertStmt(self, body: Node, outer: Scope | None) -> Output | None:
        scope = Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(
            body["relation"], Scope(None), changes=body.get("onConflictClause") is not None
        )
        rel_name = body["relation"].get("relname", "")
        cols = [c["ResTarget"]["name"] for c in body.get("cols") or ()] or list(item.names)
        ctxs = [self.column_ctx(item, rel_name, c) for c in cols]
        select = body.get("selectStmt")
        source: Output | None = None
        if select is not None:
            sbody = select["SelectStmt"]
            if "valuesLists" in sbody and sbody.get("op", "SETOP_NONE") == "SETOP_NONE":
                for row in sbody["valuesLists"]:
                    for i, e in enumerate(row["List"]["items"]):
                        ctx = (
                            ctxs[i] if i < len(ctxs) else refused("a value beyond the column list")
                        )
                        self.check_write(self.expr(e, scope, ctx), ctx, e)
            else:
                if outer is None:
                    # the statement's own query (``Queries.control``); in a CTE, what
                    # it inserts comes back as rows of a level (RETURNING)
                    self.statement_query = sbody
                out = source = self.select(sbody, scope, OUTPUT)
                # which rows it copies spells the value, even copies into PII
                # columns: their stored tokens tell which rows they were
                self.written_rows_chosen(out.chosen, f"inserts into {rel_name} rows")
                self.written_rows_asked(out, f"inserts into {rel_name} rows")
                plain = sbody.get("op", "SETOP_NONE") == "SETOP_NONE" and "valuesLists" not in sbody
                vals = [t["ResTarget"].get("val") for t in sbody.get("targetList") or ()]
                for i, ctx in enumerate(ctxs):
                    # a column of the select list is its value (SELECT * copies them all)
                    val = vals[i] if plain and i < len(vals) else None
                    if plain and len(vals) == 1 and _a_star(vals[0]):
                        val = vals[0]
                    self.check_write(out.at(i), ctx, val)
                if (len(out.columns) > len(ctxs) or out.tail is not None) and not (
                    self.snap.lookup(rel_name)
                ):
                    # columns dbgate does not know (a relation made since the snapshot)
                    why = f"relation {rel_name} is not in dbgate's schema snapshot"
                    rest = out.tail or CLEAN
                    for lin in out.columns[len(ctxs) :]:
                        rest = rest | lin
                    self.check_write(rest, Ctx(False, why, target=f"{rel_name} ({why})"))
        occ = body.get("onConflictClause")
        target_scope = Scope(scope)
        target_scope.items.append(item)
        if source is not None:
            # RETURNING returns a row per row inserted: what chose or kept the rows
            # inserted (``INSERT ... SELECT email ... WHERE ascii(email) & 4 <> 0``,
            # a copy, allowed) chose or kept these, and a ``count(*)`` of each of
            # several such writes in one statement is a bit each, as it is of a
            # SELECT's or a DELETE's
            target_scope.chosen = target_scope.chosen | source.chosen
            if source.asked.pii or source.asked.unknown:
                target_scope.ask(source.asked, source.asked_levels)
        if occ:
            target_scope.items.append(Item("excluded", item.names, item.cols, item.open, item.rest))
            self.assignments(occ.get("targetList"), target_scope, item, rel_name)
            if occ.get("whereClause"):
                self.choose(occ["whereClause"], target_scope)
            if occ.get("action") == "ONCONFLICT_UPDATE":
                self.written_rows_chosen(target_scope.level_chosen(), f"updates rows of {rel_name}")
        return self.returning(body, target_scope, item)

    def assignments(
        self, targets: list[Node] | None, scope: Scope, item: Item, rel_name: str
    ) -> None:
        for t in targets or ():
            rt = t["ResTarget"]
            val = rt.get("val")
            ctx = self.column_ctx(item, rel_name, rt.get("name", ""))
            if val is not None and "MultiAssignRef" in val:
                src = val["MultiAssignRef"]["source"]
                ctx = (
                    Ctx(False, "a multi-column assignment", target=f"{rel_name}.{rt.get('name')}")
                    if not ctx.allowed
                    else ctx
                )
                self.check_write(self.expr(src, scope, ctx), ctx)
                continue
            self.check_write(self.expr(val, scope, ctx), ctx, val)

    def dml_UpdateStmt(self, body: Node, outer: Scope | None) -> Output | None:
        scope = Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], scope)
        for f in body.get("fromClause") or ():
            self.from_item(f, scope)
        rel_name = body["relation"].get("relname", "")
        self.assignments(body.get("targetList"), scope, item, rel_name)
        self.choose(body.get("whereClause"), scope)
        chosen = scope.level_chosen() | self.current_of(body.get("whereClause"))
        self.written_rows_chosen(chosen, f"updates rows of {rel_name}")
        self.written_rows_asked(scope, f"updates rows of {rel_name}")
        return self.returning(body, scope, item)

    def dml_DeleteStmt(self, body: Node, outer: Scope | None) -> Output | None:
        scope = Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], scope)
        for f in body.get("usingClause") or ():
            self.from_item(f, scope)
        self.choose(body.get("whereClause"), scope)
        rel_name = body["relation"].get("relname", "")
        chosen = scope.level_chosen() | self.current_of(body.get("whereClause"))
        self.written_rows_chosen(chosen, f"deletes rows of {rel_name}")
        self.written_rows_asked(scope, f"deletes rows of {rel_name}")
        return self.returning(body, scope, item, written_only=True)

    def dml_MergeStmt(self, body: Node, outer: Scope | None) -> Output | None:
        scope = Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        item, _rel = self.target_relation(body["relation"], scope)
        self.from_item(body["sourceRelation"], scope)
        self.choose(body.get("joinCondition"), scope)
        rel_name = body["relation"].get("relname", "")
        whens = [w["MergeWhenClause"] for w in body.get("mergeWhenClauses") or ()]
        conditions = [c["condition"] for c in whens if c.get("condition")]
        if len(conditions) > 1:
            # the first WHEN whose condition holds acts on a row: the conditions decide
            # together, as the leaves of an OR (``WHEN MATCHED AND o.id = 1 AND <bit 1>
            # THEN UPDATE ... WHEN MATCHED AND o.id = 2 AND <bit 2> THEN UPDATE ...``
            # asks each row its own question, as ``(o.id = 1 AND ...) OR ...`` does)
            self.choose({"BoolExpr": {"boolop": "OR_EXPR", "args": conditions}}, scope)
        else:
            self.choose(conditions[0] if conditions else None, scope)
        for clause in whens:
            targets = clause.get("targetList") or ()
            values = clause.get("values")
            if values is not None:
                names = [t["ResTarget"]["name"] for t in targets] or list(item.names)
                for i, v in enumerate(values):
                    ctx = (
                        self.column_ctx(item, rel_name, names[i])
                        if i < len(names)
                        else refused("MERGE")
                    )
                    self.check_write(self.expr(v, scope, ctx), ctx, v)
            else:
                self.assignments(list(targets), scope, item, rel_name)
        self.written_rows_chosen(scope.level_chosen(), f"merges into rows of {rel_name}")
        self.written_rows_asked(scope, f"merges into rows of {rel_name}")
        return self.returning(body, scope, item)

    def note_copy(self, out: Output, what: str) -> None:
        self.written_rows_asked(out, what.split(" copies", 1)[0] + " stores rows")
        lin = out.union()
        if lin.pii or lin.unknown:
            self.r.pii_writes.append(what)
            if lin.token:
                self.r.token_writes.append(what)
        self.r.param_writes |= lin.params


def _a_copy(value: Node | None) -> bool:
    """A value written as it is: a column, a constant or a parameter (cast or not, to a
    type that keeps it whole: ``email::varchar(1)`` is its first character)."""
    while value is not None and "TypeCast" in value:
        if not lossless_cast(value["TypeCast"].get("typeName") or {}):
            return False
        value = value["TypeCast"].get("arg")
    return value is not None and ("ColumnRef" in value or "A_Const" in value or "ParamRef" in value)


def _a_star(value: Node | None) -> bool:
    if value is None or "ColumnRef" not in value:
        return False
    fields = value["ColumnRef"].get("fields") or ()
    return bool(fields) and "A_Star" in fields[-1]
