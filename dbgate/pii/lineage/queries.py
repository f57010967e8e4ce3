"""SELECT, wherever it nests: set operations, VALUES, target lists and ``*``, CTEs.

Values flow from the target list into the output. The clauses that only choose rows
(WHERE, HAVING, GROUP BY, ORDER BY, LIMIT ...) carry none; they are walked for tokens,
and WHERE and HAVING (and JOIN ... ON, in :mod:`.sources`) for predicates that turn the
choice into a value (:meth:`Queries.choose`).
"""

from __future__ import annotations

from dbgate.pii.lin import CLEAN, Lin
from dbgate.pii.lineage.context import FILTER, OUTPUT, Ctx
from dbgate.pii.lineage.nodes import Node, one, strs
from dbgate.pii.lineage.predicates import (
    aggregates,
    all_but_each,
    asks_each_row,
    bare_column,
    encloses,
    kinds,
    multiplies,
    sublink_of,
    whole_column,
    whole_equality,
    whole_value_guess,
)
from dbgate.pii.lineage.results import Output
from dbgate.pii.lineage.scope import Item, Ref, Scope
from dbgate.pii.lineage.state import WalkState
from dbgate.policy.walk.nodes import relations_read

#: A branch of a set operation that compares rows: its level, and per output its
#: lineage, the column references it read and whether it is a column as it is
Branch = tuple[Scope, list[tuple[Lin, list[Ref], bool]]]


class Queries(WalkState):
    """SELECT and the clauses around it."""

    def select(
        self,
        body: Node,
        outer: Scope | None,
        ctx: Ctx,
        distinct: bool = False,
        rows: list[Branch] | None = None,
    ) -> Output:
        self.depth += 1
        try:
            if self.depth > 200:
                return Output(tail=self.unknown("statement nested too deeply"))
            return self._select(body, outer, ctx, distinct, rows)
        finally:
            self.depth -= 1

    def _select(
        self,
        body: Node,
        outer: Scope | None,
        ctx: Ctx,
        distinct: bool = False,
        rows: list[Branch] | None = None,
    ) -> Output:
        """``distinct``: a branch of a set operation that merges equal rows (``UNION``,
        ``INTERSECT``, ``EXCEPT`` without ``ALL``), as a plain DISTINCT does; ``rows``:
        where a branch of a set operation that compares rows lists, per output, its
        lineage and the column references it read (``Queries.compared``)."""
        scope = Scope(outer)
        if body.get("withClause"):
            self.with_clause(body["withClause"], scope)
        op = body.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            # every set operation but UNION ALL compares rows: UNION, INTERSECT and
            # EXCEPT merge equal rows, as DISTINCT does, and INTERSECT and EXCEPT (ALL
            # too) keep a row of one branch by the rows of the other
            merges = not body.get("all")
            compares = merges or op != "SETOP_UNION"
            branches: list[Branch] | None = [] if compares else rows
            left = self.select(body["larg"], scope, ctx, distinct or merges, branches)
            right = self.select(body["rarg"], scope, ctx, distinct or merges, branches)
            merged = left.merged(right)
            if compares and branches:
                self.compared(branches, merged, scope)
            if compares and rows is not None:
                # to a set operation around this one, this is one branch: its rows are
                # those of its level, their values ``merged`` (each level compares its
                # own two sides once, however deep the nesting)
                width = len(merged.columns)
                columns: list[tuple[Lin, list[Ref], bool]] = []
                for i in range(width):
                    refs: list[Ref] = []
                    whole = True
                    for _level, branch in branches or ():
                        if i < len(branch):
                            refs.extend(branch[i][1])
                            whole = whole and branch[i][2]
                    columns.append((merged.columns[i], kinds(refs, scope), whole))
                rows.append((scope, columns))
            # ORDER BY 2 / ORDER BY name of a set operation: its outputs, by value
            self.control(
                body,
                scope,
                [(n, c, None) for n, c in zip(merged.names, merged.columns, strict=False)],
            )
            return scope.mark(merged)
        if "valuesLists" in body:
            out: Output | None = None
            for row in body["valuesLists"]:
                items = row["List"]["items"]
                row_out = Output(
                    [self.expr(e, scope, ctx) for e in items],
                    [f"column{i + 1}" for i in range(len(items))],
                )
                out = row_out if out is None else out.merged(row_out)
            values = out or Output()
            if rows is not None:
                # constants and sub-selects: no column of a row to relate
                rows.append((scope, [(lin, [], False) for lin in values.columns]))
            # ORDER BY 2 / column2 of a VALUES list: its outputs, by value
            self.control(
                body,
                scope,
                [(n, c, None) for n, c in zip(values.names, values.columns, strict=False)],
            )
            return scope.mark(values)
        for item in body.get("fromClause") or ():
            scope.stars.append(self.from_item(item, scope))
        if body.get("windowClause"):
            # before the select list, whose window functions name them (``OVER w``)
            scope.windows = {}
            scope.window_defs = {}
            asked = scope.asked
            for wdef in body["windowClause"]:
                wd = wdef.get("WindowDef") or wdef
                scope.windows[wd.get("name") or ""] = self.window(wd, scope)
                scope.window_defs[wd.get("name") or ""] = wd
            if scope.asked is not asked:
                # a window's keys keep none of the level's rows (``Scope.aggregate_asked``)
                scope.aggregate_asked = scope.aggregate_asked | scope.asked
                scope.asked = asked
        out = Output()
        # a plain DISTINCT groups by every output: each chooses like a GROUP BY item
        distinct = distinct or body.get("distinctClause") == [{}]
        # per output column: (name, lineage, the column references met walking it), for
        # ORDER BY / GROUP BY / DISTINCT ON items that name an output by position or alias
        targets: list[tuple[str, Lin, list[Ref] | None]] = []
        bare: list[bool] = []  # per output column: its target is a column as it is
        whole: list[bool] = []  # ... and not cut by its cast (``whole_column``)
        # the outputs holding an aggregate or window function that packs rows, or
        # that reads them in their order (``Scope.mark``; -1: the tail)
        packed: list[tuple[int, bool, bool]] = []
        counted: list[int] = []  # the outputs holding a count (``Scope.multiplied``)
        for target in body.get("targetList") or ():
            rt = target["ResTarget"]
            n = len(out.columns)
            saved, self.refs = self.refs, []
            refs = self.refs
            packs, sorts, counts = scope.packs, scope.sorts, scope.counts
            try:
                self.target(rt.get("val"), rt.get("name"), scope, ctx, out)
            finally:
                self.refs = saved
            if saved is not None:
                saved.extend(refs)
            if out.tail is None:
                stored = self.stored_columns(rt.get("val"), scope, len(out.columns) - n)
                if stored:
                    out.stored = out.stored | frozenset(n + k for k in stored)
            if scope.packs != packs or scope.sorts != sorts:
                flags = (scope.packs != packs, scope.sorts != sorts)
                packed.extend((k, *flags) for k in range(n, len(out.columns)))
                if out.tail is not None:
                    packed.append((-1, *flags))
            if scope.counts != counts:
                counted.extend(range(n, len(out.columns)))
                if out.tail is not None:
                    counted.append(-1)
            tail = out.tail or CLEAN
            lin = tail
            for k in range(n, len(out.columns)):
                lin = lin | out.columns[k]
                targets.append((out.names[k], out.columns[k] | tail, refs))
                bare.append(bare_column(rt.get("val")))
                whole.append(whole_column(rt.get("val")))
            if distinct:
                self.chose(lin, refs)
                # made distinct by sorting, the rows come out in their values' order
                self.orders(lin, scope)
        if rows is not None:
            rows.append(
                (
                    scope,
                    [
                        (lin, refs or [], b)
                        for (_n, lin, refs), b in zip(targets, bare, strict=True)
                    ],
                )
            )
        self.control(body, scope, targets, whole)
        if counted and scope.multiplied:
            # a count of rows each kept row brings as many of as the text chose packs
            # them like a sum of powers of two (``Scope.multiplied``)
            packed.extend((k, True, False) for k in counted)
        if body.get("lockingClause"):
            self.locks_chosen(scope)
        # last: a correlated predicate anywhere below may have chosen this level's rows
        return scope.mark(out, aggregates(body), packed)

    def compared(self, branches: list[Branch], merged: Output, scope: Scope) -> None:
        """A set operation that compares rows (all but UNION ALL) keeps or merges a
        branch's rows by the values of the others, output by output, as ``a = b``
        conjuncts would: ``SELECT g FROM generate_series(0, 255) g EXCEPT SELECT
        ascii(email) ...`` keeps all numbers but the code, and ``SELECT g % ascii(...)
        FROM generate_series(1, 300) g UNION SELECT 0`` as many rows as the code. So a
        position whose values carry PII (either branch's) chooses by it the rows of
        each branch whose output there reads clean columns (``g``), as ``choose``
        judges a predicate: two PII columns (``SELECT email ... EXCEPT SELECT
        contact_email ...``) and clean keys change nothing, and a table row kept by
        its own value (``SELECT 1 INTERSECT SELECT ascii(email) & 1 FROM customers
        WHERE id = 42``) answers one bit, which a sub-select standing as a value turns
        into a value. The branches' rows were marked as they were walked, so what
        this chooses or asks of them marks the set operation's own level (every
        output, and a ``count(*)`` over it)."""
        levels: dict[int, tuple[Scope, Lin, Lin]] = {}
        for level, columns in branches:
            levels.setdefault(id(level), (level, level.chosen, level.asked))
            for _lin, refs, _whole in columns:
                for ref in refs:
                    levels.setdefault(id(ref[0]), (ref[0], ref[0].chosen, ref[0].asked))
        for i, lin in enumerate(merged.columns):
            if not (lin.pii or lin.unknown or lin.params):
                continue
            at = [columns[i][0] if i < len(columns) else CLEAN for _level, columns in branches]
            # what the branches before and after each bring here (a UNION ALL chain
            # under an INTERSECT lists all its branches)
            rest = all_but_each(at)
            for k, (level, columns) in enumerate(branches):
                if i >= len(columns) or not columns[i][1]:
                    continue
                _own, refs, whole = columns[i]
                others = rest[k]
                if others.pii or others.unknown or others.params:
                    # compared with PII another branch brings: not the row's own value
                    # alone, and PII with PII (``email`` with ``contact_email``) is free
                    self.chose(lin, refs, True, None, whole)
                else:
                    # the row's own value with constants or clean columns: as a WHERE
                    # of the branch would (a whole value is a guess)
                    self.chose(lin, refs, False, level, whole, whole)
        # A row is compared whole: a position where PII meets a value without any
        # (``SELECT g, 0 ... EXCEPT SELECT 5, ascii(email) & 1 ...``) asks a question,
        # and its answer keeps or drops the rows of the other branches by every column
        # they return (``g``), as ``(g, 0) NOT IN (SELECT ...)`` would
        asks: list[Lin] = [CLEAN] * len(branches)
        for i, lin in enumerate(merged.columns):
            if not (lin.pii or lin.unknown):
                continue
            cells = [
                columns[i] if i < len(columns) else (CLEAN, [], False) for _l, columns in branches
            ]
            carry = [cell[0].pii or cell[0].unknown for cell in cells]
            if all(carry):
                continue  # PII with PII only: free
            # a whole value with constants only is a guess, not a question
            if not any(
                (cell[1] and not has) or (has and not cell[2])
                for cell, has in zip(cells, carry, strict=True)
            ):
                continue
            asks = [a | cell[0] for a, cell in zip(asks, cells, strict=True)]
        if any(a.pii or a.unknown for a in asks):
            rest = all_but_each(asks)
            for k, (_level, columns) in enumerate(branches):
                others = rest[k]
                refs = [ref for column in columns for ref in column[1]]
                if refs and (others.pii or others.unknown):
                    whole = all(column[2] for column in columns)
                    self.chose(Lin(others.entities, others.unknown), refs, True, None, whole)
        for level, chosen, asked in levels.values():
            if level is scope or encloses(level, scope):
                continue
            if level.chosen != chosen:
                scope.chosen = scope.chosen | level.chosen
            if level.asked != asked:
                scope.ask(level.asked, level.asked_levels)

    def locks_chosen(self, scope: Scope) -> None:
        """``FOR SHARE`` (``KEY SHARE``, ``NO KEY UPDATE``, ``UPDATE``) locks the rows
        of this level until the transaction ends, and another session finds them
        (``SKIP LOCKED``, ``NOWAIT``): locked rows that PII chose (``WHERE o.id = 128 +
        ascii(...)``) spell the value there, as the rows a write changes do
        (``Writes.written_rows_chosen``), whatever this statement returns."""
        chosen = scope.level_chosen()
        self.r.param_writes |= chosen.params
        if chosen.pii or chosen.unknown:
            why = (
                "locks rows chosen by a value derived from PII"
                f" ({', '.join(sorted(chosen.entities)) or 'unknown'}): another session"
                " finds which rows they are"
            )
            if why not in self.r.pii_writes:
                self.r.pii_writes.append(why)

    def control(
        self,
        body: Node,
        scope: Scope,
        targets: list[tuple[str, Lin, list[Ref] | None]] = (),  # type: ignore[assignment]
        whole: list[bool] | None = None,
    ) -> None:
        """Clauses that choose rows but carry no values of their own.

        Choosing rows is allowed, but each of these can make the choice spell a value,
        so each is walked as ``choose`` walks a predicate: WHERE and HAVING; GROUP BY
        (``GROUP BY g % ascii(...)`` makes as many groups as the code, which a
        ``count(*)`` over them returns); DISTINCT ON, and ORDER BY, which a LIMIT,
        OFFSET, DISTINCT ON, an outer level or a cursor's FETCH may cut (``ORDER BY
        abs(g - ascii(...)) LIMIT 1`` returns the code itself); the windows' PARTITION
        BY and ORDER BY. Items naming an output by position or alias choose by that
        output. LIMIT and OFFSET, and a window frame's offsets, choose by their value
        alone: PII or anything unknown there marks the level.
        """
        self.choose(body.get("whereClause"), scope, joins=True)
        # HAVING compares aggregates of this level's rows, which carry what chose or
        # sized them (``EXISTS (SELECT 1 FROM customers c, generate_series(1,
        # ascii(c.email)) WHERE c.id = 42 HAVING count(*) >= g)``: count(*) is the code)
        # what HAVING's own aggregates ask (``count(*) FILTER (WHERE email LIKE 'a%')
        # > 0``) keeps or drops this level's groups, which a window over them reads
        aside, scope.aggregate_asked = scope.aggregate_asked, CLEAN
        self.choose(body.get("havingClause"), scope, aggregated=True)
        if scope.aggregate_asked is not CLEAN:
            scope.asked = scope.asked | scope.aggregate_asked
        scope.aggregate_asked = aside | scope.aggregate_asked
        for item in body.get("groupClause") or ():
            # a column as it is groups whole values (``GROUP BY email``: a group per
            # returned row), as a window's PARTITION BY does, and asks no row a question
            if self.output_name_only(item, scope, targets):
                key = CLEAN  # the output it names chooses (``choose_output``)
            else:
                key = self.choose(item, scope, whole=whole_column(item))
            hits = self.choose_output(item, scope, targets, whole)
            # grouped by sorting, the rows come out in the keys' order
            for k in hits:
                key = key | targets[k][1]
            self.orders(key, scope)
        # A nested level's order is a value of its rows (below): not the statement's
        # own query (a top-level SELECT, an INSERT's), whose order only orders
        nested = scope.parent is not None and body is not self.statement_query
        # what kept rows before DISTINCT ON and ORDER BY, which come after this
        # level's aggregates and windows (``Scope.pack``)
        scope.kept = scope.asked
        distinct_on = [d for d in body.get("distinctClause") or () if d]
        for item in distinct_on:
            key = CLEAN if self.output_name_only(item, scope, targets) else self.choose(item, scope)
            hits = self.choose_output(item, scope, targets, whole)
            if nested:
                self.ordered_by(item, key, hits, targets, whole, scope)
        for key in ("limitCount", "limitOffset"):
            if body.get(key):
                self.chosen_by(self.expr(body[key], scope, FILTER), scope)
        # Every ORDER BY may keep only some rows in its order: a sub-select's order
        # survives into the level above, whose LIMIT or DISTINCT ON cuts it (``SELECT *
        # FROM (... ORDER BY abs(g - ascii(...))) s LIMIT 1``), and a top-level one is cut
        # by ``FETCH 1`` from a cursor or an Execute with a row limit on a portal, which
        # the text does not show. So each ORDER BY chooses (a PII key that relates no
        # other row source, ``ORDER BY email``, still only orders).
        for item in body.get("sortClause") or ():
            key = CLEAN if self.output_name_only(item, scope, targets) else self.choose(item, scope)
            hits = self.choose_output(item, scope, targets, whole)
            if nested:
                self.ordered_by(item, key, hits, targets, whole, scope)

    @staticmethod
    def output_name_only(
        item: Node, scope: Scope, targets: list[tuple[str, Lin, list[Ref] | None]]
    ) -> bool:
        """Whether an ORDER BY, DISTINCT ON or GROUP BY item is a bare name that only an
        output is called (``ORDER BY spent`` of ``sum(total) AS spent``, ``GROUP BY
        month`` of ``date_trunc('month', created_at) AS month``): PostgreSQL reads it as
        that output, whose value ``choose_output`` chooses by; read as an input column
        it would resolve to nothing, an unknown value. A name a FROM entry of this level
        or an outer one may hold (an open one may hold any) is read both ways."""
        node = item.get("SortBy", {}).get("node", item) if "SortBy" in item else item
        fields = (node.get("ColumnRef") or {}).get("fields") if isinstance(node, dict) else None
        if not fields or len(fields) != 1 or "String" not in fields[0]:
            return False
        name = fields[0]["String"].get("sval")
        if not any(t[0] == name for t in targets):
            return False
        level: Scope | None = scope
        while level is not None:
            for it in level.items:
                if it.open or it.alias == name or name in it.names:
                    return False
            level = level.parent
        return True

    def ordered_by(
        self,
        item: Node,
        key: Lin,
        hits: list[int],
        targets: list[tuple[str, Lin, list[Ref] | None]],
        whole: list[bool] | None,
        scope: Scope,
    ) -> None:
        """An ORDER BY or DISTINCT ON item of a nested level (a sub-select, a CTE, a
        set operation's branch) whose key is computed from PII chooses that level's
        rows by it, even from a table row's own values: which rows come first, which a
        LIMIT, an OFFSET, WITH TIES, DISTINCT ON or the level above keeps (its LIMIT,
        an aggregate or a window reading the rows in that order), is decided by every
        row's key compared with the others', not by each row alone. ``(SELECT id FROM
        customers ORDER BY ascii(substr(email, i, 1)) & b, id <> 1 LIMIT 1)`` is 1
        exactly where customer 1's bit is 0, and a few hundred such derived tables
        cross-joined spelled the e-mail in one returned row. A column as it is
        (``ORDER BY email``, ``DISTINCT ON (email)``) orders every level alike: stacked,
        it says nothing more than the statement's own ORDER BY email, and stays clean
        (``whole``: per output column, whether it is one, for ``ORDER BY 2``)."""
        lin = CLEAN if whole_column(item.get("SortBy", {}).get("node", item)) else key
        order = key
        for k in hits:
            order = order | targets[k][1]
            if not (whole is not None and k < len(whole) and whole[k]):
                lin = lin | targets[k][1]
        if lin.pii or lin.unknown:
            scope.chosen = scope.chosen | Lin(lin.entities, lin.unknown)
        # even by a whole column, the order is a value of whatever packs the rows in
        # it above (``string_agg`` over ``(SELECT id ... ORDER BY email) s``)
        self.orders(order, scope)

    @staticmethod
    def orders(lin: Lin, scope: Scope) -> None:
        """The rows of this level come out in an order ``lin`` chose (``Scope.ordered``)."""
        if lin.pii or lin.unknown:
            scope.ordered = scope.ordered | Lin(lin.entities, lin.unknown)

    def choose_output(
        self,
        item: Node,
        scope: Scope,
        targets: list[tuple[str, Lin, list[Ref] | None]],
        whole: list[bool] | None = None,
    ) -> list[int]:
        """An ORDER BY, GROUP BY or DISTINCT ON item that names an output column — by
        its position (``ORDER BY 2``) or by its name or alias (``ORDER BY x``; GROUP BY
        reads a name as an input column first, so both are taken) — chooses by that
        output's value, which ``choose`` on the item itself (a constant, or a name no
        input has) does not see. Returns the positions of the outputs it names."""
        if not targets:
            return []
        node = item.get("SortBy", {}).get("node", item) if "SortBy" in item else item
        # ROLLUP (2), CUBE (b), GROUPING SETS ((1, b)) name outputs too
        nested = node.get("GroupingSet", {}).get("content") or node.get("RowExpr", {}).get("args")
        if nested:
            out: list[int] = []
            for sub in nested:
                out.extend(self.choose_output(sub, scope, targets, whole))
            return out
        hits: list[int] = []
        if "A_Const" in node:
            # the position is a literal: another text of this shape names another output
            self.r.reads_literals = True
            ival = node["A_Const"].get("ival")
            if isinstance(ival, dict):
                k = ival.get("ival", 0)
                if isinstance(k, int) and 1 <= k <= len(targets):
                    hits.append(k - 1)
        elif "ColumnRef" in node:
            fields = node["ColumnRef"].get("fields") or ()
            if len(fields) == 1 and "String" in fields[0]:
                name = fields[0]["String"].get("sval")
                hits.extend(k for k, t in enumerate(targets) if t[0] == name)
        for k in hits:
            _name, lin, refs = targets[k]
            if refs is None:  # an output of a set operation: no row to relate it with
                self.chosen_by(lin, scope)
            else:
                # as the output's expression written in its place would (``GROUP BY 1``
                # of ``ascii(email) & 4`` keeps groups by each row's own PII, which a
                # ``string_agg`` beside it packs); a column as it is, a whole value
                guess = whole is not None and k < len(whole) and whole[k]
                self.chose(lin, refs, scope=scope, guess=guess)
        return hits

    def window(self, wdef: Node, scope: Scope) -> Lin:
        """A window's PARTITION BY and ORDER BY choose like predicates; its frame's
        offsets (``ROWS BETWEEN CURRENT ROW AND ascii(...) FOLLOWING``) by value.

        Returns the PII they put in the value of a window function over it: every
        one of them (``rank()``, ``row_number()``, ``first_value(id)``, ``lag(id)``,
        ``sum(1)``, ``count(*)``) is computed from the order and the partitions, so
        over a table's rows ``rank() OVER (ORDER BY ascii(substr(email, 1, 1)) & 4)``
        is 1 exactly where the bit is 0, and a select list of a few hundred of them
        spells every row's e-mail, each row ranked among the others (a LIMIT after
        them returns one). A PARTITION BY of a column as it is groups rows by whole
        values, as ``GROUP BY email`` does, and asks no row a question of its own
        (``Queries.chose``): ``row_number() OVER (PARTITION BY email ORDER BY
        created_at)`` stays a number, in a sub-select too (``... WHERE rn = 1``). A window named (``OVER w``, ``OVER (w
        ORDER BY ...)``) adds what the WINDOW clause's keys put there."""
        carried = CLEAN
        keys = CLEAN
        for item in wdef.get("partitionClause") or ():
            whole = whole_column(item)
            lin = self.choose(item, scope, whole=whole)
            keys = keys | lin
            if not whole:
                carried = carried | lin
        for item in wdef.get("orderClause") or ():
            carried = carried | self.choose(item, scope)
        # the rows come out of a window sorted by its keys (for the level above)
        self.orders(keys | carried, scope)
        for key in ("startOffset", "endOffset"):
            if wdef.get(key):
                self.chosen_by(self.expr(wdef[key], scope, FILTER), scope)
        named = wdef.get("refname") or (
            wdef.get("name")
            if not (wdef.get("partitionClause") or wdef.get("orderClause"))
            else None
        )
        if named and scope.windows is not None:
            carried = carried | scope.windows.get(named, CLEAN)
        if carried.pii or carried.unknown or carried.params:
            return Lin(carried.entities, carried.unknown, carried.params)
        return CLEAN

    def chosen_by(self, lin: Lin, scope: Scope) -> None:
        """Rows of this level were chosen by the value of ``lin`` itself (a bind
        parameter's too: it may carry a token, resolved to a value)."""
        if lin.pii or lin.unknown or lin.params:
            scope.chosen = scope.chosen | Lin(lin.entities, lin.unknown, lin.params)

    def choose(
        self,
        node: Node | None,
        scope: Scope,
        aggregated: bool = False,
        rows: bool = True,
        whole: bool = False,
        joins: bool = False,
    ) -> Lin:
        """Walk a clause that chooses rows (WHERE, HAVING, JOIN ... ON, FILTER).

        Choosing rows is allowed, but a choice can be made to spell a value: ``SELECT
        g FROM generate_series(1, 20000) g WHERE g IN (SELECT n * 256 +
        ascii(substr(full_name, n, 1)) ...)`` returns numbers whose low byte is the
        name, and any column of the chosen rows (an ordinality, a lateral copy of
        ``g``, a lookup table's label, ``count(*)`` of ``g < ascii(...)``) tells which
        rows they were. So each predicate (a leaf under AND / OR / NOT) is walked like
        a value: when PII (or something unknown) flows into it, every column it
        compares that is not PII marks the query level that column comes from, and
        all outputs of that level get the predicate's PII (``Scope.mark``). A whole
        level rather than the columns, because columns already copied elsewhere (a
        lateral sub-select, a correlated sub-select) were walked before the WHERE.

        Nothing new is marked when the predicate compares PII only with constants,
        parameters or other PII columns (``email = $1``, ``email LIKE 'a%'``,
        ``c.email = o.contact_email``), nor when it reads one column of one table row
        (``birth_date < now() - interval '18 years'``, ``get_email(id) IS NULL``): a
        row chosen by its own value answers one bit, the same question of every row.
        PII with a clean column of the row (or the whole row), or with a built-in
        whose value changes per row (``random()``), asks each row another question
        (``ascii(substr(email, id / 8 + 1, 1)) & (1 << id % 8) <> 0``, ``birth_date <
        created_at``): over rows that hold copies of one value (an agent allowed to
        write can make them), the rows kept spell it, one bit per row — so that
        relates, and marks the row's level, unless it is a whole-value equality of
        two columns (``email = backup_email``: one guess per row, as a stored guess
        is). PII columns of one row with each other (``first_name || ' ' || last_name
        LIKE 'J%'``) still answer one question per row. That holds for a table's rows only (a sub-select's row may
        pair a customer with every number), and not when a token or an opaque function
        given no column (``met_opaque``) brings a value from elsewhere.
        """
        if node is None:
            return CLEAN
        if "BoolExpr" in node and node["BoolExpr"].get("boolop") == "AND_EXPR":
            # the conjuncts each keep or drop rows on their own; an OR or a NOT is one
            # predicate, its leaves deciding together which rows it keeps: ``(id = 1
            # AND ascii(substr(email, 1, 1)) & 1 <> 0) OR (id = 2 AND ... & 2 <> 0)``,
            # or ``(id <> 1 OR ... & 1 = 0) AND (id <> 2 OR ...)``, asks each row
            # another question, as ``... & (1 << id) ...`` does
            out = CLEAN
            for arg in node["BoolExpr"].get("args") or ():
                out = out | self.choose(arg, scope, aggregated, rows, joins=joins)
            return out
        saved, self.refs = self.refs, []
        refs = self.refs
        sublinks = self.sublinks
        # a sub-select standing as the whole predicate (``EXISTS (...)``, ``x IN
        # (...)``) only keeps or drops this level's rows (``rows``: not an aggregate's
        # FILTER or argument, nor an outer join's ON, where what it keeps is a value);
        # see ``Expressions.e_SubLink``
        saved_leaf = self.leaf_sublink
        self.leaf_sublink = sublink_of(node) if rows else None
        try:
            lin = self.expr(node, scope, FILTER)
        finally:
            self.refs = saved
            self.leaf_sublink = saved_leaf
        if saved is not None:
            # the columns of outer rows this choice reads (a correlated sub-select's
            # WHERE) belong to the predicate around it too: ``EXISTS (SELECT 1 WHERE
            # ascii(substr(o.email, o.id / 8 + 1, 1)) & (1 << o.id % 8) <> 0)`` asks
            # each row ``o`` another question, as the same test in o's own WHERE does
            saved.extend(ref for ref in refs if encloses(ref[0], scope))
        # PII a sub-select brings (``c.id <= (SELECT count(*) FROM s)``, s sized by
        # PII) is not the referenced row's own: no row is chosen by its own values
        elsewhere = self.sublinks != sublinks
        if aggregated:
            chosen = scope.level_chosen()
            if chosen.pii or chosen.unknown or chosen.params:
                # from this level's rows, not from the row a reference names: no one
                # table row is chosen by its own values here (``HAVING count(*) >= o.id``)
                lin = lin | Lin(chosen.entities, chosen.unknown, chosen.params)
                elsewhere = True
        # ``whole``: a column as it is that groups rows by their whole values (a
        # window's PARTITION BY email): no question of a row, as a guess is not
        guess = whole or whole_value_guess(node)
        self.chose(lin, refs, elsewhere, scope, whole_equality(node), guess)
        if joins and not scope.multiplied and multiplies(node, refs, scope):
            scope.multiplied = True
        return lin

    def chose(
        self,
        lin: Lin,
        refs: list[Ref],
        elsewhere: bool = False,
        scope: Scope | None = None,
        equality: bool = False,
        guess: bool = False,
    ) -> None:
        """Mark the levels of the clean columns a choice of lineage ``lin`` related
        with it (``refs``: the column references met walking it); see ``choose``.
        ``scope``: the level whose rows the choice keeps or drops; ``equality``: the
        choice is a whole-value equality of two columns (``whole_equality``);
        ``guess``: of a column with constants (``whole_value_guess``)."""
        if not (lin.pii or lin.unknown or lin.params):
            return
        if not refs and scope is not None and scope.parent is not None:
            # no column of this level in it (``EXISTS (SELECT 1 WHERE ascii(c.email) ...)``
            # of an outer row): in a nested query that is the rows of this level, kept
            # or not per outer row — a value of it, as below
            scope.chosen = scope.chosen | Lin(lin.entities, lin.unknown, lin.params)
            return
        row = refs[0][1] if refs else None
        own_row = row is not None and row.table and all(ref[1] is row for ref in refs)
        if own_row and scope is not None and refs[0][0] is not scope:
            # the row is an outer level's (a correlated sub-select, a lateral one): what
            # is chosen is this level's rows, whose presence is a value of that outer
            # row — ``(SELECT 1 WHERE ascii(c.email) & 4 <> 0)`` is one bit of it, and
            # a select list holds as many as it likes
            scope.chosen = scope.chosen | Lin(lin.entities, lin.unknown, lin.params)
            return
        if own_row and not lin.token and not elsewhere:
            if (lin.pii or lin.unknown) and not (equality or guess) and asks_each_row(refs):
                # each row asked another question of its own PII (see ``choose``)
                level = refs[0][0]
                level.chosen = level.chosen | Lin(lin.entities, lin.unknown, lin.params)
                return
            if (lin.pii or lin.unknown) and scope is not None and not guess:
                # one bit per row, but a sub-select that stands as a value, or an
                # aggregate over these rows, makes it a value (``Scope.mark``)
                refs[0][0].ask(lin)
            if not lin.params:
                return  # one table row chosen by its own value
            # a bind parameter may carry a token, a value from elsewhere, like a token
            # literal (``WHERE id = ascii($1)``): its rows carry the parameter, which
            # the results are tokenized for when a Bind's value there was a token
            chosen = Lin(params=lin.params)
        else:
            chosen = Lin(lin.entities, lin.unknown, lin.params)
        for level, item, ref, column in refs:
            if not (ref.pii or ref.unknown):
                level.chosen = level.chosen | chosen
            elif item.schema is not None or column in item.stored:
                # (a sub-select's or CTE's column that is a table row's stored column as
                # it is holds what that row holds, as a view's does: ``Item.stored``)
                if scope is not None and not (guess or equality or lin.token):
                    # a stored row kept by its PII that is not one table's own (a view's,
                    # a name several schemas hold): one bit per row, as above, that a
                    # sub-select standing as a value turns into a value
                    level.ask(Lin(lin.entities, lin.unknown))
            else:
                # a PII column of a row some query made (a sub-select, CTE, VALUES,
                # function) may have been paired there with clean values, its own or a
                # lateral neighbour's: ``SELECT g FROM (SELECT g, g - ascii(...) d FROM
                # generate_series(0, 300) g, ...) s WHERE d = 0`` chooses the row whose
                # g is the code
                level.chosen = level.chosen | chosen

    def target(
        self, val: Node | None, name: str | None, scope: Scope, ctx: Ctx, out: Output
    ) -> None:
        if val is not None and "ColumnRef" in val:
            fields = val["ColumnRef"]["fields"]
            if "A_Star" in fields[-1]:
                self.star(strs(fields[:-1]), scope, out)
                return
        lin = self.expr(val, scope, ctx)
        out.add(lin, name or self.name_of(val))

    def stored_columns(self, val: Node | None, scope: Scope, width: int) -> list[int]:
        """Of the ``width`` outputs a select-list item added, those that are a stored
        column of a table row of this level as it is (``email``, ``c.email``,
        ``public.customers.email``, ``c.*``, ``*``), or such a column a sub-select or CTE of this level passes on
        (``Item.stored``): no cast, no expression, no outer level's column, no name
        two FROM entries hold."""
        if not isinstance(val, dict) or "ColumnRef" not in val:
            return []
        fields = val["ColumnRef"].get("fields") or ()
        names = strs(fields)
        if "A_Star" in fields[-1]:
            if len(names) > 1:
                hit = self.lookup(names[:-1], scope)
                items = [hit[0]] if hit is not None and hit[1] is scope else None
            else:
                items = list(scope.stars)
            if not items or any(it.open for it in items):
                return []
            out: list[int] = []
            k = 0
            for it in items:
                for name in it.names:
                    if it.table or (name in it.stored and it.names.count(name) == 1):
                        out.append(k)
                    k += 1
            return out if k == width else []
        if width != 1 or len(names) not in (1, 2, 3):
            return []
        name = names[-1]
        if len(names) > 1:  # c.email, public.customers.email (as BI tools write it)
            hit = self.lookup(names[:-1], scope)
            if hit is None or hit[1] is not scope:
                return []
            item = hit[0]
        else:
            holders = [it for it in scope.items if name in it.names or it.open]
            if len(holders) != 1 or holders[0].open:
                return []
            item = holders[0]
        if item.names.count(name) != 1:
            return []
        return [0] if item.table or name in item.stored else []

    @staticmethod
    def name_of(val: Node | None) -> str:
        if not val:
            return "?column?"
        kind, body = one(val)
        if kind == "ColumnRef":
            return strs(body["fields"])[-1]
        if kind == "FuncCall":
            return strs(body["funcname"])[-1]
        if kind == "TypeCast":
            return Queries.name_of(body.get("arg"))
        return "?column?"

    def star(self, qualifier: list[str], scope: Scope, out: Output) -> None:
        if not qualifier:
            if not scope.stars:
                out.tail = (out.tail or CLEAN) | self.unknown("SELECT * without FROM")
            for item in scope.stars:
                self.expand(item, out)
            return
        item = self.find_item(qualifier, scope)
        if item is None:
            out.tail = (out.tail or CLEAN) | self.unknown(
                f"{'.'.join(qualifier)}.* of an unknown relation"
            )
            return
        self.expand(item, out)

    def expand(self, item: Item, out: Output) -> None:
        self.saw(item.whole())
        for name, lin in zip(item.names, item.cols, strict=True):
            out.add(lin, name)
        if item.open:
            out.tail = (out.tail or CLEAN) | item.rest

    def with_clause(self, wc: Node, scope: Scope) -> None:
        recursive = bool(wc.get("recursive"))
        ctes = [c["CommonTableExpr"] for c in wc.get("ctes") or ()]
        if recursive:
            ctes = self.cte_order(ctes, scope)
        for cte in ctes:
            name = cte["ctename"]
            colnames = strs(cte.get("aliascolnames"))
            query = cte["ctequery"]
            kind, body = one(query)
            if recursive and kind == "SelectStmt" and body.get("op", "SETOP_NONE") != "SETOP_NONE":
                # UNION without ALL stops the recursion when a step finds no row it has
                # not seen: merged as a set operation's (``Queries.compared``), so
                # ``SELECT 0 UNION SELECT (n + 1) % ascii(...) FROM t`` has as many rows
                # as the code
                merges = not body.get("all")
                branches: list[Branch] | None = [] if merges else None
                seed = self.select(body["larg"], scope, OUTPUT, merges, branches)
                scope.ctes[name] = (seed, colnames)
                current = seed
                for _ in range(8):
                    step = self.select(body["rarg"], scope, OUTPUT, merges, branches)
                    # what chose, kept or ordered the step's rows too, not only its
                    # columns: ``SELECT substr(e, 2) FROM t WHERE e <> ''`` adds no
                    # lineage to ``e`` but stops where the value ends (a count of it)
                    nxt = current.merged(step)
                    settled = nxt == current
                    current = nxt
                    scope.ctes[name] = (current, colnames)
                    if settled:
                        break
                else:
                    current = Output(tail=self.unknown(f"recursive CTE {name!r} did not settle"))
                if branches:
                    level = Scope(scope)
                    self.compared(branches, current, level)
                    level.chosen = level.chosen | self.recursion_stopped(branches, current)
                    current = level.mark(current)
                scope.ctes[name] = (self.search_cycle(cte, current, colnames), colnames)
            else:
                out = self.query(query, scope, OUTPUT)
                scope.ctes[name] = (self.search_cycle(cte, out, colnames), colnames)

    def cte_order(self, ctes: list[Node], scope: Scope) -> list[Node]:
        """Under ``WITH RECURSIVE`` a CTE may read one listed after it, which the
        server walks first: ``WITH RECURSIVE a(x) AS (SELECT lower(label) FROM tags),
        tags(id, label) AS (SELECT id, email FROM customers)`` reads the CTE ``tags``,
        not the table of that name, whose clean ``label`` lineage read as. So the CTEs
        are walked in the order of what they read, and a name read before it is walked
        (mutual recursion, which the server refuses, or a name an inner WITH shadows)
        is unknown until then."""
        names = {cte["ctename"] for cte in ctes}
        reads = {
            cte["ctename"]: relations_read(cte["ctequery"]) & (names - {cte["ctename"]})
            for cte in ctes
        }
        ordered: list[Node] = []
        done: set[str] = set()
        pending = list(ctes)
        while pending:
            ready = [cte for cte in pending if reads[cte["ctename"]] <= done]
            if not ready:
                ready = pending[:1]
            for cte in ready:
                pending.remove(cte)
                ordered.append(cte)
                done.add(cte["ctename"])
        for cte in ctes:
            if reads[cte["ctename"]]:
                unknown = self.unknown(f"CTE {cte['ctename']!r} read before it was walked")
                for name in names:
                    scope.ctes.setdefault(name, (Output(tail=unknown), []))
                break
        return ordered

    @staticmethod
    def recursion_stopped(branches: list[Branch], merged: Output) -> Lin:
        """A recursive ``UNION`` stops when a step makes only rows seen before, so
        how many rows it makes is decided by its own values compared with its earlier
        ones — PII with PII, which a set operation's two branches may compare freely
        (``Queries.compared``), but here the same PII-derived sequence met again:
        ``SELECT 0 * ascii(email) ... UNION SELECT (s + 1) % ascii(email) ...`` makes as
        many rows as the code. Every output of the CTE carries the PII of its outputs
        that are not a stored table's column as it is in every branch."""
        out = CLEAN
        for i, lin in enumerate(merged.columns):
            if not (lin.pii or lin.unknown):
                continue
            cells = [columns[i] for _level, columns in branches if i < len(columns)]
            if cells and all(
                bare and refs and all(ref[1].table for ref in refs) for _lin, refs, bare in cells
            ):
                continue  # whole stored values met again: a lookup, not a count
            out = out | Lin(lin.entities, lin.unknown)
        tail = merged.tail
        if tail is not None and (tail.pii or tail.unknown):
            out = out | Lin(tail.entities, tail.unknown)
        return out

    def search_cycle(self, cte: Node, out: Output, colnames: list[str]) -> Output:
        """A recursive CTE's ``SEARCH`` and ``CYCLE`` clauses (PostgreSQL 14+) add
        columns made of the columns they name: the search order's sequence (``SET
        ord``), the cycle mark and the path. ``CYCLE`` also stops the recursion where a
        row's values there repeat an earlier row's on its path, so how many rows the
        CTE makes is decided by them: ``CYCLE s`` over ``s = n % ascii(email)`` makes
        as many rows as the code, and every output carries their PII (as a
        ``UNION``'s recursion, ``recursion_stopped``)."""
        search = cte.get("search_clause")
        cycle = cte.get("cycle_clause")
        if not (search or cycle):
            return out
        names = colnames[: len(out.columns)] + out.names[len(colnames) :]

        def of(cols: object) -> Lin:
            lin = CLEAN
            for c in strs(cols):
                hits = [out.columns[i] for i, n in enumerate(names) if n == c]
                if not hits:
                    hits = [
                        out.tail
                        if out.tail is not None
                        else self.unknown(f"column {c!r} of CTE {cte.get('ctename')!r}")
                    ]
                for hit in hits:
                    lin = lin | hit
            return lin

        new = Output(
            list(out.columns),
            list(out.names),
            out.tail,
            out.chosen,
            asked=out.asked,
            asked_levels=out.asked_levels,
            ordered=out.ordered,
        )
        if search:
            new.add(of(search.get("search_col_list")), search.get("search_seq_column") or "?")
        if cycle:
            lin = of(cycle.get("cycle_col_list"))
            new.add(lin, cycle.get("cycle_mark_column") or "?")
            new.add(lin, cycle.get("cycle_path_column") or "?")
            if lin.pii or lin.unknown:
                cut = Lin(lin.entities, lin.unknown)
                new.columns = [c | cut for c in new.columns]
                if new.tail is not None:
                    new.tail = new.tail | cut
                new.chosen = new.chosen | cut
        return new
