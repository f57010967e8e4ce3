"""The catalog applied to one schema snapshot: every PII column by relation OID and name.

Built once per snapshot (at start and after each refresh), then read-only:

* tables, partitioned and foreign tables: the catalog's decision per column
  (:meth:`dbgate.pii.catalog.Catalog.classify`), plus whatever a parent table marks
  (a partition or child inherits its parent's PII columns, whatever it is called),
  plus the PII fields of a column's composite type (``contact contact_t``);
* foreign keys: a column that references a PII column, or that a PII column
  references, holds the same values (``buyer text REFERENCES customers(email)``), so
  every column a chain of foreign keys links to a PII column is PII with no entry;
  and a parent table's column holds its children's rows: one a partition's comment or
  catalog entry marks is PII in the parent (and so in the other partitions) too;
* generated columns: the lineage of their expression over the row's other columns,
  so ``name_lc text GENERATED ALWAYS AS (lower(full_name))`` is PII with no entry;
* a column a built-in full-text trigger fills (``tsvector_update_trigger(tsv, …,
  title, body)``): what its source columns hold; a column whose DEFAULT calls a
  function of the database's own that may read tables: unknown;
* views and materialized views: the lineage of their definition, so a view column
  that selects ``lower(email)`` is PII with no catalog entry; a catalog entry on the
  view column itself still wins (``none`` included: the operator's word is final);
* system views (``pg_catalog``, ``information_schema``): clean unless the catalog
  says otherwise — their definitions call internals that lineage would call opaque.

Catalog entries that name a column that does not exist become warnings, not errors:
the catalog may be ahead of a migration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dbgate.pii.catalog import Catalog
from dbgate.pii.entities import NONE
from dbgate.pii.lin import CLEAN, UNKNOWN_LIN, Lin, of_entity
from dbgate.pii.schema import Relation, SchemaSnapshot

__all__ = ["ColumnDecision", "Coverage"]

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
#: pg_class.relkind of relations whose columns hold stored values
_STORED_KINDS = frozenset({"r", "p", "f"})
TSVECTOR_OID = 3614


#: the most common defaults that call something, which read nothing (skipped, as the
#: snapshot may have thousands of them)
_PLAIN_DEFAULTS = frozenset(
    {
        "now()",
        "clock_timestamp()",
        "statement_timestamp()",
        "transaction_timestamp()",
        "gen_random_uuid()",
        "uuidv7()",
        "random()",
    }
)


def _worth_reading(default: str | None) -> bool:
    """Whether a column's DEFAULT may store what it read (``current_query()``,
    ``query_to_xml('select email …')``): any call but a sequence's next value (a
    constant or a cast of one calls nothing)."""
    if not default or "(" not in default or default in _PLAIN_DEFAULTS:
        return False
    return not (default.startswith("nextval('") and default.endswith("'::regclass)"))


@dataclass(frozen=True, slots=True)
class ColumnDecision:
    """Why one column is (or is not) PII: for ``dbgate pii scan`` and the docs."""

    relation: Relation
    column: str
    attnum: int
    entity: str | None
    why: str
    unknown: bool = False


@dataclass
class Coverage:
    snapshot: SchemaSnapshot
    catalog: Catalog
    #: (relation oid, attnum) -> Lin, for every relation column that is not clean
    by_attr: dict[tuple[int, int], Lin] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    decisions: list[ColumnDecision] = field(default_factory=list)
    _lins: dict[int, list[Lin]] = field(default_factory=dict, repr=False)
    #: views whose definition reads relations with row-level security policies (a read
    #: of the view runs them): those relations, by the view's oid
    policed_views: dict[int, list[str]] = field(default_factory=dict, repr=False)
    #: views whose definition runs code of the database's own (a user function, a view
    #: or policies that call one): what, by the view's oid (``Analysis.unseen_code``)
    coded_views: dict[int, str] = field(default_factory=dict, repr=False)
    #: views and materialized views whose definition chooses, keeps or orders its rows
    #: by PII: (chosen, asked, ordered) of the definition's output, by the view's oid
    #: (``view_rows``)
    _view_rows: dict[int, tuple[Lin, Lin, Lin]] = field(default_factory=dict, repr=False)
    _busy: set[int] = field(default_factory=set, repr=False)
    #: (relation oid, attnum) of columns unknown only for a default that calls the
    #: database's code: a foreign key does not carry that (see _linked_columns)
    _default_only: set[tuple[int, int]] = field(default_factory=set, repr=False)
    _referencing: frozenset[tuple[int, int]] = field(default=frozenset(), repr=False)
    #: (relation oid, attnum) -> what the columns a foreign key or table inheritance
    #: links it to hold, and the first of them, for the reason shown
    _linked: dict[tuple[int, int], tuple[Lin, str]] = field(default_factory=dict, repr=False)
    #: (relation oid, attnum) -> what the stored column held under the snapshot before
    #: this one (:meth:`kept_from`): DDL that takes a column's mark away — a ``pii:``
    #: comment replaced, a column or table renamed out of its name default or
    #: ``columns`` entry, its PII domain or composite type cast away, its foreign key
    #: dropped — does not take the values away, which a later read would return raw
    kept: Mapping[tuple[int, int], Lin] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        snap = self.snapshot
        self._referencing = frozenset((a, b) for a, b, _c, _d in snap.foreign_keys)
        self._compute_all()
        # A foreign key's columns hold the same values, and a parent's column its
        # children's: what one of them holds (by the catalog, a comment, a view ... or
        # another link) the others hold too. Each round starts over with what the
        # previous one found linked, until no column would hold more.
        own = dict(self.by_attr)  # before any link: a reason names one of these
        for _ in range(8):
            linked = self._linked_columns(own)
            if not any(
                self._takes_link(node)
                and (self.by_attr.get(node, CLEAN) | lin) != self.by_attr.get(node, CLEAN)
                for node, (lin, _why) in linked.items()
            ):
                break
            self._linked = linked
            self.by_attr, self._lins, self.decisions = {}, {}, []
            self._default_only = set()
            self.policed_views = {}
            self.coded_views = {}
            self._view_rows = {}
            self._compute_all()
        if snap.relations:  # an empty snapshot (before the first load) proves nothing
            self._check_catalog()

    def _takes_link(self, node: tuple[int, int]) -> bool:
        """Whether a column takes what a link brings: a stored one the catalog does not
        name (the operator's word is final)."""
        rel = self.snapshot.relations.get(node[0])
        if rel is None or rel.kind not in _STORED_KINDS:
            return False
        col = next((c for c in rel.columns if c.attnum == node[1]), None)
        return col is not None and self.catalog.column_rule(rel.schema, rel.name, col.name) is None

    def _compute_all(self) -> None:
        for rel in self.snapshot.relations.values():
            if rel.kind != "c":
                self.relation_lins(rel)

    def _linked_columns(
        self, own: dict[tuple[int, int], Lin]
    ) -> dict[tuple[int, int], tuple[Lin, str]]:
        """For every column a chain of foreign keys (or of parents and children) links to
        a PII column: the union of what the columns of its chain hold, and the first of
        them (by name) that holds PII of its own (``own``: before any link was
        followed)."""
        snap = self.snapshot
        # a read of a parent table reads its children's rows (partitions, inheritance
        # children): a column a child's comment or catalog entry marks is its parent's
        # column too (the parent's own PII reaches its children in _compute)
        pairs = list(snap.foreign_keys)
        for rel in snap.relations.values():
            for parent_oid in rel.parents:
                parent = snap.relations.get(parent_oid)
                if parent is None:
                    continue
                attnums = {c.name: c.attnum for c in parent.columns}
                for c in rel.columns:
                    if c.name in attnums:
                        pairs.append((rel.oid, c.attnum, parent.oid, attnums[c.name]))
        if not pairs:
            return {}
        up: dict[tuple[int, int], tuple[int, int]] = {}

        def root(a: tuple[int, int]) -> tuple[int, int]:
            while up.get(a, a) != a:
                up[a] = up.get(up[a], up[a])  # path halving: chains of keys stay short
                a = up[a]
            return a

        for rel_oid, att, frel, fatt in pairs:
            a, b = root((rel_oid, att)), root((frel, fatt))
            if a != b:
                up[a] = b
        held: dict[tuple[int, int], Lin] = {}
        names: dict[tuple[int, int], list[str]] = {}
        # a column unknown only for its default's code holds values of the column a key
        # links it to (``created_by int DEFAULT current_user_id() REFERENCES
        # users(id)``: ids): that guess would make every key to users(id) unknown
        keyed = {(a, b) for a, b, _c, _d in snap.foreign_keys}
        keyed |= {(c, d) for _a, _b, c, d in snap.foreign_keys}
        for node in up.keys() | set(up.values()):
            lin = self.by_attr.get(node)
            if lin is None or lin.clean or (node in self._default_only and node in keyed):
                continue
            r = root(node)
            held[r] = held.get(r, CLEAN) | Lin(lin.entities, lin.unknown)
            if node in own:
                rel = self.snapshot.relations[node[0]]
                col = next(c.name for c in rel.columns if c.attnum == node[1])
                names.setdefault(r, []).append(f"{rel.qualified}.{col}")
        return {
            node: (held[r], min(names.get(r, ["another column"])))
            for node in up.keys() | set(up.values())
            if (r := root(node)) in held
        }

    def kept_from(self, snapshot: SchemaSnapshot) -> dict[tuple[int, int], Lin]:
        """What this coverage's stored columns hold that are still in ``snapshot`` (same
        relation OID and attribute number: a rename or a new comment keeps both), for
        the coverage of ``snapshot`` to keep (:attr:`kept`)."""
        kept: dict[tuple[int, int], Lin] = {}
        for (oid, attnum), lin in self.by_attr.items():
            rel = snapshot.relations.get(oid)
            if rel is None or rel.kind not in _STORED_KINDS or not (lin.pii or lin.unknown):
                continue
            if any(c.attnum == attnum for c in rel.columns):
                kept[(oid, attnum)] = Lin(lin.entities, lin.unknown)
        return kept

    # ------------------------------------------------------------------ lookups
    def attr(self, table_oid: int, attnum: int) -> Lin | None:
        """Lin of a RowDescription origin; None when the relation is not in the snapshot,
        or it is and the column is not: a column added since the snapshot was taken (by
        a migration that did not pass through dbgate) is not known to be clean."""
        lin = self.by_attr.get((table_oid, attnum))
        if lin is not None:
            return lin
        rel = self.snapshot.relations.get(table_oid)
        if rel is None:
            return None
        if attnum == 0:  # a whole-row reference (SELECT c FROM customers c): every column
            out = CLEAN
            for col_lin in self.relation_lins(rel):
                out = out | col_lin
            return out
        # columns are in attribute order; a new one gets a number past every other's
        if not rel.columns or attnum > rel.columns[-1].attnum:
            return None
        return CLEAN

    def stored(self, table_oid: int) -> bool:
        """Whether the columns of relation ``table_oid`` hold their values as stored (a
        table, partitioned or foreign table), not as a view's definition makes them."""
        rel = self.snapshot.relations.get(table_oid)
        return rel is not None and rel.kind in _STORED_KINDS

    def relation_lins(self, rel: Relation) -> list[Lin]:
        """Lin of each column of ``rel``, in attribute order (computed once)."""
        done = self._lins.get(rel.oid)
        if done is not None:
            return done
        if rel.oid in self._busy:  # a view defined through itself: cannot follow
            return [UNKNOWN_LIN] * len(rel.columns)
        self._busy.add(rel.oid)
        try:
            lins = self._compute(rel)
        finally:
            self._busy.discard(rel.oid)
        self._lins[rel.oid] = lins
        for col, lin in zip(rel.columns, lins, strict=True):
            if lin is not CLEAN and not lin.clean:
                self.by_attr[(rel.oid, col.attnum)] = lin
        return lins

    def _compute(self, rel: Relation) -> list[Lin]:
        catalog = self.catalog
        derived: list[Lin] | None = None
        if rel.kind in ("v", "m") and rel.definition and rel.schema not in SYSTEM_SCHEMAS:
            derived = self._view_lins(rel)
        inherited: dict[str, Lin] = {}
        for parent_oid in rel.parents:
            parent = self.snapshot.relations.get(parent_oid)
            if parent is not None:
                for c, lin in zip(parent.columns, self.relation_lins(parent), strict=True):
                    if not lin.clean:
                        inherited[c.name] = inherited.get(c.name, CLEAN) | lin
        lins = []
        reasons = []
        for i, col in enumerate(rel.columns):
            entity, why = catalog.classify(rel.schema, rel.name, col.name, col.comment)
            rule = catalog.column_rule(rel.schema, rel.name, col.name)
            if rule is not None:  # the operator's explicit word, views included
                lin = CLEAN if entity is None else of_entity(entity)
            else:
                lin = of_entity(entity) if entity is not None else CLEAN
                if derived is not None and i < len(derived):
                    lin = lin | derived[i]
                    if derived[i].pii and entity is None:
                        why = f"view definition derives it from {', '.join(sorted(derived[i].entities))}"
                    elif derived[i].unknown and entity is None:
                        why = "view definition could not be followed (treated as PII)"
                if col.name in inherited:
                    lin = lin | inherited[col.name]
                    why = why or "inherited from a parent table"
                linked = self._linked.get((rel.oid, col.attnum))
                if linked is not None and rel.kind in _STORED_KINDS:
                    lin = lin | linked[0]
                    why = why or f"a foreign key or table inheritance links it to {linked[1]}"
                held = self._type_lin(col.type_oid)
                if not held.clean:
                    lin = lin | held
                    why = why or "its composite type has PII fields"
                if entity is None:
                    named = self._domain_rule(col.type_oid)
                    if named is not None:
                        lin = lin | of_entity(named[1])
                        why = f"its type {named[0]!r} is named as PII"
                if entity is None and col.remote_name:
                    remote = catalog.name_rule(col.remote_name)
                    if remote is not None and remote.entity != NONE:
                        lin = lin | of_entity(remote.entity)
                        why = why or f"it reads the remote column {col.remote_name!r}"
                was = self.kept.get((rel.oid, col.attnum)) if rel.kind in _STORED_KINDS else None
                if was is not None and (lin | was) != lin:
                    lin = lin | was
                    why = why or "it held PII before a change of the schema (until a restart)"
                # a referencing column holds only values of the column it references
                if col.coded_default and (rel.oid, col.attnum) not in self._referencing:
                    if lin.clean:
                        self._default_only.add((rel.oid, col.attnum))
                    lin = lin | UNKNOWN_LIN
                    why = why or "its default calls a function of the database's own"
            lin = Lin(lin.entities, lin.unknown) if (lin.params or lin.token) else lin
            lins.append(lin)
            reasons.append(why)
        # triggers fill plain columns, which a generated column's expression may read
        whys: dict[str, str] = {}
        if rel.fed:
            whys.update(self._fed(rel, lins, catalog))
        if rel.triggers and rel.kind in _STORED_KINDS:
            whys.update(self._trigger_vectors(rel, lins, catalog))
        whys.update(self._generated(rel, lins, catalog))
        for col, lin, why in zip(rel.columns, lins, reasons, strict=True):
            self.decisions.append(
                ColumnDecision(
                    rel,
                    col.name,
                    col.attnum,
                    lin.entity() if not lin.clean else None,
                    whys.get(col.name) or why,
                    lin.unknown,
                )
            )
        return lins

    def _type_lin(self, type_oid: int, depth: int = 0) -> Lin:
        """What a value of type ``type_oid`` holds when it is (an array or domain of) a
        composite type: the union of its fields' (a column ``contact contact_t`` whose
        type has fields ``full_name`` and ``email`` holds both)."""
        t = self.snapshot.types.get(type_oid)
        if t is None or depth > 8:
            return CLEAN
        if t.elem or t.base:
            return self._type_lin(t.elem or t.base, depth + 1)
        rel = self.snapshot.relations.get(t.relid) if t.relid else None
        if rel is None or rel.schema in SYSTEM_SCHEMAS:
            return CLEAN
        out = CLEAN
        for lin in self.relation_lins(rel):
            out = out | lin
        return out

    def _domain_rule(self, type_oid: int) -> tuple[str, str] | None:
        """``(domain name, entity)`` when the column's type is a domain (or an array
        of one) named like a PII column (``CREATE DOMAIN email_address AS citext``:
        a column ``contact email_address`` holds e-mail addresses)."""
        for _ in range(8):
            t = self.snapshot.types.get(type_oid)
            if t is None:
                return None
            if t.kind == "d":
                rule = self.catalog.name_rule(t.name)
                if rule is not None and rule.entity != NONE:
                    return t.name, rule.entity
            type_oid = t.elem or t.base
            if not type_oid:
                return None
        return None

    def _generated(self, rel: Relation, lins: list[Lin], catalog: Catalog) -> dict[str, str]:
        """Add to ``lins`` what each generated column's expression reads (it may only
        read the row's other, plain columns, whose ``lins`` are final); an explicit
        catalog entry on the column still wins. Returns why, per column changed."""
        whys: dict[str, str] = {}
        if not any(c.generated or _worth_reading(c.default) for c in rel.columns):
            return whys
        from dbgate.pii.lineage import analyze

        self._lins[rel.oid] = lins  # the plain columns, for the expressions' walk
        try:
            table = ".".join('"' + n.replace('"', '""') + '"' for n in (rel.schema, rel.name))
            for i, col in enumerate(rel.columns):
                expr = col.generated
                if not expr and (rel.oid, col.attnum) not in self._referencing:
                    expr = col.default if _worth_reading(col.default) else None
                if not expr or catalog.column_rule(rel.schema, rel.name, col.name):
                    continue
                analysis = analyze(f"SELECT {expr} FROM {table}", self)
                outs = [s.output for s in analysis.statements if s.output is not None]
                made = outs[0].at(0) if len(outs) == 1 else UNKNOWN_LIN
                made = Lin(made.entities, made.unknown)
                if not made.clean:
                    if not col.generated and lins[i].clean:
                        self._default_only.add((rel.oid, col.attnum))
                    lins[i] = lins[i] | made
                    what = "generated" if col.generated else "its default is made"
                    whys[col.name] = (
                        f"{what} from " + ", ".join(sorted(made.entities))
                        if made.pii
                        else f"{what} by an expression that could not be followed"
                    )
        finally:
            self._lins.pop(rel.oid, None)
        return whys

    def _fed(self, rel: Relation, lins: list[Lin], catalog: Catalog) -> dict[str, str]:
        """Add to ``lins`` what a built-in full-text trigger makes each column it fills
        of (``tsvector_update_trigger(tsv, 'pg_catalog.english', title, body)``: the
        words of ``title`` and ``body``, raw); an explicit catalog entry still wins."""
        whys: dict[str, str] = {}
        index = {c.name: i for i, c in enumerate(rel.columns)}
        for target, sources in rel.fed:
            i = index.get(target)
            if i is None or catalog.column_rule(rel.schema, rel.name, target):
                continue
            made = CLEAN
            for source in sources:
                j = index.get(source)
                made = made | (Lin(lins[j].entities, lins[j].unknown) if j is not None else CLEAN)
            if not made.clean:
                lins[i] = lins[i] | made
                whys[target] = "a full-text trigger fills it from " + ", ".join(
                    sorted(made.entities) or ["an unknown value"]
                )
        return whys

    def _trigger_vectors(self, rel: Relation, lins: list[Lin], catalog: Catalog) -> dict[str, str]:
        """A ``tsvector`` column of a table with triggers of the database's own, which
        no expression or built-in trigger is known to fill: such a trigger most often
        fills it from the row's text (``NEW.search := to_tsvector(NEW.body)``), whose
        words it holds raw; so it holds what the row's PII columns hold, as a guess
        (unknown too). The trigger's code is not read; a catalog entry still wins."""
        whys: dict[str, str] = {}
        filled = {target for target, _ in rel.fed}
        row = CLEAN
        for lin in lins:
            row = row | Lin(lin.entities, lin.unknown)
        if row.clean:
            return whys
        for i, col in enumerate(rel.columns):
            if (
                col.type_oid != TSVECTOR_OID
                or col.generated
                or col.name in filled
                or not lins[i].clean
                or catalog.column_rule(rel.schema, rel.name, col.name)
            ):
                continue
            lins[i] = lins[i] | row | UNKNOWN_LIN
            whys[col.name] = "a trigger of the table may fill it from " + ", ".join(
                sorted(row.entities) or ["an unknown value"]
            )
        return whys

    def _view_lins(self, rel: Relation) -> list[Lin]:
        from dbgate.pii.lineage import analyze

        analysis = analyze(rel.definition or "", self)
        if analysis.policies_met and rel.kind == "v":
            self.policed_views[rel.oid] = list(analysis.policies_met)
        code = analysis.unseen_code() if rel.kind == "v" else ""
        if code:
            self.coded_views[rel.oid] = code
        outs = [s.output for s in analysis.statements if s.output is not None]
        if len(outs) != 1:
            return [UNKNOWN_LIN] * len(rel.columns)
        out = outs[0]
        chosen, asked, ordered = (
            Lin(x.entities, x.unknown) if x.pii or x.unknown else CLEAN
            for x in (out.chosen, out.asked, out.ordered)
        )
        if chosen is not CLEAN or asked is not CLEAN or ordered is not CLEAN:
            self._view_rows[rel.oid] = (chosen, asked, ordered)
        return [out.at(i) for i in range(len(rel.columns))]

    def view_rows(self, rel: Relation) -> tuple[Lin, Lin, Lin] | None:
        """What chose, kept by their own PII, or ordered the rows of a view or
        materialized view (its definition's ``Output.chosen``, ``asked``, ``ordered``),
        or None: its columns carry the chosen part, but a ``count(*)`` of it reads
        none — ``SELECT count(*) FROM v`` over ``SELECT g FROM generate_series(1, 300)
        g, customers c WHERE c.id = 1 AND g < ascii(c.email)`` is the code."""
        self.relation_lins(rel)
        return self._view_rows.get(rel.oid)

    # ------------------------------------------------------------------ catalog check
    def _check_catalog(self) -> None:
        snap = self.snapshot
        for rule in self.catalog.columns:
            hit = any(
                rule.matches(rel.schema, rel.name, c.name)
                for rel in snap.relations.values()
                for c in rel.columns
            )
            if not hit:
                where = f"{rule.file}:{rule.line}: " if rule.file else ""
                what = "column" if rule.exact else "pattern"
                self.warnings.append(
                    f"{where}catalog {what} {rule.pattern!r} matches no column of the database"
                )
