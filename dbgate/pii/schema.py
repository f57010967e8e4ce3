"""What dbgate knows of the upstream schema, for PII decisions: a frozen snapshot.

The snapshot is loaded with asyncpg in a handful of catalog queries (relations and
their columns with type OIDs, attribute numbers and comments; view definitions;
inheritance; types; functions) and then never changes: a refresh builds a new one
and swaps it in, so planning never sees half a schema. ``version`` increases with
every load, and plans cached under an older version are planned again.

Why each piece is here:

* relation OID + attribute number: RowDescription names the origin of every plain
  column reference that way, which is the cheapest and most exact PII decision;
* names, search path, columns: lineage resolves the SQL the agent wrote;
* view definitions: a view column carries PII when its definition says so;
* inheritance: a partition or child table inherits its parent's PII columns;
* foreign keys: a column that references a PII column, or that a PII column
  references, holds the same values;
* types: arrays, domains and composite types decide how a value is pseudonymized;
* functions: which calls are PostgreSQL's own (values flow from arguments to the
  result) and which are user code (opaque: the result's provenance is unknown).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Column",
    "FunctionInfo",
    "Relation",
    "SchemaSnapshot",
    "TypeInfo",
    "load_schema",
]

_versions = itertools.count(1)

RELKINDS = ("r", "v", "m", "f", "p", "c")  # table, view, matview, foreign, partitioned, composite


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    attnum: int
    type_oid: int
    comment: str | None = None
    #: a generated column's expression (``pg_get_expr`` of its default), over the
    #: columns of its own row: ``lower(full_name)``, ``to_tsvector(address)``
    generated: str | None = None
    #: its collation is not deterministic (ICU, ``deterministic = false``): equal
    #: under it is not equal byte for byte, and a tailoring may compare only a part
    nondeterministic: bool = False
    #: a foreign table's column that reads another name on the remote server
    #: (``OPTIONS (column_name 'email')``): that column's values, under a local name
    remote_name: str | None = None
    #: its DEFAULT calls a function PostgreSQL does not ship, in a language that may
    #: read tables (``DEFAULT pick_contact()``): the value stored may be anything that
    #: function read
    coded_default: bool = False
    #: a plain column's DEFAULT expression (``pg_get_expr``), when it calls only
    #: PostgreSQL's own functions: ``now()``, ``current_query()``
    default: str | None = None


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind
    row_type: int  # pg_class.reltype: the composite type of a whole-row reference
    columns: tuple[Column, ...]
    definition: str | None = None  # views and materialized views: pg_get_viewdef
    parents: tuple[int, ...] = ()  # pg_inherits
    #: Rewrite rules of its own (a view's ``_RETURN`` aside): a write to it may run
    #: other statements, and return their rows (``DO ALSO SELECT ...``).
    rules: bool = False
    #: Triggers of its own or of a child or partition (not the internal ones of foreign
    #: keys): a write to it runs code that may read anything and say it in a notice or
    #: an error.
    triggers: bool = False
    #: Row-level security on, with policies: a read of it runs their expressions, code
    #: the statement does not show, which may read PII and say it in an error
    #: (``current_setting('x.' || (SELECT full_name …))`` in a ``USING`` clause).
    policies: bool = False
    #: Those policies call a function PostgreSQL does not ship, in a language that may
    #: read tables: a read runs it, and it may keep the text it runs under
    policy_code: bool = False
    #: Column defaults or CHECK constraints (of its own or of a child or partition) that
    #: call a function PostgreSQL does not ship, in a language that may read tables: a
    #: write runs it, and it may say what it read in an error (as a trigger may).
    code: bool = False
    #: A write to it cascades (a foreign key's ``ON DELETE``/``ON UPDATE`` ``CASCADE``,
    #: ``SET NULL`` or ``SET DEFAULT``) into a relation whose own rules, triggers or
    #: coded defaults run: the relation's name (qualified), or "" when none
    cascades: str = ""
    #: Columns a built-in full-text trigger fills (``tsvector_update_trigger(tsv,
    #: 'pg_catalog.english', title, body)``): (the filled column, the columns it is
    #: made of), each by name
    fed: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    name: str
    kind: str  # pg_type.typtype: b base, c composite, d domain, e enum, p pseudo, r range, m multirange
    elem: int = 0  # for array types: the element type
    base: int = 0  # for domains: the base type
    relid: int = 0  # for composite types: the relation
    category: str = ""  # pg_type.typcategory ('A' array, 'S' string ...)
    delim: str = ","
    #: for range types: the subtype; for multirange types: the range type
    subtype: int = 0
    #: for enum types: the labels, in their sort order
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    oid: int
    schema: str
    name: str
    returns_set: bool
    ret_type: int
    out_names: tuple[str, ...] | None  # OUT/TABLE parameter names, None when there are none
    language: str = "internal"

    @property
    def builtin(self) -> bool:
        return self.schema == "pg_catalog"


@dataclass
class SchemaSnapshot:
    """Relations, types and functions of one database, as of one load."""

    relations: dict[int, Relation] = field(default_factory=dict)
    types: dict[int, TypeInfo] = field(default_factory=dict)
    functions: dict[str, list[FunctionInfo]] = field(default_factory=dict)
    search_path: tuple[str, ...] = ("public",)
    #: Foreign keys, one pair of columns each: (relation oid, attnum, referenced
    #: relation oid, referenced attnum). Both columns hold the same values.
    foreign_keys: tuple[tuple[int, int, int, int], ...] = ()
    #: True for hand-made snapshots in tests: unknown function names count as built-in.
    assume_builtin_functions: bool = False
    #: Names of operators the database defines itself over functions in a language
    #: that may read tables (SQL, PL/pgSQL ...; not C or internal): ``1 + 'x'::text``
    #: may call one, whose body reads what it likes, as a user function does.
    coded_operators: frozenset[str] = frozenset()
    #: ... and names of the types a cast the database defines over such a function
    #: converts to (``1::wrap`` calling ``CREATE CAST (int AS wrap) WITH FUNCTION f``)
    coded_casts: frozenset[str] = frozenset()
    version: int = field(default_factory=lambda: next(_versions))
    by_name: dict[str, list[Relation]] = field(default_factory=dict, init=False)
    by_row_type: dict[int, Relation] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        order = {s: i for i, s in enumerate(("pg_catalog", *self.search_path))}
        for rel in self.relations.values():
            self.by_name.setdefault(rel.name, []).append(rel)
            if rel.row_type:
                self.by_row_type[rel.row_type] = rel
        for rels in self.by_name.values():
            rels.sort(key=lambda r: (order.get(r.schema, len(order)), r.oid))

    def same_as(self, other: SchemaSnapshot) -> bool:
        """Whether ``other`` describes the same schema (its version aside): a reload
        that found nothing changed keeps the old snapshot and what was built on it."""
        return (
            self.search_path == other.search_path
            and self.foreign_keys == other.foreign_keys
            and self.relations == other.relations
            and self.types == other.types
            and self.functions == other.functions
            and self.coded_operators == other.coded_operators
            and self.coded_casts == other.coded_casts
        )

    def lookup(self, name: str, schema: str | None = None) -> list[Relation]:
        """Relations a (possibly unqualified) name may denote, most likely first.

        Unqualified names return every schema's relation of that name: the agent's
        search_path is its own (``SET search_path``), so PII decisions take the union.
        """
        rels = self.by_name.get(name, [])
        if schema is not None:
            return [r for r in rels if r.schema == schema]
        return list(rels)

    def functions_named(self, name: str, schema: str | None = None) -> list[FunctionInfo]:
        funcs = self.functions.get(name, [])
        if schema is not None:
            return [f for f in funcs if f.schema == schema]
        return funcs

    @classmethod
    def build(
        cls,
        tables: Mapping[str, Iterable[tuple[str, int] | tuple[str, int, bool] | str]],
        views: Mapping[str, str] | None = None,
        comments: Mapping[str, str] | None = None,
        search_path: tuple[str, ...] = ("public",),
        rules: Iterable[str] = (),
        triggers: Iterable[str] = (),
        policies: Iterable[str] = (),
        code: Iterable[str] = (),
        foreign_keys: Iterable[tuple[str, str]] = (),
    ) -> SchemaSnapshot:
        """A snapshot made by hand (tests, tools): ``{"public.t": [("c", type_oid), ...]}``.

        Functions are not listed, so every function name counts as PostgreSQL's own.
        ``rules``/``triggers``/``policies``/``code``: the relations (qualified) that
        have some of their own. ``foreign_keys``: ``("public.t.c", "public.u.d")``, t.c
        references u.d.
        """
        rules, triggers = frozenset(rules), frozenset(triggers)
        policies, code = frozenset(policies), frozenset(code)
        relations: dict[int, Relation] = {}
        oid = 100_000
        comments = comments or {}
        for kind, items in (("r", tables), ("v", {k: () for k in (views or {})})):
            for qualified, cols in items.items():
                schema, _, name = qualified.rpartition(".")
                oid += 2
                columns = []
                for i, c in enumerate(cols, start=1):
                    # (name, type) or (name, type, True): its collation is not deterministic
                    cname, ctype, *nondet = (c, 25) if isinstance(c, str) else c
                    columns.append(
                        Column(
                            cname,
                            i,
                            ctype,
                            comments.get(f"{qualified}.{cname}"),
                            nondeterministic=bool(nondet and nondet[0]),
                        )
                    )
                definition = (views or {}).get(qualified) if kind == "v" else None
                relations[oid] = Relation(
                    oid,
                    schema or "public",
                    name,
                    kind,
                    oid + 1,
                    tuple(columns),
                    definition,
                    rules=qualified in rules,
                    triggers=qualified in triggers,
                    policies=qualified in policies,
                    code=qualified in code,
                )
        attrs = {
            f"{r.qualified}.{c.name}": (r.oid, c.attnum)
            for r in relations.values()
            for c in r.columns
        }
        keys = tuple((*attrs[a], *attrs[b]) for a, b in foreign_keys)
        return cls(
            relations=relations,
            search_path=search_path,
            foreign_keys=keys,
            assume_builtin_functions=True,
        )


_RELATIONS = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind, c.reltype,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END AS definition,
       c.relhasrules AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_rewrite w
           WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN') AS rules,
       c.relhastriggers AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_trigger t
           WHERE t.tgrelid = c.oid AND NOT t.tgisinternal) AS triggers,
       c.relrowsecurity AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) AS policies
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind::text = ANY($1::text[])
"""
#: What calls a function not in pg_catalog, written in a language that may run queries
#: (not C or internal): the dependency rows of defaults, constraints and domains (the
#: first CTE of the two queries below).
_CALLS = """
WITH RECURSIVE calls AS (
    SELECT dep.classid, dep.objid
    FROM pg_catalog.pg_depend dep
    JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang
    WHERE dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
      AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace
      AND l.lanname NOT IN ('c', 'internal')
), """
#: Relations whose column defaults or CHECK constraints, or the CHECK constraints of
#: their columns' domains (and of the domains those are over), call a function not in
#: pg_catalog, written in a language that may run queries (not C or internal)
_CODE_IN_DEFAULTS = (
    _CALLS
    + """coded_types AS (
    SELECT k.contypid AS oid
    FROM calls JOIN pg_catalog.pg_constraint k
      ON calls.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
     AND k.oid = calls.objid AND k.contypid <> 0
    UNION
    SELECT t.oid FROM pg_catalog.pg_type t JOIN coded_types c ON t.typbasetype = c.oid
)
SELECT d.adrelid AS oid
FROM calls JOIN pg_catalog.pg_attrdef d
  ON calls.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.oid = calls.objid
UNION
SELECT k.conrelid
FROM calls JOIN pg_catalog.pg_constraint k
  ON calls.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
 AND k.oid = calls.objid AND k.contype = 'c' AND k.conrelid <> 0
UNION
SELECT a.attrelid
FROM pg_catalog.pg_attribute a JOIN coded_types c ON a.atttypid = c.oid
WHERE a.attnum > 0 AND NOT a.attisdropped
"""
)
#: Columns whose DEFAULT calls such a function, or whose domain's default does (of
#: its own, or of the domain it is over, when it has none of its own): a generated
#: column's expression is followed by lineage instead
_CODED_DEFAULTS = (
    _CALLS
    + """coded_types AS (
    SELECT t.oid FROM calls JOIN pg_catalog.pg_type t
      ON calls.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND t.oid = calls.objid
     AND t.typtype = 'd' AND t.typdefaultbin IS NOT NULL
    UNION
    SELECT t.oid FROM pg_catalog.pg_type t JOIN coded_types c
      ON t.typbasetype = c.oid AND t.typdefaultbin IS NULL
)
SELECT a.attrelid AS adrelid, a.attnum AS adnum
FROM calls JOIN pg_catalog.pg_attrdef d
  ON calls.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.oid = calls.objid
JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE a.attgenerated = ''
UNION
SELECT a.attrelid, a.attnum
FROM pg_catalog.pg_attribute a JOIN coded_types c ON a.atttypid = c.oid
WHERE a.attnum > 0 AND NOT a.attisdropped AND NOT a.atthasdef
"""
)
#: Triggers of the built-in full-text functions: their arguments name the column they
#: fill and the columns they make it of
_FULL_TEXT_TRIGGERS = """
SELECT t.tgrelid, t.tgargs
FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
  AND p.proname IN ('tsvector_update_trigger', 'tsvector_update_trigger_column')
"""
_COLUMNS = """
SELECT a.attrelid, a.attname, a.attnum, a.atttypid, d.description,
       CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(g.adbin, g.adrelid)
       END AS generated,
       CASE WHEN a.attgenerated = '' AND a.atthasdef AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_depend dep
                JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid
                WHERE dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                  AND dep.objid = g.oid
                  AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                  AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace)
            THEN pg_catalog.pg_get_expr(g.adbin, g.adrelid) END AS default_expr,
       a.atthasdef,
       COALESCE(co.collisdeterministic, true) AS deterministic,
       (SELECT substr(o, 13) FROM pg_catalog.unnest(a.attfdwoptions) o
        WHERE o LIKE 'column\\_name=%' LIMIT 1) AS remote_name
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid AND c.relkind::text = ANY($1::text[])
LEFT JOIN pg_catalog.pg_description d
       ON d.objoid = a.attrelid AND d.classoid = 'pg_catalog.pg_class'::regclass
      AND d.objsubid = a.attnum
LEFT JOIN pg_catalog.pg_attrdef g ON g.adrelid = a.attrelid AND g.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
#: Domains, with their DEFAULT expression when it calls only PostgreSQL's own functions
#: (one calling a function of the database's own is a coded default, above): a column
#: of a domain with no default of its own takes the domain's, or that of the domain it
#: is over
_DOMAIN_DEFAULTS = """
SELECT t.oid, t.typbasetype, t.typdefaultbin IS NOT NULL AS has_default,
       CASE WHEN t.typdefaultbin IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_depend dep
                JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid
                WHERE dep.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                  AND dep.objid = t.oid
                  AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                  AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace)
            THEN pg_catalog.pg_get_expr(t.typdefaultbin, 0) END AS default_expr
FROM pg_catalog.pg_type t WHERE t.typtype = 'd'
"""


def _domain_default(type_oid: int, domains: dict[int, Any]) -> str | None:
    """The DEFAULT a column of type ``type_oid`` with none of its own takes: its
    domain's, or, where that has none, the one of the domain it is over."""
    seen: set[int] = set()
    while type_oid in domains and type_oid not in seen:
        seen.add(type_oid)
        d = domains[type_oid]
        if d["has_default"]:
            return d["default_expr"]  # type: ignore[no-any-return]
        type_oid = d["typbasetype"]
    return None


#: Relations whose row-level security policies call such a function
_CODE_IN_POLICIES = (
    _CALLS
    + """pols AS (SELECT 1)
SELECT DISTINCT p.polrelid AS oid
FROM calls JOIN pg_catalog.pg_policy p
  ON calls.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND p.oid = calls.objid
"""
)
#: Foreign keys whose action writes the referencing rows when the referenced ones change
_CASCADING_KEYS = """
SELECT k.conrelid, k.confrelid FROM pg_catalog.pg_constraint k
WHERE k.contype = 'f'
  AND (k.confdeltype::text IN ('c', 'n', 'd') OR k.confupdtype::text IN ('c', 'n', 'd'))
"""


def _cascades(keys: list[tuple[int, int]], hidden: set[int]) -> dict[int, int]:
    """Of each relation a write to which cascades into one in ``hidden`` (its own code
    runs), through a chain of cascading keys: that relation."""
    out: dict[int, int] = {}
    changed = True
    while changed:
        changed = False
        for referencing, referenced in keys:
            if referenced in out or referenced in hidden:
                continue
            if referencing in hidden:
                out[referenced] = referencing
                changed = True
            elif referencing in out:
                out[referenced] = out[referencing]
                changed = True
    return out


_INHERITS = "SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits"
_FOREIGN_KEYS = """
SELECT k.conrelid, k.conkey, k.confrelid, k.confkey
FROM pg_catalog.pg_constraint k WHERE k.contype = 'f'
"""
_TYPES = """
SELECT t.oid, t.typname, t.typtype::text AS typtype, t.typelem, t.typbasetype, t.typrelid,
       t.typcategory::text AS typcategory, t.typdelim::text AS typdelim,
       t.typlen,
       COALESCE(r.rngsubtype, m.rngtypid, 0::pg_catalog.oid) AS subtype,
       CASE WHEN t.typtype = 'e' THEN
         ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
               WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
       END AS labels
FROM pg_catalog.pg_type t
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
LEFT JOIN pg_catalog.pg_range m ON m.rngmultitypid = t.oid
"""
_FUNCTIONS = """
SELECT p.oid, n.nspname, p.proname, p.proretset, p.prorettype, l.lanname,
       CASE WHEN p.proargmodes IS NOT NULL THEN
         ARRAY(SELECT p.proargnames[i] FROM generate_subscripts(p.proargmodes, 1) AS i
               WHERE p.proargmodes[i] IN ('o', 'b', 't'))
       END AS out_names
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
"""

_CODED_OPERATORS = """
SELECT DISTINCT o.oprname
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE l.lanname NOT IN ('c', 'internal')
  AND (o.oprnamespace <> 'pg_catalog'::pg_catalog.regnamespace
       OR p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace)
"""

_CODED_CASTS = """
SELECT DISTINCT t.typname
FROM pg_catalog.pg_cast c
JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE l.lanname NOT IN ('c', 'internal')
  AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace
"""


def _with_ancestors(oids: set[int], parents: Mapping[int, Iterable[int]]) -> set[int]:
    """``oids`` and every relation they inherit from or are partitions of: an UPDATE or
    DELETE of a parent reaches its children's rows, and an INSERT into a partitioned
    table lands in a partition, so their triggers fire for a write to the parent."""
    out = set(oids)
    todo = list(oids)
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in out:
                out.add(parent)
                todo.append(parent)
    return out


async def load_schema(conn: Any) -> SchemaSnapshot:
    """Read a snapshot through an asyncpg connection (any role that can read pg_catalog).

    Runs in one REPEATABLE READ read-only transaction, so the pieces agree.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        kinds = list(RELKINDS)
        rel_rows = await conn.fetch(_RELATIONS, kinds)
        col_rows = await conn.fetch(_COLUMNS, kinds)
        domains = {r["oid"]: r for r in await conn.fetch(_DOMAIN_DEFAULTS)}
        inh_rows = await conn.fetch(_INHERITS)
        fk_rows = await conn.fetch(_FOREIGN_KEYS)
        cascading_rows = await conn.fetch(_CASCADING_KEYS)
        policy_rows = await conn.fetch(_CODE_IN_POLICIES)
        code_rows = await conn.fetch(_CODE_IN_DEFAULTS)
        coded_rows = await conn.fetch(_CODED_DEFAULTS)
        fts_rows = await conn.fetch(_FULL_TEXT_TRIGGERS)
        type_rows = await conn.fetch(_TYPES)
        func_rows = await conn.fetch(_FUNCTIONS)
        op_rows = await conn.fetch(_CODED_OPERATORS)
        cast_rows = await conn.fetch(_CODED_CASTS)
        search_path = await conn.fetchval("SELECT pg_catalog.current_schemas(false)")
    coded_defaults = {(r["adrelid"], r["adnum"]) for r in coded_rows}
    fed: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
    for r in fts_rows:
        # tgargs: the arguments, each ended by a NUL: (column, config, source, ...)
        args = [a.decode("utf-8", "replace") for a in bytes(r["tgargs"] or b"").split(b"\0")]
        if len(args) >= 3:
            fed.setdefault(r["tgrelid"], []).append((args[0], tuple(a for a in args[2:] if a)))
    columns: dict[int, list[Column]] = {}
    for r in col_rows:
        columns.setdefault(r["attrelid"], []).append(
            Column(
                r["attname"],
                r["attnum"],
                r["atttypid"],
                r["description"],
                r["generated"],
                not r["deterministic"],
                r["remote_name"],
                (r["attrelid"], r["attnum"]) in coded_defaults,
                r["default_expr"]
                if r["atthasdef"] or r["generated"]
                else _domain_default(r["atttypid"], domains),
            )
        )
    parents: dict[int, list[int]] = {}
    for r in inh_rows:
        parents.setdefault(r["inhrelid"], []).append(r["inhparent"])
    triggered = _with_ancestors({r["oid"] for r in rel_rows if r["triggers"]}, parents)
    coded = _with_ancestors({r["oid"] for r in code_rows}, parents)
    cascades = _cascades(
        [(r["conrelid"], r["confrelid"]) for r in cascading_rows],
        triggered | coded | {r["oid"] for r in rel_rows if r["rules"]},
    )
    names = {r["oid"]: f"{r['nspname']}.{r['relname']}" for r in rel_rows}
    policed = {r["oid"] for r in policy_rows}
    relations = {
        r["oid"]: Relation(
            r["oid"],
            r["nspname"],
            r["relname"],
            r["relkind"],
            r["reltype"],
            tuple(columns.get(r["oid"], ())),
            r["definition"],
            tuple(parents.get(r["oid"], ())),
            r["rules"],
            r["oid"] in triggered,
            policies=r["policies"],
            code=r["oid"] in coded,
            policy_code=r["oid"] in policed,
            cascades=names.get(cascades.get(r["oid"], 0), ""),
            fed=tuple(fed.get(r["oid"], ())),
        )
        for r in rel_rows
    }
    types = {
        r["oid"]: TypeInfo(
            r["oid"],
            r["typname"],
            r["typtype"],
            r["typelem"] if r["typcategory"] == "A" and r["typlen"] == -1 else 0,
            r["typbasetype"],
            r["typrelid"],
            r["typcategory"],
            r["typdelim"],
            r["subtype"],
            tuple(r["labels"] or ()),
        )
        for r in type_rows
    }
    functions: dict[str, list[FunctionInfo]] = {}
    for r in func_rows:
        out = tuple(n or "" for n in r["out_names"]) if r["out_names"] else None
        functions.setdefault(r["proname"], []).append(
            FunctionInfo(
                r["oid"],
                r["nspname"],
                r["proname"],
                r["proretset"],
                r["prorettype"],
                out,
                r["lanname"],
            )
        )
    foreign_keys = tuple(
        (r["conrelid"], a, r["confrelid"], b)
        for r in fk_rows
        for a, b in zip(r["conkey"] or (), r["confkey"] or (), strict=False)
    )
    return SchemaSnapshot(
        relations=relations,
        types=types,
        functions=functions,
        coded_operators=frozenset(r["oprname"] for r in op_rows),
        coded_casts=frozenset(r["typname"] for r in cast_rows),
        search_path=tuple(search_path or ("public",)),
        foreign_keys=foreign_keys,
    )
