"""Reading pglast's JSON parse tree: names, literal values, relations.

Small helpers every part of the walk uses. The tree's conventions: a generic
``Node*`` field is a one-key dict (``{"String": {"sval": "x"}}``), a fixed-type field
is a bare dict, and fields equal to their zero value are omitted — so every read
uses ``.get`` with a default.

:func:`value_of` is the only way the walker reads a literal or a Bind value, and it
marks the statement *literal-sensitive* when it does (see :mod:`dbgate.policy.classify`
for why the cache needs to know).
"""

from __future__ import annotations

from typing import Any

from dbgate.policy.catalog_builtin import PG_CATALOG_RELATIONS
from dbgate.policy.model import ADMIN, DUMP
from dbgate.policy.walk.facts import StatementFacts

#: The tables whose every row a query's result may hold: what makes it a ``dump``.
#: Empty when the result is bounded (narrowed by a WHERE, a small LIMIT, aggregated).
WholeTables = tuple[str, ...]

#: Table rows read, by table (None: unbounded); ``("lock", table)`` keys count the rows a
#: ``FOR UPDATE``/``FOR SHARE`` locks. See :mod:`dbgate.policy.walk.bounds`.
Reads = dict[Any, int | None]


class Produced:
    """What a query (a level and everything nested in it) produces, for its caller.

    ``whole``: the tables whose every row its result may hold, judged by the shape of
    its predicates (what makes a ``dump``; empty when it asks for less). ``rows``: a
    proven bound on the rows it returns (None: unbounded). ``reads``: the table rows
    it reads, proven or not, which the caller adds to its own (times the number of
    times it runs the query, for a sub-select correlated with its rows).
    """

    __slots__ = ("correlated", "reads", "rows", "whole")

    def __init__(
        self, whole: WholeTables = (), rows: int | None = None, reads: Reads | None = None
    ):
        self.whole = whole
        self.rows = rows
        self.reads: Reads = {} if reads is None else reads
        # refers to a column it does not itself resolve (a row of an enclosing level,
        # or a name it cannot place): its rows may differ from one outer row to the next
        self.correlated = True


#: CTE name -> what the CTE produces, for the query levels that can see it.
Ctes = dict[str, Produced]

#: Parse nodes that are queries: they may nest in CTEs, sub-selects, EXPLAIN, COPY ...
#: (:mod:`dbgate.policy.walk.queries` has a handler for each).
QUERY_NODES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})

#: Catalog relations that hold credentials, and the columns that hold them. Reading
#: such a relation is ``admin`` when the statement names one of those columns or
#: takes whole rows (``*``, the row itself); ``SELECT count(*) FROM pg_subscription
#: WHERE subdbid = ...`` (pg_dump's, as a non-superuser) reads no secret.
CREDENTIAL_COLUMNS: dict[str, frozenset[str]] = {
    "pg_authid": frozenset({"rolpassword"}),
    "pg_shadow": frozenset({"passwd"}),
    "pg_user_mapping": frozenset({"umoptions"}),
    "pg_user_mappings": frozenset({"umoptions"}),
    "pg_subscription": frozenset({"subconninfo"}),
    "user_mapping_options": frozenset({"option_value"}),
}
CREDENTIAL_RELATIONS = frozenset(CREDENTIAL_COLUMNS)
#: Catalog relations whose contents are server files or data rather than metadata.
SERVER_FILE_RELATIONS = frozenset(
    {"pg_hba_file_rules", "pg_ident_file_mappings", "pg_file_settings"}
)
DATA_CATALOG_RELATIONS = frozenset(
    {
        "pg_statistic",
        "pg_stats",
        "pg_stats_ext",
        "pg_stats_ext_exprs",
        "pg_statistic_ext_data",
        "pg_largeobject",
    }
)


# How much :func:`value_of` could learn about a value:
KNOWN = 0  # value is a literal (or NULL)
NEED_BIND = 1  # value is a $n parameter and no parameters were supplied
DYNAMIC = 2  # value is computed: unknown until execution


def strs(items: list[Any] | None) -> list[str]:
    """Names from a list of ``{"String": {"sval": ...}}`` nodes."""
    out = []
    for it in items or ():
        s = it.get("String")
        if s is not None:
            out.append(s.get("sval", ""))
    return out


def const_text(c: dict[str, Any]) -> str | None:
    """Text of an A_Const body, None for NULL."""
    if c.get("isnull"):
        return None
    if "sval" in c:
        return c["sval"].get("sval", "")
    if "ival" in c:
        return str(c["ival"].get("ival", 0))
    if "fval" in c:
        return c["fval"].get("fval", "0")
    if "boolval" in c:
        return "true" if c["boolval"].get("boolval") else "false"
    if "bsval" in c:
        return c["bsval"].get("bsval", "")
    return None


def param_text(facts: StatementFacts, n: int) -> tuple[int, str | None]:
    """The Bind value of ``$n`` as text, when the walk was given Bind values."""
    if facts.params is None:
        facts.needs_bind = True
        return NEED_BIND, None
    if not 1 <= n <= len(facts.params):
        return DYNAMIC, None
    v = facts.params[n - 1]
    if v is None:
        return KNOWN, None
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError:
            return DYNAMIC, None
    return KNOWN, v


def value_of(node: Any, facts: StatementFacts) -> tuple[int, str | None]:
    """The literal value of an expression node: (KNOWN, text) / (NEED_BIND|DYNAMIC, None)."""
    if not isinstance(node, dict):
        return DYNAMIC, None
    c = node.get("A_Const")
    if c is not None:
        facts.sensitive = True
        return KNOWN, const_text(c)
    p = node.get("ParamRef")
    if p is not None:
        facts.sensitive = True
        return param_text(facts, p.get("number", 0))
    tc = node.get("TypeCast")
    if tc is not None:
        return value_of(tc.get("arg"), facts)
    s = node.get("String")  # DefElem arguments
    if s is not None:
        facts.sensitive = True
        return KNOWN, s.get("sval", "")
    i = node.get("Integer")
    if i is not None:
        facts.sensitive = True
        return KNOWN, str(i.get("ival", 0))
    b = node.get("Boolean")
    if b is not None:
        facts.sensitive = True
        return KNOWN, "true" if b.get("boolval") else "false"
    return DYNAMIC, None


def relname(rv: dict[str, Any]) -> tuple[str | None, str]:
    """(schema or None, name) of a RangeVar."""
    return rv.get("schemaname"), rv.get("relname", "")


def table_key(schema: str | None, name: str) -> str:
    """How a table is reported: ``schema.table`` when qualified, else ``table``."""
    return f"{schema}.{name}" if schema else name


def is_catalog(schema: str | None, name: str) -> bool:
    """Whether a relation is PostgreSQL's own metadata (never a dump by itself)."""
    if schema is None:
        return name in PG_CATALOG_RELATIONS
    if schema == "pg_catalog":
        return True
    return schema == "information_schema"


def catalog_read(
    schema: str | None, name: str, facts: StatementFacts, qualifier: str, *, whole: bool = False
) -> None:
    """Charge reading the few catalog relations that hold secrets, files or data.

    ``qualifier``: how the statement refers to the relation (its alias, else its
    name). ``whole``: every column is read (COPY without a column list). A credential
    relation is charged once the statement's columns are known
    (:meth:`StatementFacts.result`), unless ``whole``.
    """
    secrets = CREDENTIAL_COLUMNS.get(name)
    if secrets is not None:
        if whole:
            facts.add(ADMIN, "credential-catalog", facts.secret_read_message(name, secrets))
        else:
            facts.guarded_reads.append((name, qualifier, secrets))
    elif name in SERVER_FILE_RELATIONS:
        facts.add(
            ADMIN, "server-file-read", f"reads {name}, which shows the server's configuration files"
        )
    elif name == "pg_largeobject":
        facts.add(DUMP, "data-catalog", f"reads {name}, which holds the contents of large objects")
    elif name in DATA_CATALOG_RELATIONS:
        facts.add(
            DUMP,
            "data-catalog",
            f"reads {name}, which holds samples of column values (most common values, histograms)",
        )


def has_column(v: Any) -> bool:
    """Whether an expression references a column (outside nested sub-selects)."""
    if isinstance(v, list):
        return any(has_column(x) for x in v)
    if not isinstance(v, dict):
        return False
    for k, x in v.items():
        if k == "ColumnRef" or k == "CurrentOfExpr":
            return True
        if k == "SubLink":
            return has_column(x.get("testexpr"))
        if k == "SelectStmt":
            continue
        if isinstance(x, dict | list) and has_column(x):
            return True
    return False


def op_name(name_list: list[Any] | None) -> tuple[str, bool]:
    """(operator, qualified-with-a-schema-other-than-pg_catalog) of an A_Expr name list."""
    if name_list and len(name_list) == 1:
        return (name_list[0].get("String") or {}).get("sval", ""), False
    names = strs(name_list)
    if not names:
        return "", False
    return names[-1], len(names) > 1 and names[-2] != "pg_catalog"


def name_list(names: WholeTables) -> str:
    """``a``, ``a and b``, ``a, b and c``: each name once, in order, for reason messages."""
    unique = list(dict.fromkeys(names))
    if len(unique) <= 1:
        return unique[0] if unique else "a table"
    return ", ".join(unique[:-1]) + " and " + unique[-1]


def relations_read(node: object) -> set[str]:
    """The unqualified relation names a query reads anywhere in it (``FROM orders``): what
    a CTE under ``WITH RECURSIVE`` may read of the clause's other CTEs, for the
    classifier and for lineage, which walk them in that order."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            rv = n.get("RangeVar")
            if isinstance(rv, dict) and not rv.get("schemaname") and rv.get("relname"):
                out.add(rv["relname"])
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out
