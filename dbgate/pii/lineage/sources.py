"""FROM items: tables, sub-selects, joins and functions, and what a qualifier names.

A table's columns take their lineage from the catalog (:class:`~.results.ColumnSource`),
a CTE's or a sub-select's from its output. A function in FROM is laid out by its width
(how many columns it returns: a column definition list, the snapshot's functions, or
the built-ins known by name), and once a width is unknown so is every later position.
"""

from __future__ import annotations

from dbgate.pii.lin import CLEAN, Lin
from dbgate.pii.lineage.builtin_names import (
    BUILTIN_SRF_WIDTH,
    POLYMORPHIC_SRFS,
    POLYMORPHIC_TYPES,
    SCALAR_TYPE_NAMES,
)
from dbgate.pii.lineage.context import FILTER, OUTPUT
from dbgate.pii.lineage.nodes import Node, listed, one, strs
from dbgate.pii.lineage.predicates import mentions_column
from dbgate.pii.lineage.results import Output
from dbgate.pii.lineage.scope import Item, Scope
from dbgate.pii.lineage.state import WalkState
from dbgate.pii.schema import Relation


class Sources(WalkState):
    """FROM entries, as name resolution will see them."""

    def from_item(self, node: Node, scope: Scope) -> Item:
        kind, body = one(node)
        if kind == "RangeVar":
            return self.range_var(body, scope)
        if kind == "RangeSubselect":
            if body.get("lateral"):
                scope.multiplied = True  # its rows per row of the others are its own
            out = self.query(body["subquery"], scope, OUTPUT)
            return self.item_from_output(out, body.get("alias"), scope)
        if kind == "JoinExpr":
            return self.join(body, scope)
        if kind == "RangeFunction":
            if mentions_column(body.get("functions")):
                scope.multiplied = True  # ``generate_series(1, 1 << c.id % 20)``
            return self.range_function(body, scope)
        if kind == "RangeTableSample":
            # how many rows the sample keeps is its arguments' (TABLESAMPLE
            # system_rows(ascii(...)) returns exactly that many): they size the level
            sized = self.expr([body.get("args"), body.get("repeatable")], scope, FILTER)
            if body.get("repeatable") is None:
                # its seed is drawn from the session's random generator at each scan
                self.draws.append(("TABLESAMPLE", scope, body.get("location", -1)))
            item = self.from_item(body["relation"], scope)
            if sized.pii or sized.unknown or sized.params:
                item.chosen = item.chosen | Lin(sized.entities, sized.unknown, sized.params)
            return item
        if kind in ("RangeTableFunc", "JsonTable"):
            # every part flows into every column: the document, and the PASSING
            # arguments, paths, defaults that pick what of it comes out; and they
            # decide how many rows come out (a document of ascii(...) elements)
            parts = {k: v for k, v in body.items() if k != "alias"}
            if mentions_column(parts):
                scope.multiplied = True
            source = self.generic(parts, scope, OUTPUT)
            alias = (body.get("alias") or {}).get("aliasname")
            sized = (
                Lin(source.entities, source.unknown, source.params)
                if source.pii or source.unknown or source.params
                else CLEAN
            )
            item = Item(alias, [], [], open=True, rest=source, chosen=sized)
            scope.items.append(item)
            return item
        self.walk_side(body, f"a {kind} in FROM")
        item = Item(None, [], [], open=True, rest=self.unknown(f"cannot follow a {kind} in FROM"))
        scope.items.append(item)
        return item

    def item_from_output(self, out: Output, alias: Node | None, scope: Scope) -> Item:
        names = list(out.names)
        if alias:
            renamed = strs(alias.get("colnames"))
            names[: len(renamed)] = renamed[: len(names)]
        item = Item(
            (alias or {}).get("aliasname"),
            names,
            list(out.columns),
            open=out.tail is not None,
            rest=out.tail or CLEAN,
            chosen=out.chosen,
            asked=out.asked,
            asked_levels=out.asked_levels,
            ordered=out.ordered,
            stored=frozenset(
                names[i] for i in out.stored if i < len(names) and names.count(names[i]) == 1
            ),
        )
        scope.items.append(item)
        return item

    def policies_met(self, rels: list[Relation]) -> None:
        """Row-level security policies a read of ``rels`` runs: their own, or those of
        the tables a view's definition reads (known once its lineage is computed)."""
        policed = self.source.policed_views
        for rel in rels:
            met = ([rel.qualified] if rel.policies else []) + policed.get(rel.oid, [])
            for name in met:
                if name not in self.r.policies_met:
                    self.r.policies_met.append(name)
            # code a read of it runs, which may keep the text it runs under
            code = getattr(self.source, "coded_views", {}).get(rel.oid)
            if code:
                code = f"the definition of {rel.qualified}, which runs {code}"
            elif rel.policies and rel.policy_code:
                code = f"the row-level security policies of {rel.qualified}"
            if code and code not in self.r.code_read:
                self.r.code_read.append(code)

    def range_var(self, body: Node, scope: Scope) -> Item:
        name = body.get("relname", "")
        schema = body.get("schemaname")
        alias = body.get("alias")
        if schema is None:
            found = scope.cte(name)
            if found is not None:
                out, colnames = found
                if colnames:
                    out = Output(
                        list(out.columns),
                        colnames[: len(out.columns)] + out.names[len(colnames) :],
                        out.tail,
                        out.chosen,
                        asked=out.asked,
                        asked_levels=out.asked_levels,
                        ordered=out.ordered,
                        stored=out.stored,
                    )
                return self.item_from_output(out, alias or {"aliasname": name}, scope)
        rels = self.snap.lookup(name, schema)
        shown = f"{schema}.{name}" if schema else name
        if not rels:
            self.r.unknown_relations.add(shown)
            item = Item(
                (alias or {}).get("aliasname", name),
                [],
                [],
                open=True,
                rest=self.unknown(f"relation {shown} is not in dbgate's schema snapshot"),
                schema=schema,
            )
            scope.items.append(item)
            return item
        primary = rels[0]
        lins = list(self.source.relation_lins(primary))
        names = [c.name for c in primary.columns]
        named: dict[str, Lin] | None = None
        wider: Lin | None = None
        if len(rels) > 1:
            lins, named, wider = self.same_named(rels, shown)
        self.policies_met(rels)
        if alias and alias.get("colnames"):
            renamed = strs(alias["colnames"])
            names[: len(renamed)] = renamed[: len(names)]
            named = None  # the list names positions, whichever relation holds them
        item = Item(
            (alias or {}).get("aliasname", name),
            names,
            lins,
            open=wider is not None,
            rest=CLEAN if wider is None else wider,
            schema=schema or primary.schema,
            table=len(rels) == 1 and primary.kind in ("r", "p"),
            named=named,
        )
        # a view's rows chosen, kept or ordered by PII in its definition: as a
        # sub-select's would be (``Coverage.view_rows``)
        view_rows = getattr(self.source, "view_rows", None)
        for rel in rels if view_rows is not None else ():
            rows = view_rows(rel) if rel.kind in ("v", "m") else None
            if rows is not None:
                chosen, asked, ordered = rows
                item.chosen = item.chosen | chosen
                if asked.pii or asked.unknown:
                    item.asked = item.asked | asked
                    item.asked_levels = item.asked_levels | frozenset((-rel.oid,))
                item.ordered = item.ordered | ordered
        scope.items.append(item)
        return item

    def same_named(
        self, rels: list[Relation], shown: str
    ) -> tuple[list[Lin], dict[str, Lin] | None, Lin | None]:
        """Lineage of a name several schemas hold a relation of (``rels``, the likeliest
        first): the session's ``search_path`` picks one, which the agent sets. A column
        read by name holds what that name holds in any of them; what reads columns by
        position (a whole-row value, ``*`` under a set operation, an alias list
        ``t(a, b)``) gets what any of them holds there: ``crm.t (id, email)`` beside
        ``public.t (id, label)`` puts e-mails where ``label`` stands. Returns the
        positions' lineage (as many as the first relation's columns), the names'
        (None when every relation has the first one's columns, in its order), and
        the lineage of the positions past the first's when another has more that are
        not clean (unknown: those columns, and names only they hold, stand nowhere the
        walk can place)."""
        primary = rels[0]
        width = len(primary.columns)
        layout = [c.name for c in primary.columns]
        by_name = dict(zip(layout, self.source.relation_lins(primary), strict=True))
        positions = list(self.source.relation_lins(primary))
        same = True
        wider: Lin | None = None
        for other in rels[1:]:
            other_lins = self.source.relation_lins(other)
            names = [c.name for c in other.columns]
            same = same and names == layout
            for i, (n, lin) in enumerate(zip(names, other_lins, strict=True)):
                if n in by_name:
                    by_name[n] = by_name[n] | lin
                if i < width:
                    positions[i] = positions[i] | lin
                else:
                    wider = (wider or CLEAN) | lin
        if wider is not None and (wider.pii or wider.unknown):
            wider = wider | self.unknown(
                f"relation {shown} is in several schemas, one with more columns"
            )
        else:
            # clean ones (``information_schema.tables`` beside a table ``tables``) add
            # nothing a whole row or ``*`` could carry, and a name only they hold is
            # unknown to the walk as it is
            wider = None
        if same:
            return [by_name[n] for n in layout], None, None
        # a position holds what its name does too: after an alias list the walk reads
        # the names it left as they are by position (``named`` is dropped then)
        for i, n in enumerate(layout):
            positions[i] = positions[i] | by_name[n]
        return positions, by_name, wider

    def join(self, body: Node, scope: Scope) -> Item:
        left = self.from_item(body["larg"], scope)
        right = self.from_item(body["rarg"], scope)
        if body.get("quals"):
            inner = body.get("jointype", "JOIN_INNER") == "JOIN_INNER"
            on = self.choose(body["quals"], scope, rows=inner, joins=True)
            if on.pii or on.unknown:
                # merged by sorting on its keys, a join's rows come out in their order
                # (``ON c.email = o.contact_email``): what reads them in it carries them
                for side in (left, right):
                    side.ordered = side.ordered | Lin(on.entities, on.unknown)
            if body.get("jointype", "JOIN_INNER") != "JOIN_INNER" and (
                on.pii or on.unknown or on.params
            ):
                # an outer join keeps the rows of one side whatever ON says, and fills
                # the other side's columns with NULLs where it is false: those NULLs are
                # the predicate's value, one per join (``LEFT JOIN (SELECT 1 v) x ON
                # ascii(c.email) & 4 <> 0`` is a bit of each row's e-mail), so this level
                # carries it, even when ON names one table row only
                scope.chosen = scope.chosen | Lin(on.entities, on.unknown, on.params)
        jointype = body.get("jointype", "JOIN_INNER")
        nullable = {
            "JOIN_LEFT": (right,),
            "JOIN_RIGHT": (left,),
            "JOIN_FULL": (left, right),
        }.get(jointype, ())
        for side in nullable:
            if side.asked is not CLEAN:
                # rows of a sub-select kept by their own PII, on the side an outer join
                # fills with NULLs where it has none: each NULL is a bit of the row
                # around it (``(SELECT 1) b LEFT JOIN (SELECT 1 x FROM customers WHERE
                # id = 42 AND ascii(email) & 4 <> 0) a ON true``, one join per bit)
                scope.chosen = scope.chosen | Lin(side.asked.entities, side.asked.unknown)
        using = strs(body.get("usingClause"))
        if body.get("isNatural"):
            using = [n for n in left.names if n in right.names]
        names: list[str] = []
        cols: list[Lin] = []
        for n in using:
            a, b = left.get(n) or CLEAN, right.get(n) or CLEAN
            self.saw(a | b)
            names.append(n)
            cols.append(a | b)
            # USING / NATURAL is an equality like ON's: relating a PII-derived column with
            # a clean one of the other side chooses this level's rows by that value
            for this, other in ((a, b), (b, a)):
                if (this.pii or this.unknown or this.params) and not (other.pii or other.unknown):
                    scope.chosen = scope.chosen | Lin(this.entities, this.unknown, this.params)
        for side in (left, right):
            for n, lin in zip(side.names, side.cols, strict=True):
                if n not in using:
                    names.append(n)
                    cols.append(lin)
        open_ = left.open or right.open
        rest = (left.rest if left.open else CLEAN) | (right.rest if right.open else CLEAN)
        if open_ and using:
            # the merged columns of an open side sit in an unknown place: keep order honest
            names, cols = [], []
            rest = rest | left.whole() | right.whole()
        alias = (body.get("alias") or {}).get("aliasname")
        item = Item(
            alias,
            names,
            cols,
            open=open_,
            rest=rest,
            chosen=left.chosen | right.chosen,
            asked=left.asked | right.asked,
            asked_levels=left.asked_levels | right.asked_levels,
            ordered=left.ordered | right.ordered,
        )
        if alias or (body.get("join_using_alias")):
            if body.get("join_using_alias"):
                ua = body["join_using_alias"].get("aliasname")
                scope.items.append(Item(ua, using, cols[: len(using)]))
            if alias:
                scope.items.append(item)
        return item

    def range_function(self, body: Node, scope: Scope) -> Item:
        """A function (or ROWS FROM list) in FROM, WITH ORDINALITY adding a last column.

        Columns are laid out function after function, so once one function's width is
        not known (``unnest`` of an array that may hold composites, a polymorphic or
        opaque function), no later position is known either: that function, every
        later one and the ordinality column all go to the item's ``rest`` (fail closed).
        """
        names: list[str] = []
        cols: list[Lin] = []
        open_ = False
        rest = CLEAN
        # what decides how many rows the functions return (a count(*) of them is the
        # value): a built-in set-returning function marks the level itself
        # (``Expressions.sets_rows``, as in a select list); here, the ones walked
        # without it (the arguments of unnest(a, b)) and opaque functions
        sized = CLEAN
        alias = body.get("alias") or {}
        alias_name = alias.get("aliasname")
        functions = body.get("functions") or ()

        def place(lin: Lin, width: int | None, fnames: list[str]) -> None:
            nonlocal open_, rest
            if open_ or width is None:
                open_ = True
                rest = rest | lin
                return
            names.extend(fnames)
            cols.extend([lin] * width)

        for entry in functions:
            items = entry["List"]["items"]
            call = items[0]
            coldef = items[1] if len(items) > 1 and items[1] else None
            coldefs = coldef if isinstance(coldef, list) else body.get("coldeflist")
            kind, fbody = one(call)
            if kind != "FuncCall":
                lin = self.expr(call, scope, OUTPUT)
                # CAST(... AS composite), COALESCE of rows ...: one column only for the
                # SQL value functions (current_date, current_user ...)
                width = 1 if kind == "SQLValueFunction" else None
                place(lin, width, [alias_name or "?column?"])
                continue
            fname = strs(fbody["funcname"])[-1]
            args = fbody.get("args") or ()
            if fname == "unnest" and not coldefs and len(args) > 1 and len(functions) == 1:
                # unnest(a, b, ...) is ROWS FROM (unnest(a), unnest(b), ...)
                for arg in args:
                    lin = self.expr(arg, scope, OUTPUT)
                    if not listed(arg):
                        sized = sized | lin
                    place(lin, 1 if self.scalar_array(arg) else None, ["unnest"])
                continue
            lin = self.expr(call, scope, OUTPUT)
            if not self.is_builtin(fname.lower(), None):
                # its PII arguments may say how many rows it returns; its being unknown
                # for its own sake says nothing of that
                sized = sized | Lin(lin.entities, False, lin.params)
            if fname == "unnest" and not coldefs and len(args) == 1:
                width, fnames = (1, []) if self.scalar_array(args[0]) else (None, [])
            else:
                width, fnames = self.function_width(fbody, coldefs)
            if width == 1 and not fnames:
                fnames = [alias_name if (alias_name and len(functions) == 1) else fname]
            place(lin, width, fnames or [fname] * (width or 0))
        if body.get("ordinality"):
            place(CLEAN, 1, ["ordinality"])
        if alias.get("colnames"):
            renamed = strs(alias["colnames"])
            names[: len(renamed)] = renamed[: len(names)]
        item = Item(
            alias_name or (names[0] if names else None),
            names,
            cols,
            open=open_,
            rest=rest,
            chosen=(
                Lin(sized.entities, sized.unknown, sized.params)
                if sized.pii or sized.unknown or sized.params
                else CLEAN
            ),
        )
        scope.items.append(item)
        return item

    def scalar_array(self, node: Node) -> bool:
        """Whether ``node`` is surely an array of scalars (unnest gives one column).

        ``ARRAY['a', 'b']`` of constants, or a cast to ``text[]``, ``int[]`` ... of a
        base type no relation or composite type of the snapshot shadows.
        """
        kind, body = one(node)
        if kind == "A_ArrayExpr":
            elements = body.get("elements") or ()
            return bool(elements) and all(
                one(e)[0] == "A_Const"
                or (one(e)[0] in ("A_ArrayExpr", "TypeCast") and self.scalar_array(e))
                or (one(e)[0] == "TypeCast" and self.scalar_type(e["TypeCast"]["typeName"]))
                for e in elements
            )
        if kind == "TypeCast":
            tn = body.get("typeName") or {}
            return bool(tn.get("arrayBounds")) and self.scalar_type(tn)
        return False

    def scalar_type(self, tn: Node) -> bool:
        parts = strs(tn.get("names"))
        if not parts or tn.get("setof") or tn.get("pct_type"):
            return False
        name = parts[-1].lower()
        if len(parts) > 1 and parts[-2] != "pg_catalog":
            return False
        if name not in SCALAR_TYPE_NAMES or self.snap.lookup(name):
            return False
        return all(
            t.kind in ("b", "e", "r", "m") for t in self.snap.types.values() if t.name == name
        )

    def function_width(
        self, fbody: Node, coldefs: list[Node] | None
    ) -> tuple[int | None, list[str]]:
        if coldefs:
            return len(coldefs), [c["ColumnDef"].get("colname", "") for c in coldefs]
        parts = strs(fbody["funcname"])
        name, schema = parts[-1], (parts[-2] if len(parts) > 1 else None)
        funcs = self.snap.functions_named(name, schema)
        widths: set[int] = set()
        names: list[str] = []
        for f in funcs:
            if f.out_names is not None:
                widths.add(len(f.out_names))
                names = list(f.out_names)
            else:
                rel = self.snap.by_row_type.get(f.ret_type)
                if rel is not None:
                    widths.add(len(rel.columns))
                    names = [c.name for c in rel.columns]
                elif f.ret_type == 2249 or f.ret_type in POLYMORPHIC_TYPES:
                    # record without a column definition list; anyelement (a composite
                    # argument makes it as wide as that type)
                    return None, []
                else:
                    widths.add(1)
        if not funcs:
            if name in POLYMORPHIC_SRFS:
                return None, []
            if name in BUILTIN_SRF_WIDTH:
                return BUILTIN_SRF_WIDTH[name], ["key", "value"]
            return (1, []) if self.snap.assume_builtin_functions else (None, [])
        if len(widths) != 1:
            return None, []
        return widths.pop(), names

    def find_item(self, qualifier: list[str], scope: Scope) -> Item | None:
        found = self.lookup(qualifier, scope)
        return found[0] if found is not None else None

    def lookup(self, qualifier: list[str], scope: Scope) -> tuple[Item, Scope] | None:
        """The FROM entry a qualifier names, and the query level it belongs to."""
        alias = qualifier[-1]
        schema = qualifier[-2] if len(qualifier) > 1 else None
        s: Scope | None = scope
        while s is not None:
            for item in reversed(s.items):
                if item.alias == alias and (schema is None or item.schema in (None, schema)):
                    return item, s
            s = s.parent
        return None
