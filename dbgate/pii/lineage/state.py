"""The walk's state for one query string, and its bookkeeping.

:class:`WalkState` is the base of every part of the walker (:mod:`.walker`): the column
source and session it reads, the :class:`~.results.Analysis` it fills, how deeply
SELECTs nest, and the column references met in the predicate being walked (``refs``,
for ``Queries.choose``). Its methods note what the parts find: a value that cannot be
followed (:meth:`~WalkState.unknown`), a column reference (:meth:`~WalkState.met`), an
opaque function that reads data of its own (:meth:`~WalkState.met_opaque`).
"""

from __future__ import annotations

from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin
from dbgate.pii.lineage.nodes import (
    CUTTING_TYPE_OIDS,
    ROUNDING,
    TYPES_THAT_CUT,
    Node,
    casts_to_cut,
    collates,
)
from dbgate.pii.lineage.results import Analysis, ColumnSource, SessionState
from dbgate.pii.lineage.scope import OPAQUE, VARYING, Item, Ref, Scope


class WalkState:
    """The walk's state, which every part of the walker shares."""

    def __init__(
        self, source: ColumnSource, session: SessionState | None, result: Analysis
    ) -> None:
        self.source = source
        self.snap = source.snapshot
        self.session = session
        self.r = result
        self.depth = 0
        self.filters_matter = True
        #: column references met while walking one predicate (``choose``): the level
        #: each resolved at, the FROM entry, its lineage, the column's name (``*`` for
        #: a whole row); None outside predicates
        self.refs: list[Ref] | None = None
        #: the SubLink a predicate being walked consists of (``Queries.choose``)
        self.leaf_sublink: Node | None = None
        #: the statement being walked writes to a relation with rewrite rules of its own
        self.rules_met = False
        #: calls of STATE_WRITERS: the function, its arguments' lineage, its level (whose
        #: rows PII may choose in a clause walked after the call)
        self.state_writes: list[tuple[str, Lin, Scope | None]] = []
        #: draws from the session's random generator (``PRNG_DRAWS``, a TABLESAMPLE
        #: without REPEATABLE): the function, its level, its location in the text
        self.draws: list[tuple[str, Scope, int]] = []
        #: the levels whose questions of PII kept rows the statement being walked
        #: stores (``Writes.written_rows_asked``)
        self.written_asked: frozenset[int] = frozenset()
        #: under EXPLAIN ANALYZE, every value the query computes anywhere (columns met,
        #: whole rows and ``*`` expanded, USING keys, unknowns, tokens, parameters):
        #: the plan's memory, disk and buffer figures are sizes of those values
        #: (``Sort Method: quicksort  Memory: 150kB`` of ``repeat('x', ascii(...))``
        #: in a sub-select); None when not recording
        self.seen: Lin | None = None
        #: walking a plain EXPLAIN's query without its FROM (``walk_side``): a name
        #: that does not resolve there is a column, whose value the plan never shows,
        #: not a computed value the planner prints (``EXPLAIN SELECT o.id FROM orders o``)
        self.unscoped_names = False
        #: the SELECT an INSERT copies from: the statement's own query, whose order
        #: only orders, as a top-level SELECT's does (``Queries.control``)
        self.statement_query: Node | None = None
        #: sub-selects walked whose value is PII (``Expressions.from_elsewhere``)
        self.sublinks = 0
        #: the parsed statements of the text, for :meth:`cuts_anywhere`
        self.tree: list[Node] = []
        self._cuts: bool | None = None
        self._rounds: bool | None = None
        self._relations: list[object] | None = None

    def cuts_anywhere(self) -> bool:
        """Whether the text casts to ``"char"``, ``name`` or ``float4`` anywhere: a value a
        sub-select, a CTE or a join cut so is of that type wherever its column is
        compared, and so is a literal compared with it (``(SELECT email::"char" e
        ...) s WHERE s.e = 'tok_…'`` reads the token's first byte). Found once, when a
        comparison first needs it."""
        if self._cuts is None:
            self._cuts = (
                casts_to_cut(self.tree, TYPES_THAT_CUT)
                or collates(self.tree)
                or self._reads_cut_pii(self.tree, 0)
            )
        return self._cuts

    def cutting_type(self, type_oid: int) -> str | None:
        """The name of a type whose input keeps only part of a text (``TYPES_THAT_CUT``)
        that ``type_oid`` is, is a domain over or an array of; None when it is none."""
        types = self.snap.types
        for _ in range(20):
            name = CUTTING_TYPE_OIDS.get(type_oid)
            if name is not None:
                return name
            info = types.get(type_oid)
            if info is None:
                return None
            if info.name == "seg":  # an extension's type of float4 bounds
                return info.name
            type_oid = info.elem or info.base
            if not type_oid:
                return None
        return None

    def column_types(self, name: str) -> set[int]:
        """The types of the columns named ``name`` of every relation the text names
        (a stored column's own type, which a literal compared with it takes)."""
        if self._relations is None:
            rels: list[object] = []
            self._collect_relations(self.tree, rels, 0)
            self._relations = rels
        oids = set()
        for rel in self._relations:
            col = rel.column(name)  # type: ignore[attr-defined]
            if col is not None:
                oids.add(col.type_oid)
        return oids

    def _collect_relations(self, node: object, out: list[object], depth: int) -> None:
        if depth > 200:
            return
        if isinstance(node, dict):
            name = node.get("relname")
            if isinstance(name, str):
                out.extend(self.snap.lookup(name, node.get("schemaname")))
            for v in node.values():
                self._collect_relations(v, out, depth + 1)
        elif isinstance(node, list):
            for v in node:
                self._collect_relations(v, out, depth + 1)

    def container_oid(self, type_oid: int) -> bool:
        """Whether ``type_oid`` is an array type, json or jsonb, or a domain over one."""
        types = self.snap.types
        for _ in range(20):
            if type_oid in (114, 3802):
                return True
            info = types.get(type_oid)
            if info is None:
                return False
            if info.category == "A" and info.elem:
                return True
            if not info.base:
                return False
            type_oid = info.base
        return False

    def _reads_cut_pii(self, node: object, depth: int) -> bool:
        """Whether the text names a relation with a PII column of a type that keeps
        only part of a text (an agent's own ``email "char"``): compared with it, a
        literal or parameter is of that type, and the server reads the token's value
        cut (its first byte) — wherever the column is compared, through a sub-select,
        a CTE or a view of it too; or of a collation that is not deterministic, under
        which equal is what its tailoring says (a part of the value, or its shape)."""
        if depth > 200:
            return True
        if isinstance(node, dict):
            name = node.get("relname")
            if isinstance(name, str):
                for rel in self.snap.lookup(name, node.get("schemaname")):
                    lins = self.source.relation_lins(rel)
                    for col, lin in zip(rel.columns, lins, strict=False):
                        if (lin.pii or lin.unknown) and (
                            col.nondeterministic or self.cutting_type(col.type_oid)
                        ):
                            return True
            return any(self._reads_cut_pii(v, depth + 1) for v in node.values())
        if isinstance(node, list):
            return any(self._reads_cut_pii(v, depth + 1) for v in node)
        return False

    def rounds_anywhere(self) -> bool:
        """Whether the text casts to a float or calls a built-in that returns one
        anywhere (``ROUNDING``): a sub-select's, a CTE's or a view's column may then be
        a float, and a literal compared with it is read as one (``(SELECT power(0 *
        length(card_number) + 4111111111111111, 1) p …) s WHERE s.p = 'tok_…'``
        matches a near miss of the value). Found once, when a comparison first needs
        it."""
        if self._rounds is None:
            self._rounds = casts_to_cut(self.tree, ROUNDING)
        return self._rounds

    def saw(self, lin: Lin) -> None:
        """Note a value the query computes, for ``seen`` (EXPLAIN ANALYZE)."""
        if self.seen is not None:
            self.seen = self.seen | lin

    def state_written(self) -> None:
        """After the walk: a value derived from PII (its own, or the rows it is
        given for) that a STATE_WRITERS call keeps is a copy: hold the statement.
        A sub-select runs again for each row of the levels around it, so the rows a
        call is given for are theirs too: ``LATERAL (SELECT nextval('s') WHERE g > 0)``
        beside ``generate_series(1, ascii(email)) g`` advanced the sequence by the
        code, which a later ``SELECT nextval('s')`` read back. Rows kept by their own
        PII count too (``Scope.level_asked``): one bit per row, but a call per kept
        row keeps them all, as an aggregate packs them — ``count(set_config('x.y',
        current_setting('x.y') || id || ',', false)) FROM customers WHERE
        ascii(substr(email, 3, 1)) & 4 <> 0`` left that bit of every customer in a
        setting a later ``current_setting('x.y')`` read in one row (``pg_advisory_lock(id)``
        the same, in ``pg_locks``). A sequence's ``nextval`` per kept row keeps only
        their number, as ``count(*)`` would."""
        for name, lin, level in self.state_writes:
            kept = lin
            around = level
            while around is not None:
                kept = kept | around.level_chosen()
                if name != "nextval":
                    asked, _levels = around.level_asked()
                    kept = kept | Lin(asked.entities, asked.unknown)
                around = around.parent
            # a bind parameter among them may carry a token: one there is refused
            self.r.param_writes |= kept.params
            if kept.pii or kept.unknown:
                why = (
                    f"{name}() keeps a value derived from PII (or from what dbgate cannot"
                    " follow) where a later statement reads it back"
                )
                if why not in self.r.pii_writes:
                    self.r.pii_writes.append(why)

    def state_run_by(
        self, writes: int, draws: int, seen: Lin, counted: frozenset[int] = frozenset()
    ) -> None:
        """After one statement: the calls of STATE_WRITERS it made (those past index
        ``writes``) run or not as any value it computes decides, its arguments aside:
        ``CASE WHEN ascii(substr(email, 1, 1)) & 1 <> 0 THEN set_config('enable_seqscan',
        'off', false) END``, a ``WHERE`` or ``FILTER`` of PII around ``pg_notify('c1',
        'x')``, a scalar sub-select whose rows a bit keeps. Each such call is a bit kept
        for a later, clean read (``pg_settings``, a ParameterStatus, a notification's
        channel, a sequence's value), and a select list of them spelled a whole value in
        one statement: a statement that computes anything derived from PII (or what
        dbgate cannot follow) with one is held.

        So are the draws from the session's random generator past index ``draws``:
        after ``setseed(0.25)`` the agent knows the sequence ``random()`` gives, and
        ``count(random()) … generate_series(1, ascii(substr(email, 1, 1)))`` moved it on
        by the code, which the next ``random()`` names. Those at ``counted`` locations
        (a bare ``ORDER BY random()`` of the statement's own query, run once per row of
        a level no PII chose, whose rows one level's question kept at most) draw as
        many times as that level has rows: a count."""
        if not (seen.pii or seen.unknown):
            return
        why = None
        if len(self.state_writes) > writes:
            why = (
                f"{self.state_writes[writes][0]}() runs in a statement that reads PII (or"
                " what dbgate cannot follow), which may decide whether it runs, and keeps"
                " what it is given where a later statement reads it back"
            )
        else:
            for fn, level, where in self.draws[draws:]:
                chosen = level.level_chosen()
                # rows kept at several levels (a UNION ALL of branches, each a bit
                # repeated 2^k times) are counted as a value, not a count
                several = len(level.level_asked()[1]) > 1
                if where not in counted or chosen.pii or chosen.unknown or several:
                    what = f"{fn}()" if fn != "TABLESAMPLE" else "TABLESAMPLE without REPEATABLE"
                    why = (
                        f"{what} draws from the session's random generator in a statement"
                        " that reads PII (or what dbgate cannot follow), which may decide"
                        " how many times it runs: the next random() reads the count back"
                    )
                    break
        if why is not None and why not in self.r.pii_writes:
            self.r.pii_writes.append(why)

    def unknown(self, why: str, computed: bool = True) -> Lin:
        """A value the walk cannot follow. ``computed`` False: a name the walk could not
        resolve (an output's alias in ORDER BY), whose value is walked where it is
        defined; not noted in ``seen``."""
        if why not in self.r.unknown_reasons:
            self.r.unknown_reasons.append(why)
        if computed and self.seen is not None:
            self.seen = self.seen | UNKNOWN_LIN
        return UNKNOWN_LIN

    def met(self, level: Scope, item: Item, lin: Lin, column: str = "*") -> Lin:
        """Note a column reference for the predicate being walked (``choose``):
        ``column`` is its name, ``*`` for a whole row."""
        if self.refs is not None:
            self.refs.append((level, item, lin, column))
        if self.seen is not None:
            self.seen = self.seen | lin
        return lin

    def met_opaque(self, level: Scope, before: int) -> None:
        """An opaque function given no column (``query_to_xml('...')``, ``secret()``)
        reads data of its own: for ``choose`` it is a row source of its own, never the
        row being chosen. Given columns (``get_email(c.id)``), it is taken as theirs."""
        if self.refs is not None and len(self.refs) == before:
            self.refs.append((level, OPAQUE, UNKNOWN_LIN, "*"))

    def met_varying(self, level: Scope) -> None:
        """A built-in that may return another value for each row (``random()``,
        ``nextval``, ``clock_timestamp()``: VOLATILE) is, for ``choose``, a row source
        of its own: after ``setseed(0.5)`` the agent knows what each row's call
        returns, so ``ascii(substr(email, (random() * 20)::int, 1)) & 4 <> 0`` tests
        another bit in each row, as a column of the row would."""
        if self.refs is not None:
            self.refs.append((level, VARYING, CLEAN, "*"))
