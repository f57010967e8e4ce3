"""Name resolution: the FROM entries of each query level, as column references see them.

An :class:`Item` is one FROM entry (a table, a sub-select, a function, a join's merged
columns) with the lineage of each of its columns, ``open`` when it may have more
columns than it names (their lineage is ``rest``). A :class:`Scope` is one query level:
its entries, the ones ``SELECT *`` expands, its CTEs, its parent (a correlated reference
resolves outward), and the PII that chose its rows (``chosen``).
"""

from __future__ import annotations

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage.results import Output


class Item:
    """One FROM-clause entry as name resolution sees it."""

    __slots__ = ("_index", "alias", "chosen", "cols", "names", "open", "rest", "schema", "table")

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
    ) -> None:
        self.alias = alias
        self.names = names
        self.cols = cols
        self.open = open
        self.rest = rest
        self.schema = schema
        self.chosen = chosen  # its source's rows were chosen by PII (Output.chosen)
        self.table = table  # one row of a table: its columns are one stored row's
        self._index: dict[str, Lin] | None = None

    def get(self, name: str) -> Lin | None:
        index = self._index
        if index is None:
            # built on the first lookup: an item's names are final once it is in scope
            index = self._index = {}
            for n, lin in zip(self.names, self.cols, strict=True):
                seen = index.get(n)
                index[n] = lin if seen is None else seen | lin
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
    __slots__ = ("chosen", "ctes", "items", "parent", "stars")

    def __init__(self, parent: Scope | None) -> None:
        self.parent = parent
        self.items: list[Item] = []  # everything resolvable by name
        self.stars: list[Item] = []  # top-level FROM entries, for SELECT *
        self.ctes: dict[str, tuple[Output, list[str]]] = {}
        #: PII that chose this level's rows (``Queries.choose``): every output has it
        self.chosen = CLEAN

    def level_chosen(self) -> Lin:
        """What PII chose in this level's rows: here, or in a FROM entry's source."""
        out = self.chosen
        for item in self.items:
            out = out | item.chosen
        return out

    def mark(self, out: Output) -> Output:
        """``out`` with this level's chosen PII added to every column."""
        chosen = self.level_chosen()
        if chosen is CLEAN:
            return out
        out.columns = [lin | chosen for lin in out.columns]
        if out.tail is not None:
            out.tail = out.tail | chosen
        out.chosen = out.chosen | chosen
        return out

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
