"""Unique keys of the upstream database: what lets the classifier *prove* a statement narrow.

A read or write is statically bounded only when its predicate pins a unique key of
each table it reads rows from (docs/classifier.md, "Narrow by proof"). The classifier
cannot reach the database, so the keys come in as data: a :class:`KeyCatalog`, built
by :func:`key_catalog_from_rows` from the rows of :data:`KEYS_QUERY`, which the gate
runs upstream (as the agent's upstream role, or any role that sees the same tables),
caches, and runs again after DDL.

What counts as a unique key, and why each condition is there:

* a unique index that is valid and ready (``indisvalid``, ``indisready``): an index
  being built concurrently, or one whose build failed, enforces nothing yet;
* immediate (``indimmediate``): a ``DEFERRABLE`` unique constraint lets a transaction
  hold duplicates until it commits;
* not partial (``indpred IS NULL``): ``UNIQUE (email) WHERE active`` says nothing about
  the other rows;
* on plain columns (``indexprs IS NULL``): ``UNIQUE (lower(email))`` makes no plain
  column unique;
* only its key columns (the first ``indnkeyatts``): ``INCLUDE`` columns are carried,
  not constrained;
* not on a table with inheritance children unless the query says ``ONLY``: a unique
  index of a parent table (``relkind = 'r'`` with ``relhassubclass``) does not cover
  its children's rows, which a plain ``FROM parent`` also reads. Partitioned tables
  (``relkind = 'p'``) are fine: their unique indexes span every partition.

``NULL`` never equals anything, so a unique index that allows several ``NULL`` keys
still lets an equality match at most one row — except ``col = NULL`` written as a bare
``NULL``, which ``transform_null_equals`` turns into ``col IS NULL``. Turning that
setting on is ``escape``; the proof does not count a bare NULL as a pin either (best
effort: the normalized cache gives ``= NULL`` the entry of ``= 'x'``).

Every relation of the database is listed, with or without keys, so that an
unqualified name resolves as the server resolves it: through the ``search_path``, to
the first schema that has a relation of that name (a view named like a table in an
earlier schema hides the table, and a view has no keys). Temporary tables live in the
session's own ``pg_temp`` schema, which no other session sees; a statement that
names a temporary table the agent created (CREATE TEMP TABLE is ``ddl``, held by the
default pack) is judged by the keys of the permanent table of that name, if any.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEYS_QUERY", "KeyCatalog", "Relation", "key_catalog_from_rows"]

#: Unique column sets of one relation.
Keys = tuple[frozenset[str], ...]

#: The loader query: one row per (relation, unique key), plus one row with a NULL
#: key for every relation, so that relations without keys are known too. Columns:
#: ``schema``, ``relation``, ``relkind``, ``has_children`` (legacy inheritance),
#: ``key_columns`` (text[] or NULL), ``columns`` (every column of the relation, so an
#: unqualified name in a sub-select can be placed: ``id IN (SELECT customer_id FROM
#: orders WHERE ...)`` is not correlated only if ``orders`` has ``customer_id``).
#: Catalog schemas are left out: the classifier knows PostgreSQL's own relations and
#: never counts them as data. ``cascades_delete`` and ``cascade_update_columns`` say
#: which writes of the relation change rows of other tables through foreign keys
#: (``ON DELETE``/``ON UPDATE`` ``CASCADE``, ``SET NULL``, ``SET DEFAULT``): rows its
#: command tag does not count (a DELETE of a parent deletes its partitions' and
#: inheritance children's rows too, so their foreign keys count for it). ``has_rules``: rewrite rules (``CREATE RULE``) replace
#: or add to every write of it, and the tag counts what the rule ran, if anything.
KEYS_QUERY = """\
SELECT n.nspname AS schema, c.relname AS relation, c.relkind::text AS relkind,
       (c.relkind = 'r' AND c.relhassubclass) AS has_children,
       k.key_columns,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns,
       EXISTS (SELECT FROM pg_catalog.pg_constraint f
               WHERE f.contype = 'f' AND f.confdeltype IN ('c', 'n', 'd')
                 AND (f.confrelid = c.oid OR c.relhassubclass AND f.confrelid IN (
                      WITH RECURSIVE d(oid) AS (
                          SELECT h.inhrelid FROM pg_catalog.pg_inherits h
                          WHERE h.inhparent = c.oid
                          UNION
                          SELECT h.inhrelid FROM pg_catalog.pg_inherits h
                          JOIN d ON h.inhparent = d.oid)
                      SELECT oid FROM d))) AS cascades_delete,
       ARRAY(SELECT DISTINCT a.attname::text FROM pg_catalog.pg_constraint f
             CROSS JOIN LATERAL unnest(f.confkey) AS u(attnum)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = u.attnum
             WHERE f.confrelid = c.oid AND f.contype = 'f'
               AND f.confupdtype IN ('c', 'n', 'd')) AS cascade_update_columns,
       EXISTS (SELECT FROM pg_catalog.pg_rewrite r
               WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN') AS has_rules,
       ARRAY(WITH RECURSIVE up(oid, depth) AS (
                 SELECT h.inhparent, 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = c.oid
                 UNION
                 SELECT h.inhparent, up.depth + 1 FROM pg_catalog.pg_inherits h
                 JOIN up ON h.inhrelid = up.oid WHERE up.depth < 64)
             SELECT DISTINCT rn.nspname || '.' || rc.relname
             FROM up JOIN pg_catalog.pg_class rc ON rc.oid = up.oid
             JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_inherits p
                               WHERE p.inhrelid = up.oid)) AS accounts
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT array_agg(a.attname::text ORDER BY u.ord) AS key_columns
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS u(attnum, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum
    WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indisready
      AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
      AND u.ord <= i.indnkeyatts
    GROUP BY i.indexrelid
    -- unique under the index's collation, compared under the column's: a key only
    -- when they are the same (a case-insensitive column over a case-sensitive index
    -- has several rows equal to one value)
    HAVING bool_and(a.attcollation = 0 OR i.indcollation[u.ord - 1] = a.attcollation)
    UNION ALL
    SELECT NULL
) k ON true
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
ORDER BY 1, 2"""


@dataclass(frozen=True, slots=True)
class Relation:
    """What the classifier needs to know about one relation."""

    keys: Keys = ()
    #: A plain table with inheritance children: its keys hold only under ``ONLY``.
    has_children: bool = False
    #: Every column it has (empty when not known: then no unqualified name is placed).
    columns: frozenset[str] = frozenset()
    #: A foreign key of another table deletes or changes that table's rows when a row
    #: of this one is deleted (``ON DELETE CASCADE``, ``SET NULL``, ``SET DEFAULT``).
    cascades_delete: bool = False
    #: Columns whose update changes rows of another table through a foreign key.
    cascade_update_columns: frozenset[str] = frozenset()
    #: Rewrite rules (other than a view's own): a write of it runs the rules' actions.
    has_rules: bool = False
    #: The topmost ancestors of a partition or inheritance child (``schema.name``):
    #: its rows are theirs, read through them or directly, so rows-per-window limits
    #: count its reads against them. Empty for a relation with no parent.
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyCatalog:
    """Unique keys by relation, and the search path that resolves unqualified names.

    ``relations`` maps ``"schema.relation"`` (as PostgreSQL stores the names: no
    quotes, case kept) to :class:`Relation`. ``search_path`` is the session's path as
    schema names, ``$user`` already replaced (see :meth:`with_search_path`).
    ``version`` is the caller's token for this snapshot of the catalog (bump it after
    DDL): classifications are cached per (text, :attr:`cache_token`), never across
    snapshots or search paths.

    Immutable and hashable by token: share one between sessions and threads.
    """

    relations: Mapping[str, Relation] = field(default_factory=dict, compare=False, hash=False)
    search_path: tuple[str, ...] = ("public",)
    version: int | str = 0

    @property
    def cache_token(self) -> tuple[int | str, tuple[str, ...]]:
        """What a cached classification depends on: the snapshot and the path."""
        return (self.version, self.search_path)

    def with_search_path(self, path: Sequence[str], *, user: str = "") -> KeyCatalog:
        """The same keys seen through another search path (the session's, after SET).

        ``path`` as :func:`dbgate.policy.catalog_settings.split_identifier_list`
        returns it; ``$user`` becomes ``user`` as the server does.
        """
        resolved = tuple(user if s == "$user" else s for s in path if s != "$user" or user)
        return KeyCatalog(self.relations, resolved, self.version)

    def relation(self, schema: str | None, name: str) -> Relation | None:
        """The relation a statement means by ``schema.name`` (or ``name``), or None
        when it is not in the catalog (a temporary table, a relation created since
        the snapshot, a catalog relation)."""
        if schema is not None:
            return self.relations.get(f"{schema}.{name}")
        for s in self.search_path:
            if s in ("pg_catalog", "pg_temp"):
                continue
            found = self.relations.get(f"{s}.{name}")
            if found is not None:
                return found
        return None

    def schema_of(self, name: str) -> str | None:
        """The schema an unqualified ``name`` resolves to through the search path, or
        None when no schema of the path has it in the catalog."""
        for s in self.search_path:
            if s in ("pg_catalog", "pg_temp"):
                continue
            if f"{s}.{name}" in self.relations:
                return s
        return None

    def columns_of(self, schema: str | None, name: str) -> frozenset[str]:
        """Every column of the relation, empty when unknown."""
        rel = self.relation(schema, name)
        return rel.columns if rel is not None else frozenset()

    def keys_of(self, schema: str | None, name: str, *, only: bool = False) -> Keys:
        """Unique column sets of the relation, ``()`` when none can be trusted."""
        rel = self.relation(schema, name)
        if rel is None or (rel.has_children and not only):
            return ()
        return rel.keys


def key_catalog_from_rows(
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    *,
    search_path: Sequence[str] = ("$user", "public"),
    user: str = "",
    version: int | str = 0,
) -> KeyCatalog:
    """Build a :class:`KeyCatalog` from the rows of :data:`KEYS_QUERY` (tuples or
    mappings with its column names). Pure: the caller runs the query.

    Raises ValueError naming the row when a row does not have the query's shape.
    """
    keys: dict[str, list[frozenset[str]]] = {}
    children: dict[str, bool] = {}
    all_columns: dict[str, frozenset[str]] = {}
    cascades: dict[str, bool] = {}
    cascade_columns: dict[str, frozenset[str]] = {}
    rules: dict[str, bool] = {}
    roots: dict[str, tuple[str, ...]] = {}
    for i, row in enumerate(rows):
        names: Any = ()
        on_delete: Any = False
        on_update: Any = ()
        has_rules: Any = False
        accounts: Any = ()
        try:
            if isinstance(row, Mapping):
                schema, relation = row["schema"], row["relation"]
                has_children, columns = row["has_children"], row["key_columns"]
                names = row.get("columns") or ()
                on_delete = row.get("cascades_delete") or False
                on_update = row.get("cascade_update_columns") or ()
                has_rules = row.get("has_rules") or False
                accounts = row.get("accounts") or ()
            elif len(row) == 10:
                schema, relation, _kind, has_children, columns, names = row[:6]
                on_delete, on_update, has_rules, accounts = row[6:]
            elif len(row) == 9:
                schema, relation, _kind, has_children, columns, names = row[:6]
                on_delete, on_update, has_rules = row[6:]
            elif len(row) == 8:
                schema, relation, _kind, has_children, columns, names, on_delete, on_update = row
            elif len(row) == 6:
                schema, relation, _kind, has_children, columns, names = row
            else:
                schema, relation, _kind, has_children, columns = row
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"row {i} of the key query has the wrong shape: {exc}") from None
        if not isinstance(schema, str) or not isinstance(relation, str):
            raise ValueError(f"row {i} of the key query has no schema or relation name")
        name = f"{schema}.{relation}"
        entry = keys.setdefault(name, [])
        children[name] = children.get(name, False) or bool(has_children)
        cascades[name] = cascades.get(name, False) or bool(on_delete)
        rules[name] = rules.get(name, False) or bool(has_rules)
        if on_update:
            if not all(isinstance(c, str) for c in on_update):
                raise ValueError(f"row {i} of the key query has a column name that is not text")
            cascade_columns[name] = cascade_columns.get(name, frozenset()) | frozenset(on_update)
        if accounts:
            if not all(isinstance(a, str) for a in accounts):
                raise ValueError(f"row {i} of the key query has an ancestor that is not text")
            roots[name] = tuple(sorted(set(accounts)))
        if names:
            if not all(isinstance(c, str) for c in names):
                raise ValueError(f"row {i} of the key query has a column name that is not text")
            all_columns[name] = frozenset(names)
        if columns:
            if not all(isinstance(c, str) for c in columns):
                raise ValueError(f"row {i} of the key query has a key column that is not text")
            key = frozenset(columns)
            if key not in entry:
                entry.append(key)
    relations = {
        name: Relation(
            tuple(sorted(ks, key=len)),
            children[name],
            all_columns.get(name, frozenset()),
            cascades[name],
            cascade_columns.get(name, frozenset()),
            rules[name],
            roots.get(name, ()),
        )
        for name, ks in keys.items()
    }
    return KeyCatalog(relations, (), version).with_search_path(search_path, user=user)
