"""Name resolution: the FROM entries of each query level, as column references see them.

An :class:`Item` is one FROM entry (a table, a sub-select, a function, a join's merged
columns) with the lineage of each of its columns, ``open`` when it may have more
columns than it names (their lineage is ``rest``). A :class:`Scope` is one query level:
its entries, the ones ``SELECT *`` expands, its CTEs, its parent (a correlated reference
resolves outward), and the PII that chose its rows (``chosen``).
"""

from __future__ import annotations

from itertools import count

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage.results import Output

_SERIAL = count()


class Item:
    """One FROM-clause entry as name resolution sees it."""

    __slots__ = (
        "_index",
        "alias",
        "asked",
        "asked_levels",
        "chosen",
        "cols",
        "named",
        "names",
        "open",
        "ordered",
        "rest",
        "schema",
        "stored",
        "table",
    )

    def __init__(
        self,
        alias: str | None,
        names: list[str],
        cols: list[Lin],
        open: bool = False,
        rest: Lin = CLEAN,
        schema: str | None = None,
        chosen: Lin = CLEAN,
        table: bool = False,
        asked: Lin = CLEAN,
        asked_levels: frozenset[int] = frozenset(),
        ordered: Lin = CLEAN,
        stored: frozenset[str] = frozenset(),
        named: dict[str, Lin] | None = None,
    ) -> None:
        self.alias = alias
        self.names = names
        self.cols = cols
        self.open = open
        self.rest = rest
        self.schema = schema
        self.chosen = chosen  # its source's rows were chosen by PII (Output.chosen)
        self.table = table  # one row of a table: its columns are one stored row's
        #: its source's rows were kept by their own PII, at these levels (Output.asked)
        self.asked = asked
        self.asked_levels = asked_levels
        #: PII that chose the order of its source's rows (Output.ordered)
        self.ordered = ordered
        #: of a sub-select or CTE: its columns that are a table row's stored column as it
        #: is (Output.stored), compared or ordered by as that row's own would be
        self.stored = stored
        #: what a name reads where that is not what its position holds: relations of
        #: one name in several schemas (the session's ``search_path`` picks one) whose
        #: columns differ, ``cols`` being what each position may hold, of any of them
        self.named = named
        self._index: dict[str, Lin] | None = None

    def get(self, name: str) -> Lin | None:
        index = self._index
        if index is None:
            # built on the first lookup: an item's names are final once it is in scope
            index = self._index = {}
            for n, lin in zip(self.names, self.cols, strict=True):
                seen = index.get(n)
                index[n] = lin if seen is None else seen | lin
            if self.named is not None:
                index.update((n, lin) for n, lin in self.named.items() if n in index)
        found = index.get(name)
        if found is None and self.open:
            return self.rest
        return found

    def whole(self) -> Lin:
        out = self.rest if self.open else CLEAN
        for lin in self.cols:
            out = out | lin
        return out


class Scope:
    __slots__ = (
        "aggregate_asked",
        "asked",
        "asked_levels",
        "chosen",
        "counts",
        "ctes",
        "items",
        "kept",
        "multiplied",
        "ordered",
        "packs",
        "parent",
        "serial",
        "sorts",
        "stars",
        "window_defs",
        "windows",
    )

    def __init__(self, parent: Scope | None) -> None:
        self.serial = next(_SERIAL)
        self.parent = parent
        self.items: list[Item] = []  # everything resolvable by name
        self.stars: list[Item] = []  # top-level FROM entries, for SELECT *
        self.ctes: dict[str, tuple[Output, list[str]]] = {}
        #: PII that chose this level's rows (``Queries.choose``): every output has it
        self.chosen = CLEAN
        #: PII that kept or dropped each table row of this level by the row's own value
        #: (``email LIKE 'a%'``): one bit per row, carried by no output of the level,
        #: but a value of whatever turns the rows' presence into one (``Output.asked``)
        self.asked = CLEAN
        #: the levels whose questions those are: this one, or the levels of a
        #: sub-select standing as a whole predicate here (``Scope.serial``)
        self.asked_levels: frozenset[int] = frozenset()
        #: the same, asked by an aggregate's or window's own argument, FILTER or keys
        #: (``count(email)``): no row of the level is kept or dropped by it, so the
        #: other aggregates of the level read every row (``Scope.pack``)
        self.aggregate_asked = CLEAN
        #: the named windows of its WINDOW clause: the PII their keys put in the value
        #: of every window function over them (``Queries.window``)
        self.windows: dict[str, Lin] | None = None
        #: and their definitions, for a window function's ``_bounded`` test
        self.window_defs: dict[str, dict] | None = None
        #: PII that chose the order of this level's rows for the level above (a nested
        #: ORDER BY, DISTINCT ON, GROUP BY or window of PII, whole columns too)
        self.ordered = CLEAN
        #: ``asked`` as it was before this level's DISTINCT ON and ORDER BY, which
        #: come after its aggregates and windows (None: no such clause walked)
        self.kept: Lin | None = None
        #: aggregates and window functions of this level met so far whose value can
        #: hold more than one bounded number (``Expressions.packs``): counted, so the
        #: select list knows which of its outputs hold one (``Queries._select``)
        self.packs = 0
        #: ... and those whose value depends on the order of the rows they read
        self.sorts = 0
        #: ... and the counts among the rest (``count(*)``, ``count(col)``): one bounded
        #: number, unless the level is ``multiplied``
        self.counts = 0
        #: how many rows of one FROM entry each row of another meets is the text's to
        #: choose, not the stored data's: a function or LATERAL sub-select given a
        #: column (``generate_series(1, 1 << c.id % 20)``), a set-returning function of
        #: a column in the select list, or a predicate relating two entries other than
        #: an equality of stored columns (``g <= 1 << c.id % 20``). A count of such a
        #: level's rows kept by their own PII adds up as many bits as the multiplicities
        #: spell (``Queries.choose``, ``Scope.mark``)
        self.multiplied = False

    def ask(self, lin: Lin, levels: frozenset[int] | None = None) -> None:
        """Rows of this level were kept by their own PII (``lin``): asked here, or at
        ``levels`` (a sub-select standing as a whole predicate)."""
        self.asked = self.asked | Lin(lin.entities, lin.unknown)
        self.asked_levels = self.asked_levels | (
            frozenset((self.serial,)) if levels is None else levels
        )

    def level_chosen(self) -> Lin:
        """What PII chose in this level's rows: here, or in a FROM entry's source."""
        out = self.chosen
        for item in self.items:
            out = out | item.chosen
        return out

    def level_asked(self) -> tuple[Lin, frozenset[int]]:
        """What PII kept rows by their own value, here or in a FROM entry's source, and
        at which levels (``Scope.serial``)."""
        lin = self.asked | self.aggregate_asked
        levels = self.asked_levels
        for item in self.items:
            lin = lin | item.asked
            levels = levels | item.asked_levels
        return lin, levels

    def level_ordered(self) -> Lin:
        """What PII chose the order of the rows this level reads (its FROM entries')."""
        out = CLEAN
        for item in self.items:
            out = out | item.ordered
        return out

    def mark(
        self,
        out: Output,
        aggregates: bool = False,
        packed: list[tuple[int, bool, bool]] | None = None,
    ) -> Output:
        """``out`` with this level's chosen PII added to every column.

        A level that aggregates turns the presence of its rows into values: rows
        kept by their own PII at several levels (sub-selects, CTEs or the branches of
        a set operation, each a one-bit question: ``SELECT sum(v) FROM (SELECT 1 v ...
        WHERE ascii(email) & 1 <> 0 UNION ALL SELECT 2 ...)``), or at all when the
        level is itself nested, make its outputs carry that PII. One level's question
        counted at a statement's top level (``count(*) ... WHERE email LIKE 'a%'``, or
        over a sub-select or CTE that asks it) stays one number — but an aggregate or
        window function that packs rows (``packed``: per output holding one, -1 for
        the tail, whether one packs them and whether one reads their order) carries it
        there, and one that reads them in their order the PII that chose it:
        ``string_agg(id::text, ',') ... WHERE ascii(substr(email, 3, 1)) & 4 <>
        0`` lists the ids whose bit is 1, every customer's bit in one row, and over
        ``(SELECT id FROM customers ORDER BY email) s`` every id in the e-mails'
        order."""
        asked, levels = self.level_asked()
        if self.multiplied and asked is not CLEAN and self.parent is not None:
            # a count of this level's rows one level up is a sum of multiplicities the
            # text chose, one per kept row (``SELECT count(*) FROM (SELECT 1 FROM
            # customers c, generate_series(1, 1 << c.id % 20) WHERE ... ascii(c.email)
            # ...) s``): every output carries what kept them
            self.chosen = self.chosen | Lin(asked.entities, asked.unknown)
        out.asked = out.asked | asked
        out.asked_levels = out.asked_levels | levels
        ordered = self.level_ordered()
        out.ordered = out.ordered | ordered | self.ordered
        if packed:
            self.pack(out, packed, ordered)
        if aggregates and asked is not CLEAN and (len(levels) > 1 or self.parent is not None):
            self.chosen = self.chosen | Lin(asked.entities, asked.unknown)
        chosen = self.level_chosen()
        if chosen is CLEAN:
            return out
        out.columns = [lin | chosen for lin in out.columns]
        if out.tail is not None:
            out.tail = out.tail | chosen
        out.chosen = out.chosen | chosen
        return out

    def pack(self, out: Output, packed: list[tuple[int, bool, bool]], ordered: Lin) -> None:
        """Add to the outputs that pack rows the PII that kept them (before this
        level's own ORDER BY and DISTINCT ON, which come after its aggregates and
        windows), to those that read their order the PII that chose it."""
        asked = self.asked if self.kept is None else self.kept
        for item in self.items:
            asked = asked | item.asked
        if not (asked.pii or asked.unknown or ordered.pii or ordered.unknown):
            return
        kept = Lin(asked.entities, asked.unknown)
        order = Lin(ordered.entities, ordered.unknown)
        for k, packs, sorts in packed:
            add = (kept if packs else CLEAN) | (order if sorts else CLEAN)
            if k < 0:
                if out.tail is not None:
                    out.tail = out.tail | add
            elif k < len(out.columns):
                out.columns[k] = out.columns[k] | add

    def cte(self, name: str) -> tuple[Output, list[str]] | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None


#: Where an opaque function given no column reads from (``WalkState.met_opaque``).
OPAQUE = Item(None, [], [], open=True, rest=UNKNOWN_LIN)

#: Where a built-in that returns another value per row reads from
#: (``WalkState.met_varying``): no table row.
VARYING = Item(None, [], [])

#: A column reference met in a predicate: the level it resolved at, its FROM entry, its
#: lineage, its name (``*`` for a whole row).
Ref = tuple[Scope, Item, Lin, str]
