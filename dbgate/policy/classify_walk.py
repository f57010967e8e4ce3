"""Walk pglast's JSON parse tree of one statement and collect what it does.

Why JSON dicts and not pglast's Python AST: building the AST costs ~100 µs for a
small statement; ``parse_sql_json`` + ``json.loads`` costs a few µs. Nodes look like
``{"SelectStmt": {...fields...}}`` (a one-key dict whose key starts upper-case) when
the field is a generic ``Node*``, and like a bare ``{...fields...}`` when the field
has a fixed type (``InsertStmt.relation``). Fields equal to their zero value
(0, false, "", empty list) are omitted, so every read uses ``.get`` with a default.

The walker is deliberately conservative:

* every statement type and every function it does not know makes the statement
  ``opaque`` (the rules engine holds opaque statements);
* a value that decides a category (a LIMIT, a setting, ``set_config``'s name) is read
  only when it is a literal or a bound parameter — anything computed fails closed;
* reading such a literal marks the result *literal-sensitive* so the cache never
  shares it with a statement that differs only in that literal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from pglast import parser as _pg

from dbgate.policy import functions as _fn
from dbgate.policy.catalog_builtin import OPERATORS, PG_CATALOG_RELATIONS
from dbgate.policy.catalog_settings import VALUE_SENSITIVE, setting_effects
from dbgate.policy.model import Category, Prepared, Reason, StatementClass

READ = Category.READ
WRITE = Category.WRITE
DESTRUCTIVE = Category.DESTRUCTIVE
DDL = Category.DDL
PRIVILEGE = Category.PRIVILEGE
EXPORT = Category.EXPORT
DUMP = Category.DUMP
ADMIN = Category.ADMIN
ESCAPE = Category.ESCAPE
OPAQUE = Category.OPAQUE
CONTROL = Category.CONTROL

#: A SELECT whose row count is capped at or below this is not a bulk read ("dump").
DUMP_LIMIT_THRESHOLD = 1000

#: Nesting depth for SQL found inside SQL (query_to_xml('...'), EXECUTE of a
#: prepared statement). Deeper nesting is opaque rather than a recursion bomb.
MAX_NESTING = 4

#: Catalog relations whose contents are secrets or data rather than metadata.
CREDENTIAL_RELATIONS = frozenset(
    {
        "pg_authid",
        "pg_shadow",
        "pg_user_mapping",
        "pg_user_mappings",
        "pg_subscription",
        "user_mapping_options",
    }
)
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

_NEAR = re.compile(r'at or near "(.*)"(, at index \d+)?$', re.DOTALL)
_LITERAL_START = re.compile(r"^(?:'|\$|[0-9.]|[EeBbXxNn]'|[Uu]&')")


def safe_parse_message(message: str) -> str:
    """The parser's message with any echoed literal replaced by ``<literal>``.

    ``unterminated quoted string at or near "'123-45-6789"`` would carry a value into
    the audit log and the approval page; keywords and identifiers stay (they are what
    makes the message useful: ``syntax error at or near "SELEC"``).
    """
    m = _NEAR.search(message)
    if m is None or not _LITERAL_START.match(m.group(1)):
        return message
    return message[: m.start()] + "at or near <literal>" + (m.group(2) or "")


_KNOWN = 0  # value is a literal (or NULL)
_NEED_BIND = 1  # value is a $n parameter and no parameters were supplied
_DYNAMIC = 2  # value is computed: unknown until execution


class Acc:
    """Everything learnt about one statement while walking it."""

    __slots__ = (
        "aliases",
        "cats",
        "columns",
        "command",
        "depth",
        "extra_pure",
        "functions",
        "needs_bind",
        "params",
        "prepared",
        "reasons",
        "scope",
        "seen",
        "sensitive",
        "tables",
        "uncacheable",
    )

    def __init__(
        self,
        params: Sequence[bytes | str | None] | None,
        prepared: Prepared | None,
        extra_pure: frozenset[str],
        depth: int = 0,
    ) -> None:
        self.cats: set[Category] = set()
        self.reasons: list[Reason] = []
        self.seen: set[tuple[Category, str, str]] = set()
        self.tables: set[str] = set()
        self.columns: set[str] = set()
        self.aliases: dict[str, str] = {}  # FROM alias -> table, to name columns
        self.scope: frozenset[str] = frozenset()  # qualifiers of enclosing query levels
        self.functions: set[str] = set()
        self.command = ""
        self.needs_bind = False
        self.sensitive = False  # consulted a literal value: cache by exact text only
        self.uncacheable = False  # consulted session state (prepared statements)
        self.params = params
        self.prepared = prepared
        self.extra_pure = extra_pure
        self.depth = depth

    def add(self, cat: Category, code: str, message: str) -> None:
        """Assign a category with its reason (each distinct reason is kept once)."""
        key = (cat, code, message)
        if key in self.seen:
            return
        self.seen.add(key)
        self.cats.add(cat)
        self.reasons.append(Reason(cat, code, message))

    def merge(self, other: StatementClass, only: frozenset[Category] | None = None) -> None:
        for r in other.reasons:
            if only is None or r.category in only:
                self.add(r.category, r.code, r.message)
        self.tables |= other.tables
        self.columns |= other.columns
        self.functions |= other.functions

    def result(self) -> StatementClass:
        if not self.cats:  # never return an empty classification
            self.add(OPAQUE, "no-category", "the classifier found nothing to say; failing closed")
        columns = self.columns
        only = next(iter(self.tables)) if len(self.tables) == 1 else None
        if self.aliases or only:
            # best effort: "o.id" -> "orders.id" (aliases may repeat in subqueries), and
            # "id" -> "orders.id" when the statement touches a single table
            columns = set()
            for c in self.columns:
                head, dot, rest = c.partition(".")
                if dot:
                    table = self.aliases.get(head)
                    columns.add(f"{table}.{rest}" if table else c)
                else:
                    columns.add(f"{only}.{c}" if only and c != "*" else c)
        return StatementClass(
            categories=frozenset(self.cats),
            reasons=tuple(self.reasons),
            tables=frozenset(self.tables),
            columns=frozenset(columns),
            functions=frozenset(self.functions),
            command=self.command,
            needs_bind=self.needs_bind,
        )


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _strs(items: list[Any] | None) -> list[str]:
    """Names from a list of ``{"String": {"sval": ...}}`` nodes."""
    out = []
    for it in items or ():
        s = it.get("String")
        if s is not None:
            out.append(s.get("sval", ""))
    return out


def _const_text(c: dict[str, Any]) -> str | None:
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


def _param_text(acc: Acc, n: int) -> tuple[int, str | None]:
    if acc.params is None:
        acc.needs_bind = True
        return _NEED_BIND, None
    if not 1 <= n <= len(acc.params):
        return _DYNAMIC, None
    v = acc.params[n - 1]
    if v is None:
        return _KNOWN, None
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError:
            return _DYNAMIC, None
    return _KNOWN, v


def value_of(node: Any, acc: Acc) -> tuple[int, str | None]:
    """The literal value of an expression node: (_KNOWN, text) / (_NEED_BIND|_DYNAMIC, None)."""
    if not isinstance(node, dict):
        return _DYNAMIC, None
    c = node.get("A_Const")
    if c is not None:
        acc.sensitive = True
        return _KNOWN, _const_text(c)
    p = node.get("ParamRef")
    if p is not None:
        acc.sensitive = True
        return _param_text(acc, p.get("number", 0))
    tc = node.get("TypeCast")
    if tc is not None:
        return value_of(tc.get("arg"), acc)
    s = node.get("String")  # DefElem arguments
    if s is not None:
        acc.sensitive = True
        return _KNOWN, s.get("sval", "")
    i = node.get("Integer")
    if i is not None:
        acc.sensitive = True
        return _KNOWN, str(i.get("ival", 0))
    b = node.get("Boolean")
    if b is not None:
        acc.sensitive = True
        return _KNOWN, "true" if b.get("boolval") else "false"
    return _DYNAMIC, None


def _relname(rv: dict[str, Any]) -> tuple[str | None, str]:
    return rv.get("schemaname"), rv.get("relname", "")


def _table_key(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _is_catalog(schema: str | None, name: str) -> bool:
    if schema is None:
        return name in PG_CATALOG_RELATIONS
    if schema == "pg_catalog":
        return True
    return schema == "information_schema"


def _catalog_read(schema: str | None, name: str, acc: Acc) -> None:
    if name in CREDENTIAL_RELATIONS:
        acc.add(ADMIN, "credential-catalog", f"reads credentials or connection secrets ({name})")
    elif name in SERVER_FILE_RELATIONS:
        acc.add(ADMIN, "server-file-read", f"reads server configuration files ({name})")
    elif name in DATA_CATALOG_RELATIONS:
        acc.add(DUMP, "data-catalog", f"{name} holds table data or samples of column values")


def _has_column(v: Any) -> bool:
    """Whether an expression references a column (outside nested sub-selects)."""
    if isinstance(v, list):
        return any(_has_column(x) for x in v)
    if not isinstance(v, dict):
        return False
    for k, x in v.items():
        if k == "ColumnRef" or k == "CurrentOfExpr":
            return True
        if k == "SubLink":
            return _has_column(x.get("testexpr"))
        if k == "SelectStmt":
            continue
        if isinstance(x, dict | list) and _has_column(x):
            return True
    return False


#: Operators that keep (nearly) every row: ``id <> 5`` or ``NOT LIKE`` restrict nothing.
_NEGATIVE_OPS = frozenset({"<>", "!=", "!~~", "!~~*", "!~", "!~*"})


class Scope:
    """The relations of one query level, for deciding which of them a WHERE narrows.

    ``names``: qualifiers of this level's FROM items (alias, else table name).
    ``outer``: qualifiers of enclosing levels — inside a correlated sub-select or a
    LATERAL item, ``o.id`` is a per-row value, so ``p.order_id = o.id`` narrows ``p``.
    """

    __slots__ = ("names", "outer", "single")

    def __init__(self, names: frozenset[str], outer: frozenset[str]) -> None:
        self.names = names
        self.outer = outer - names
        self.single = next(iter(names)) if len(names) == 1 else None


def _cols(v: Any, sc: Scope, quals: set[str]) -> bool:
    """Whether ``v`` mentions a column of this level (outside sub-selects).

    Adds to ``quals`` the relations those columns belong to, where known: the
    qualifier, or the only relation of the level for an unqualified column.
    """
    if type(v) is dict and len(v) == 1:  # fast paths for the common operands
        if "A_Const" in v or "ParamRef" in v:
            return False
        cr = v.get("ColumnRef")
        if cr is not None:
            fields = cr.get("fields", ())
            if len(fields) >= 2:
                q = (fields[-2].get("String") or {}).get("sval", "")
                if q in sc.outer:
                    return False
                if q in sc.names:
                    quals.add(q)
            elif sc.single is not None:
                quals.add(sc.single)
            return True
    found = False
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is list:
            stack.extend(x)
            continue
        if type(x) is not dict:
            continue
        for k, y in x.items():
            if k == "ColumnRef":
                fields = y.get("fields", ())
                if len(fields) >= 2:
                    q = (fields[-2].get("String") or {}).get("sval", "")
                    if q in sc.outer:
                        continue  # an enclosing row's value
                    found = True
                    if q in sc.names:
                        quals.add(q)
                else:
                    found = True
                    if sc.single is not None:
                        quals.add(sc.single)
            elif k == "CurrentOfExpr":
                found = True
                quals.update(sc.names)
            elif k == "SubLink":
                stack.append(y.get("testexpr"))
            elif k != "SelectStmt" and type(y) in (dict, list):
                stack.append(y)
    return found


def restricted(
    where: Any,
    acc: Acc,
    ctes: dict[str, bool],
    sc: Scope,
    eqs: list[tuple[set[str], set[str]]] | None,
) -> set[str]:
    """Which relations of this level does ``where`` narrow to a few rows?

    * AND narrows what any arm narrows; OR what every arm narrows; NOT nothing.
    * A comparison narrows the relation whose column stands alone on one side against
      a value (``id = $1``, ``email LIKE 'a%'``, ``created_at > now() - interval '1
      day'``, ``p.order_id = o.id`` with ``o`` from an enclosing level). Negative
      operators (``<>``, ``NOT LIKE``, ``NOT IN``, ``IS DISTINCT FROM``) never narrow.
    * ``a.x = b.y`` between two relations of this level narrows nothing by itself but is
      recorded in ``eqs``: a join key equal to a narrowed relation's narrows the other.
    * ``x IN (SELECT ...)`` narrows only when the sub-select is bounded; ``EXISTS`` never
      (uncorrelated it keeps every row); ``IS NULL`` narrows, ``IS NOT NULL`` does not.
    * A bare boolean column or function call narrows the relations it mentions
      (``WHERE active``); ``(cond) IS TRUE`` narrows like ``cond``; CASE, COALESCE,
      ``IS NOT TRUE`` and other constructs that can be true for every row do not.
    Documented limitation: a range such as ``id > 0`` counts as narrowing.
    """
    if type(where) is not dict:
        return set()
    for k, x in where.items():
        if k == "BoolExpr":
            args = x.get("args", [])
            op = x.get("boolop")
            if op == "AND_EXPR":
                out: set[str] = set()
                for a in args:
                    out |= restricted(a, acc, ctes, sc, eqs)
                return out
            if op == "OR_EXPR":
                sets = [restricted(a, acc, ctes, sc, None) for a in args]
                return set.intersection(*sets) if sets else set()
            return set()
        if k == "A_Expr":
            kind = x.get("kind", "AEXPR_OP")
            if kind in ("AEXPR_DISTINCT", "AEXPR_NOT_BETWEEN", "AEXPR_NOT_BETWEEN_SYM"):
                return set()
            op, _ = _op_name(x.get("name"))
            if op in _NEGATIVE_OPS:
                return set()
            lq: set[str] = set()
            rq: set[str] = set()
            lh = _cols(x.get("lexpr"), sc, lq)
            rh = _cols(x.get("rexpr"), sc, rq)
            if lh and not rh:
                return lq if _values_bounded(x.get("rexpr"), acc, ctes, sc) else set()
            if rh and not lh:
                return rq if _values_bounded(x.get("lexpr"), acc, ctes, sc) else set()
            if lh and rh and op == "=" and eqs is not None and lq and rq:
                eqs.append((lq, rq))
            return set()
        if k == "SubLink":
            kind = x.get("subLinkType")
            if kind == "EXISTS_SUBLINK":
                return set()
            if kind != "ANY_SUBLINK":
                q: set[str] = set()
                _cols(where, sc, q)
                return q
            names = _strs(x.get("operName"))
            if names and names[-1] in _NEGATIVE_OPS:
                return set()
            sub = (x.get("subselect") or {}).get("SelectStmt")
            if sub is None:
                return set()
            # judge the sub-select on a scratch accumulator (its categories are charged
            # by the normal walk), but keep what it learnt about literals and Bind:
            # "IN (SELECT ... LIMIT 10)" must not share a cache entry with "LIMIT 10000"
            scratch = Acc(acc.params, None, acc.extra_pure, acc.depth)
            scratch.scope = sc.names | sc.outer
            bounded = not select(sub, scratch, False, ctes, False)
            acc.sensitive |= scratch.sensitive
            acc.needs_bind |= scratch.needs_bind
            q = set()
            if bounded:
                _cols(x.get("testexpr"), sc, q)
            return q
        if k == "NullTest":
            q = set()
            if x.get("nulltesttype") == "IS_NULL":
                _cols(x.get("arg"), sc, q)
            return q
        if k == "BooleanTest":  # (cond) IS TRUE narrows like cond; IS NOT TRUE etc. do not
            if x.get("booltesttype") in ("IS_TRUE", "IS_NOT_FALSE"):
                return restricted(x.get("arg"), acc, ctes, sc, None)
            return set()
        if k == "TypeCast":
            return restricted(x.get("arg"), acc, ctes, sc, None)
        if k == "CurrentOfExpr":  # WHERE CURRENT OF cursor: one row
            return set(sc.names)
        if k in ("ColumnRef", "FuncCall"):  # WHERE active, WHERE starts_with(email, 'a')
            q = set()
            _cols(where, sc, q)
            return q
        return set()  # CASE, COALESCE, ...: can be true for every row
    return set()


def _values_bounded(v: Any, acc: Acc, ctes: dict[str, bool], sc: Scope) -> bool:
    """False when the value side of a comparison is fed by an unbounded sub-select.

    ``id = ANY(ARRAY(SELECT id FROM customers))`` compares with every id there is.
    """
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is list:
            stack.extend(x)
            continue
        if type(x) is not dict:
            continue
        for k, y in x.items():
            if k == "SubLink":
                sub = (y.get("subselect") or {}).get("SelectStmt")
                if sub is not None:
                    scratch = Acc(acc.params, None, acc.extra_pure, acc.depth)
                    scratch.scope = sc.names | sc.outer
                    unbounded = select(sub, scratch, False, ctes, False)
                    acc.sensitive |= scratch.sensitive
                    acc.needs_bind |= scratch.needs_bind
                    if unbounded:
                        return False
            elif type(y) in (dict, list):
                stack.append(y)
    return True


def _propagate(narrowed: set[str], eqs: list[tuple[set[str], set[str]]]) -> set[str]:
    """Close ``narrowed`` over join equalities (``o.customer_id = c.id``)."""
    changed = True
    while changed:
        changed = False
        for a, b in eqs:
            if a & narrowed and not b <= narrowed:
                narrowed |= b
                changed = True
            elif b & narrowed and not a <= narrowed:
                narrowed |= a
                changed = True
    return narrowed


def _agg_kind(v: Any) -> int:
    """0: no aggregate; 1: only reducing aggregates; 2: a collecting aggregate (array_agg...)."""
    kind = 0
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
            continue
        if not isinstance(x, dict):
            continue
        for k, y in x.items():
            if k == "SubLink" or k == "SelectStmt":
                continue
            if k == "FuncCall":
                names = _strs(y.get("funcname"))
                name = names[-1] if names else ""
                schema = names[-2] if len(names) > 1 else None
                if "over" not in y and schema in (None, "pg_catalog"):
                    if name in _fn.COLLECTING_AGGREGATES:
                        return 2
                    if name in _fn.REDUCING_AGGREGATES:
                        kind = 1
            elif k in ("JsonArrayAgg", "JsonObjectAgg"):
                return 2
            if isinstance(y, dict | list):
                stack.append(y)
    return kind


# --------------------------------------------------------------------------------------
# expressions
# --------------------------------------------------------------------------------------


def walk(v: Any, acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    """Walk any subtree. ``out``: values here flow into the statement's result.

    Hot loop: exact ``type() is`` checks, scalar fields skipped before any lookup,
    and subtrees that cannot contain calls or columns (constants, type names) skipped.
    """
    t = type(v)
    if t is list:
        for x in v:
            if type(x) is dict:
                walk(x, acc, out, ctes)
        return
    if t is not dict:
        return
    for k, x in v.items():
        tx = type(x)
        if tx is dict:
            if k in _SKIP:
                continue
            h = _EXPR.get(k)
            if h is not None:
                h(x, acc, out, ctes)
            elif k in _QUERY_NODES:
                query(k, x, acc, out, ctes)
            elif k[0].isupper() and k.endswith("Stmt"):
                stmt_body(k, x, acc)
            else:
                walk(x, acc, out, ctes)
        elif tx is list:
            for y in x:
                if type(y) is dict:
                    walk(y, acc, out, ctes)


#: Subtrees with nothing to find: literals and type names (typmods are literals).
_SKIP = frozenset({"A_Const", "TypeName", "typeName", "String", "Integer", "Float", "Boolean"})


def _column_ref(x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    parts = []
    for f in x.get("fields", ()):
        s = f.get("String")
        parts.append(s["sval"] if s is not None and "sval" in s else "*")
    if len(parts) == 1:
        acc.columns.add(parts[0])
    elif parts:
        acc.columns.add(".".join(parts))


def _sublink(x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    if "operName" in x:
        _check_operator(_strs(x["operName"]), acc)
    walk(x.get("testexpr"), acc, False, ctes)
    kind = x.get("subLinkType", "")
    carries = out and kind in ("EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK", "CTE_SUBLINK")
    sub = x.get("subselect")
    if isinstance(sub, dict):
        for k, body in sub.items():
            query(k, body, acc, carries, ctes)


#: Operator "names" the grammar uses for constructs that are not pg_operator entries.
_SYNTAX_OPS = frozenset({"BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"})


def _op_name(name_list: list[Any] | None) -> tuple[str, bool]:
    """(operator, qualified-with-a-schema-other-than-pg_catalog) of an A_Expr name list."""
    if name_list and len(name_list) == 1:
        return (name_list[0].get("String") or {}).get("sval", ""), False
    names = _strs(name_list)
    if not names:
        return "", False
    return names[-1], len(names) > 1 and names[-2] != "pg_catalog"


def _check_operator(names: list[str], acc: Acc) -> None:
    """Operators run functions too: a user-defined one (``===``) is as unknown as a call."""
    if not names:
        return
    op = names[-1]
    if (len(names) > 1 and names[-2] != "pg_catalog") or (
        op not in OPERATORS and op not in _SYNTAX_OPS
    ):
        acc.add(OPAQUE, "unknown-operator", f"operator {'.'.join(names)} is not a built-in")


def _a_expr(x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    op, foreign = _op_name(x.get("name"))
    if foreign or (op not in OPERATORS and op not in _SYNTAX_OPS):
        _check_operator(_strs(x.get("name")), acc)
    walk(x.get("lexpr"), acc, out, ctes)
    walk(x.get("rexpr"), acc, out, ctes)


def _range_var_expr(x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    from_range_var(x, acc, ctes)


def _func_call(x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    names = _strs(x.get("funcname"))
    func_names(names, x, acc, out, ctes)
    walk(x.get("args"), acc, out, ctes)
    for f in ("agg_order", "agg_filter", "over"):
        if f in x:
            walk(x[f], acc, False, ctes)


def func_names(
    names: list[str], x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]
) -> None:
    """Look a called function up in the catalog and add its categories."""
    if not names:
        acc.add(OPAQUE, "unknown-function", "call of an unnamed function")
        return
    name = names[-1]
    schema = names[-2] if len(names) > 1 else None
    qual = ".".join(names)
    acc.functions.add(qual)
    eff = _fn.EFFECTS.get(name)
    if eff is not None:
        for c in eff.categories:
            acc.add(c, eff.code, f"{qual}: {eff.message}")
    builtin = schema is None or schema == "pg_catalog"
    if builtin and name in _fn.SPECIAL:
        _special(name, qual, x, acc)
        return
    if eff is not None and builtin and name in _fn.BUILTIN_NAMES:
        return  # a known built-in with a known effect; extension functions stay opaque
    if _fn.is_pure(name, schema):
        return
    if acc.extra_pure and (qual in acc.extra_pure or (schema is None and name in acc.extra_pure)):
        return
    acc.add(OPAQUE, "unknown-function", f"{qual} is not a known function; its effect is unknown")


#: Parameter names of the special functions, for calls with named arguments
#: (``set_config(new_value => 'off', setting_name => 'standard_conforming_strings', ...)``).
_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "set_config": ("setting_name", "new_value", "is_local"),
    "query_to_xml": ("query", "nulls", "tableforest", "targetns"),
    "query_to_xmlschema": ("query", "nulls", "tableforest", "targetns"),
    "query_to_xml_and_xmlschema": ("query", "nulls", "tableforest", "targetns"),
}


def _positional(name: str, args: list[Any]) -> list[Any]:
    """Arguments in declaration order, resolving ``name => value`` notation.

    An argument name we do not know leaves a hole (None), which reads as a computed
    value: the caller then fails closed.
    """
    if not any("NamedArgExpr" in a for a in args):
        return args
    names = _ARG_NAMES.get(name, ())
    out: list[Any] = [a for a in args if "NamedArgExpr" not in a]
    out += [None] * (len(names) - len(out))
    for a in args:
        na = a.get("NamedArgExpr")
        if na is None:
            continue
        try:
            idx = names.index(na.get("name", ""))
        except ValueError:
            continue
        if idx < len(out):
            out[idx] = na.get("arg")
    return out


def _special(name: str, qual: str, x: dict[str, Any], acc: Acc) -> None:
    args = _positional(name, x.get("args") or [])
    if name == "set_config":
        _set_config(qual, args, acc)
    elif name == "pg_notify":
        payload = args[1] if len(args) > 1 else None
        if payload is None or "A_Const" in payload or "ParamRef" in payload:
            acc.add(WRITE, "notify", f"{qual} sends a notification to other sessions")
        else:
            acc.add(EXPORT, "notify-carries-data", f"{qual} sends computed data to other sessions")
    else:  # query_to_xml & co: execute a SQL string
        idx = _fn.SQL_STRING_FUNCTIONS[name]
        if name.startswith("query_to"):
            acc.add(DUMP, "xml-query-export", f"{qual} serialises a query result")
        state, text = value_of(args[idx], acc) if len(args) > idx else (_DYNAMIC, None)
        if state == _KNOWN and text is not None:
            nested_sql(text, acc, f"SQL executed by {qual}")
        elif state == _NEED_BIND:
            acc.add(OPAQUE, "needs-bind", f"{qual} executes SQL given at Bind")
        else:
            acc.add(OPAQUE, "dynamic-sql", f"{qual} executes SQL computed at run time")


def _set_config(qual: str, args: list[Any], acc: Acc) -> None:
    if not args:
        acc.add(OPAQUE, "dynamic-setting", f"{qual} without a setting name")
        return
    state, name = value_of(args[0], acc)
    if state != _KNOWN or name is None:
        if state == _NEED_BIND:
            acc.add(OPAQUE, "needs-bind", f"{qual}: the setting name is a Bind parameter")
        else:
            acc.add(OPAQUE, "dynamic-setting", f"{qual}: the setting name is computed")
        return
    name = name.strip()
    vstate, value = _KNOWN, None
    if name.lower() in VALUE_SENSITIVE and len(args) > 1:  # only read the value if it matters
        vstate, value = value_of(args[1], acc)
    values = None if vstate != _KNOWN else ([] if value is None else [value])
    effects, needed = setting_effects(name, values, as_list=True)
    for cat, code, msg in effects:
        if needed and vstate == _NEED_BIND:
            acc.add(OPAQUE, "needs-bind", f"{qual}: value of {name} is a Bind parameter")
        else:
            acc.add(cat, code, msg)


def _range_function(x: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> None:
    walk(x.get("functions"), acc, out, ctes)


_EXPR: dict[str, Callable[[dict[str, Any], Acc, bool, dict[str, bool]], None]] = {
    "ColumnRef": _column_ref,
    "SubLink": _sublink,
    "FuncCall": _func_call,
    "A_Expr": _a_expr,
    "RangeVar": _range_var_expr,
    "RangeFunction": _range_function,
}


# --------------------------------------------------------------------------------------
# queries: SELECT and DML (may nest in CTEs, sub-selects, EXPLAIN, COPY, CTAS ...)
# --------------------------------------------------------------------------------------


def query(k: str, body: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> bool:
    """Walk a query node; True when its result may hold all rows of some table."""
    if k == "SelectStmt":
        return select(body, acc, out, ctes, True)
    h = _DML.get(k)
    if h is not None:
        return h(body, acc, out, ctes)
    stmt_body(k, body, acc)
    return False


def with_clause(w: dict[str, Any] | None, acc: Acc, ctes: dict[str, bool]) -> dict[str, bool]:
    if not w:
        return ctes
    scope = dict(ctes)
    recursive = w.get("recursive", False)
    for c in w.get("ctes", ()):
        cte = c.get("CommonTableExpr")
        if cte is None:
            continue
        name = cte.get("ctename", "")
        if recursive:
            scope[name] = False  # self-reference inside the recursive term
        q = cte.get("ctequery") or {}
        unbounded = False
        for k, body in q.items():
            if k == "SelectStmt":
                unbounded = select(body, acc, True, scope, False)
            else:
                unbounded = query(k, body, acc, True, scope)
        scope[name] = unbounded
    return scope


def from_range_var(rv: dict[str, Any], acc: Acc, ctes: dict[str, bool]) -> bool:
    schema, name = _relname(rv)
    if schema is None and name in ctes:
        return ctes[name]
    key = _table_key(schema, name)
    acc.tables.add(key)
    alias = rv.get("alias")
    if alias:
        acc.aliases[alias.get("aliasname", "")] = key
    acc.add(READ, "select", "reads data")
    if _is_catalog(schema, name):
        _catalog_read(schema, name, acc)
        return False
    return True


Source = tuple[str, bool]  # (qualifier, may contribute a whole table's rows)


def sources(
    item: Any,
    acc: Acc,
    out: bool,
    ctes: dict[str, bool],
    found: list[Source],
    eqs: list[tuple[set[str], set[str]]],
) -> None:
    """Walk one FROM/USING item, appending its relations to ``found``.

    JOIN ... ON equalities go to ``eqs`` (they let a narrowed relation narrow its
    join partner). LATERAL sub-selects see the relations listed before them.
    """
    if type(item) is not dict:
        return
    for k, x in item.items():
        if k == "RangeVar":
            unbounded = from_range_var(x, acc, ctes)
            alias = x.get("alias")
            found.append(((alias or {}).get("aliasname") or x.get("relname", ""), unbounded))
        elif k == "RangeSubselect":
            sub = (x.get("subquery") or {}).get("SelectStmt")
            unbounded = False
            if sub is not None:
                saved = acc.scope
                if x.get("lateral"):
                    acc.scope = saved | frozenset(n for n, _ in found)
                unbounded = select(sub, acc, out, ctes, False)
                acc.scope = saved
            found.append(((x.get("alias") or {}).get("aliasname", ""), unbounded))
        elif k == "JoinExpr":
            i0 = len(found)
            sources(x.get("larg"), acc, out, ctes, found, eqs)
            i1 = len(found)
            sources(x.get("rarg"), acc, out, ctes, found, eqs)
            if x.get("usingClause") or x.get("isNatural"):  # JOIN ... USING (id) / NATURAL
                eqs.append(({n for n, _ in found[i0:i1]}, {n for n, _ in found[i1:]}))
            quals = x.get("quals")
            if quals is not None:
                saved = acc.scope
                acc.scope = saved | frozenset(n for n, _ in found)
                walk(quals, acc, False, ctes)
                acc.scope = saved
                sc = Scope(frozenset(n for n, _ in found), saved)
                restricted(quals, acc, ctes, sc, eqs)  # only its equalities are kept
        elif k == "RangeTableSample":
            sources(x.get("relation"), acc, out, ctes, found, eqs)
            walk(x.get("method"), acc, False, ctes)
            walk(x.get("args"), acc, False, ctes)
            walk(x.get("repeatable"), acc, False, ctes)
        else:  # functions, XMLTABLE, JSON_TABLE: bounded sources, but walk their calls
            saved = acc.scope
            acc.scope = saved | frozenset(n for n, _ in found)
            walk(item, acc, out, ctes)
            acc.scope = saved
            alias = (x.get("alias") or {}).get("aliasname", "") if type(x) is dict else ""
            found.append((alias, False))


def from_item(item: Any, acc: Acc, out: bool, ctes: dict[str, bool]) -> bool:
    """Walk one FROM item; True when it may contribute a whole table's rows."""
    found: list[Source] = []
    sources(item, acc, out, ctes, found, [])
    return any(u for _, u in found)


def unbounded_after_where(
    found: list[Source],
    where: Any,
    acc: Acc,
    ctes: dict[str, bool],
    eqs: list[tuple[set[str], set[str]]],
    outer: frozenset[str],
) -> bool:
    """True when some relation that may hold a whole table is not narrowed by WHERE."""
    if not any(u for _, u in found):
        return False
    sc = Scope(frozenset(n for n, _ in found), outer)
    narrowed = restricted(where, acc, ctes, sc, eqs) if where is not None else set()
    if eqs:
        narrowed = _propagate(narrowed, eqs)
    return any(u and n not in narrowed for n, u in found)


def _small_limit(s: dict[str, Any], acc: Acc) -> bool:
    """True when the statement's LIMIT/FETCH caps it at DUMP_LIMIT_THRESHOLD rows or fewer."""
    lc = s.get("limitCount")
    if lc is None or s.get("limitOption") == "LIMIT_OPTION_WITH_TIES":
        return False
    state, text = value_of(lc, acc)
    if state != _KNOWN or text is None:
        return False
    try:
        return int(float(text.strip())) <= DUMP_LIMIT_THRESHOLD
    except ValueError:
        return False


def select(s: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool], decide: bool) -> bool:
    """Walk a SelectStmt. Returns True when its rows may be a whole table's rows.

    ``decide``: add ``dump`` here (top-level, sub-link) or leave it to the caller
    (set-operation arms, FROM sub-selects, CTEs), whose LIMIT may still bound it.
    """
    acc.add(READ, "select", "reads data")
    ctes = with_clause(s.get("withClause"), acc, ctes)
    op = s.get("op", "SETOP_NONE")
    if op != "SETOP_NONE":
        left = select(s.get("larg") or {}, acc, out, ctes, False)
        right = select(s.get("rarg") or {}, acc, out, ctes, False)
        unbounded = left or right
    elif "valuesLists" in s:
        walk(s["valuesLists"], acc, out, ctes)
        unbounded = False
    else:
        outer = acc.scope
        found: list[Source] = []
        eqs: list[tuple[set[str], set[str]]] = []
        for item in s.get("fromClause", ()):
            sources(item, acc, out, ctes, found, eqs)
        acc.scope = outer | frozenset(n for n, _ in found)  # visible to sub-selects
        where = s.get("whereClause")
        if where is not None:
            walk(where, acc, False, ctes)
        tl = s.get("targetList")
        walk(tl, acc, out, ctes)
        for f in ("groupClause", "havingClause", "windowClause", "distinctClause"):
            if f in s:
                walk(s[f], acc, False, ctes)
        acc.scope = outer
        unbounded = unbounded_after_where(found, where, acc, ctes, eqs, outer)
        if unbounded and _agg_kind(tl) == 1:
            unbounded = False  # count(*), sum(...): rows are reduced, not returned
    for f in ("sortClause", "limitOffset", "limitCount", "lockingClause"):
        if f in s:
            walk(s[f], acc, False, ctes)
    if unbounded and _small_limit(s, acc):
        unbounded = False
    into = s.get("intoClause")
    if into is not None:
        rel = into.get("rel") or {}
        acc.tables.add(_table_key(*_relname(rel)))
        acc.add(DDL, "select-into", "SELECT INTO creates a table")
        acc.add(WRITE, "select-into", "SELECT INTO writes rows into a new table")
        if unbounded:
            acc.add(DUMP, "copy-table-into-table", "copies whole tables into a new table")
    if unbounded and decide and out:
        acc.add(
            DUMP, "unbounded-select", "returns whole tables (no restricting WHERE or small LIMIT)"
        )
    return unbounded


def _target_write(rv: dict[str, Any], acc: Acc) -> str:
    """Record the table a DML statement writes; returns its qualifier (alias or name)."""
    schema, name = _relname(rv)
    key = _table_key(schema, name)
    acc.tables.add(key)
    alias = (rv.get("alias") or {}).get("aliasname")
    if alias:
        acc.aliases[alias] = key
    if _is_catalog(schema, name):
        acc.add(ADMIN, "catalog-write", f"writes to the system catalog {name}")
    return alias or name


def _target_narrowed(
    target: str,
    found: list[Source],
    where: Any,
    acc: Acc,
    ctes: dict[str, bool],
    eqs: list[tuple[set[str], set[str]]],
    outer: frozenset[str],
) -> bool:
    """Does WHERE narrow the rows an UPDATE/DELETE touches (only the target matters)?"""
    if where is None:
        return False
    sc = Scope(frozenset(n for n, _ in found), outer)
    narrowed = restricted(where, acc, ctes, sc, eqs)
    if eqs:
        narrowed = _propagate(narrowed, eqs)
    return target in narrowed


def _returning(body: dict[str, Any], acc: Acc, ctes: dict[str, bool]) -> bool:
    rc = body.get("returningClause")
    exprs = rc.get("exprs") if isinstance(rc, dict) else body.get("returningList")
    if exprs:
        walk(exprs, acc, True, ctes)
        return True
    return False


def _written_columns(rel: dict[str, Any], targets: list[Any] | None, acc: Acc) -> None:
    """Record ``table.column`` for the columns an INSERT/UPDATE assigns."""
    table = _table_key(*_relname(rel))
    for t in targets or ():
        name = (t.get("ResTarget") or {}).get("name")
        if name:
            acc.columns.add(f"{table}.{name}")


def insert(body: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> bool:
    ctes = with_clause(body.get("withClause"), acc, ctes)
    _target_write(body.get("relation") or {}, acc)
    _written_columns(body.get("relation") or {}, body.get("cols"), acc)
    acc.add(WRITE, "insert", "inserts rows")
    src = body.get("selectStmt") or {}
    unbounded = False
    for k, s in src.items():
        if k == "SelectStmt" and "valuesLists" in s and s.get("op", "SETOP_NONE") == "SETOP_NONE":
            walk(s["valuesLists"], acc, True, ctes)
        else:
            unbounded = query(k, s, acc, True, ctes)
            if unbounded:
                acc.add(DUMP, "insert-select-table", "copies whole tables into another table")
    walk(body.get("onConflictClause"), acc, True, ctes)
    _returning(body, acc, ctes)
    return unbounded and ("returningClause" in body or "returningList" in body)


def _row_write(
    body: dict[str, Any], acc: Acc, ctes: dict[str, bool], verb: str, sources_key: str
) -> bool:
    """UPDATE and DELETE: ``write`` when the target table is narrowed by the WHERE,
    else ``destructive``; RETURNING from an unnarrowed one is a ``dump``.

    Only the target must be narrowed: rows of FROM/USING tables are not written.
    Returns whether rows of the whole table flow out (unnarrowed RETURNING).
    """
    ctes = with_clause(body.get("withClause"), acc, ctes)
    relation = body.get("relation") or {}
    target = _target_write(relation, acc)
    if verb == "update":
        _written_columns(relation, body.get("targetList"), acc)
    found: list[Source] = [(target, True)]
    eqs: list[tuple[set[str], set[str]]] = []
    for item in body.get(sources_key, ()):
        sources(item, acc, False, ctes, found, eqs)
    outer = acc.scope
    acc.scope = outer | frozenset(n for n, _ in found)
    if verb == "update":
        walk(body.get("targetList"), acc, True, ctes)
    where = body.get("whereClause")
    walk(where, acc, False, ctes)
    acc.scope = outer
    bounded = _target_narrowed(target, found, where, acc, ctes, eqs, outer)
    upper = verb.upper()
    if bounded:
        acc.add(WRITE, verb, f"{verb}s rows")
    else:
        acc.add(DESTRUCTIVE, f"{verb}-without-where", f"{upper} without a restricting WHERE")
    returns = _returning(body, acc, ctes)
    if returns and not bounded:
        acc.add(DUMP, "returning-all-rows", f"RETURNING from an unrestricted {upper}")
    return returns and not bounded


def update(body: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> bool:
    return _row_write(body, acc, ctes, "update", "fromClause")


def delete(body: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> bool:
    return _row_write(body, acc, ctes, "delete", "usingClause")


def merge(body: dict[str, Any], acc: Acc, out: bool, ctes: dict[str, bool]) -> bool:
    ctes = with_clause(body.get("withClause"), acc, ctes)
    _target_write(body.get("relation") or {}, acc)
    src = from_item(body.get("sourceRelation"), acc, True, ctes)
    cond = body.get("joinCondition")
    walk(cond, acc, False, ctes)
    destructive = not _has_column(cond)
    inserts = False
    for w in body.get("mergeWhenClauses", ()):
        mw = w.get("MergeWhenClause") or {}
        ct = mw.get("commandType")
        if ct == "CMD_DELETE":
            destructive = True
        elif ct == "CMD_INSERT":
            inserts = True
        walk(mw.get("condition"), acc, False, ctes)
        walk(mw.get("targetList"), acc, True, ctes)
        walk(mw.get("values"), acc, True, ctes)
    if destructive:
        acc.add(DESTRUCTIVE, "merge-delete", "MERGE that deletes rows or joins on no condition")
    else:
        acc.add(WRITE, "merge", "merges rows")
    if src and inserts:
        acc.add(DUMP, "merge-insert-table", "MERGE inserting from a whole table")
    _returning(body, acc, ctes)
    return False


_DML: dict[str, Callable[[dict[str, Any], Acc, bool, dict[str, bool]], bool]] = {
    "InsertStmt": insert,
    "UpdateStmt": update,
    "DeleteStmt": delete,
    "MergeStmt": merge,
}
_QUERY_NODES = frozenset({"SelectStmt", *_DML})


# --------------------------------------------------------------------------------------
# nested SQL (query_to_xml('...'), EXECUTE of a PREPAREd statement)
# --------------------------------------------------------------------------------------


def nested_sql(
    text: str,
    acc: Acc,
    why: str,
    params: Sequence[bytes | str | None] | None = None,
    *,
    unwrap_prepare: bool = False,
) -> None:
    """Classify SQL text found inside a statement and merge its categories.

    ``params``: values for the nested text's ``$n`` (EXECUTE arguments), or None when
    unknown. Nested SQL never receives Bind values of its own, so anything in it
    that would need them is opaque. ``unwrap_prepare``: the text is a whole
    ``PREPARE name AS ...`` (how a proxy may have recorded it): classify the body.
    """
    if acc.depth >= MAX_NESTING:
        acc.add(OPAQUE, "nesting-too-deep", f"{why}: SQL nested too deeply")
        return
    if "\x00" in text:  # the C parser would stop at the NUL
        acc.add(OPAQUE, "nested-parse-error", f"{why}: SQL text contains a NUL character")
        return
    try:
        tree = json.loads(_pg.parse_sql_json(text))
    except Exception as exc:  # parse errors of the nested text: fail closed
        acc.add(OPAQUE, "nested-parse-error", f"{why}: {safe_parse_message(str(exc))}")
        return
    for raw in tree.get("stmts", ()):
        node = raw.get("stmt") or {}
        if unwrap_prepare and "PrepareStmt" in node:
            node = node["PrepareStmt"].get("query") or {}
        sub = Acc(params, acc.prepared, acc.extra_pure, acc.depth + 1)
        statement(node, sub)
        acc.merge(sub.result())
        acc.uncacheable |= sub.uncacheable
        acc.sensitive |= sub.sensitive
        if sub.needs_bind:
            acc.add(OPAQUE, "dynamic-sql", f"{why}: depends on parameter values not known")


# --------------------------------------------------------------------------------------
# statements
# --------------------------------------------------------------------------------------

#: SQL command names for parse nodes whose name does not spell the command.
COMMANDS = {
    "SelectStmt": "SELECT",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "CopyStmt": "COPY",
    "ExplainStmt": "EXPLAIN",
    "VariableShowStmt": "SHOW",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "ClosePortalStmt": "CLOSE",
    "TruncateStmt": "TRUNCATE",
    "DropStmt": "DROP",
    "CreateStmt": "CREATE TABLE",
    "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE",
    "AlterRoleSetStmt": "ALTER ROLE",
    "IndexStmt": "CREATE INDEX",
    "ViewStmt": "CREATE VIEW",
    "RuleStmt": "CREATE RULE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "AlterSeqStmt": "ALTER SEQUENCE",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "AlterFunctionStmt": "ALTER FUNCTION",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "CreatePLangStmt": "CREATE LANGUAGE",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER",
    "CreateForeignServerStmt": "CREATE SERVER",
    "AlterForeignServerStmt": "ALTER SERVER",
    "DefineStmt": "CREATE",
    "CheckPointStmt": "CHECKPOINT",
    "LockStmt": "LOCK",
    "ConstraintsSetStmt": "SET CONSTRAINTS",
    "NotifyStmt": "NOTIFY",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "DiscardStmt": "DISCARD",
    "LoadStmt": "LOAD",
    "ReindexStmt": "REINDEX",
    "ClusterStmt": "CLUSTER",
    "CommentStmt": "COMMENT",
    "SecLabelStmt": "SECURITY LABEL",
    "RenameStmt": "ALTER",
    "AlterOwnerStmt": "ALTER",
    "AlterObjectSchemaStmt": "ALTER",
    "AlterTableStmt": "ALTER TABLE",
    "AlterSystemStmt": "ALTER SYSTEM",
    "CreateTableSpaceStmt": "CREATE TABLESPACE",
    "DropTableSpaceStmt": "DROP TABLESPACE",
    "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
}

_TRANSACTION_COMMANDS = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

_CAMEL = re.compile(r"(?<!^)(?=[A-Z][a-z])")


def command_name(k: str, body: dict[str, Any]) -> str:
    """The SQL command a parse node stands for (what rules' ``statements`` match)."""
    if k == "TransactionStmt":
        return _TRANSACTION_COMMANDS.get(body.get("kind", ""), "TRANSACTION")
    if k == "VariableSetStmt":
        return "RESET" if body.get("kind", "").startswith("VAR_RESET") else "SET"
    if k == "VacuumStmt":
        return "VACUUM" if body.get("is_vacuumcmd") else "ANALYZE"
    if k == "FetchStmt":
        return "MOVE" if body.get("ismove") else "FETCH"
    if k in ("GrantStmt", "GrantRoleStmt"):
        return "GRANT" if body.get("is_grant") else "REVOKE"
    if k == "CreateTableAsStmt" and body.get("objtype") == "OBJECT_MATVIEW":
        return "CREATE MATERIALIZED VIEW"
    if k == "SelectStmt" and "intoClause" in body:
        return "SELECT INTO"
    name = COMMANDS.get(k)
    if name is not None:
        return name
    return _CAMEL.sub(" ", k.removesuffix("Stmt")).upper()


def statement(node: dict[str, Any], acc: Acc) -> None:
    """Classify one top-level statement node ``{"XxxStmt": body}``."""
    for k, body in node.items():
        acc.command = command_name(k, body)
        stmt_body(k, body, acc)


def stmt_body(k: str, body: dict[str, Any], acc: Acc) -> None:
    if k in _QUERY_NODES:
        query(k, body, acc, True, {})
        return
    h = _STMT.get(k)
    if h is not None:
        h(body, acc)
        return
    static = _STATIC.get(k)
    if static is not None:
        for cat, code, msg in static:
            acc.add(cat, code, msg)
        rel = body.get("relation")
        if isinstance(rel, dict) and "relname" in rel:
            acc.tables.add(_table_key(*_relname(rel)))
        definition(body, acc)
        return
    acc.add(OPAQUE, "unknown-statement", f"{k} is not analysed by the classifier")


_DEFINITION_KEEP = frozenset({ADMIN, EXPORT, PRIVILEGE, ESCAPE})


def definition(body: Any, acc: Acc) -> None:
    """Walk the expressions of a DDL statement (defaults, view queries, rule actions).

    They do not run now, so reads/dumps/unknown functions are not charged to the
    statement; functions with known dangerous effects are (a view calling
    ``pg_read_file`` is an admin action waiting to happen).
    """
    sub = Acc(acc.params, acc.prepared, acc.extra_pure, acc.depth)
    walk(body, sub, False, {})
    for r in sub.reasons:
        if r.category in _DEFINITION_KEEP:
            acc.add(r.category, r.code, r.message)
    acc.tables |= sub.tables
    acc.functions |= sub.functions
    acc.sensitive |= sub.sensitive


def _var_values(body: dict[str, Any], acc: Acc) -> list[str] | None:
    vals: list[str] = []
    for a in body.get("args", ()):
        state, text = value_of(a, acc)
        if state != _KNOWN:
            return None
        vals.append("" if text is None else text)
    return vals


def variable_set(body: dict[str, Any], acc: Acc, *, as_list: bool = False) -> None:
    """SET / RESET / SET TRANSACTION ... (also the body of ALTER ROLE/DATABASE/SYSTEM SET)."""
    kind = body.get("kind", "VAR_SET_VALUE")
    name = body.get("name", "")
    if kind == "VAR_RESET_ALL":
        acc.add(CONTROL, "reset-all", "RESET ALL (role and session authorization are not reset)")
        return
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION / SESSION CHARACTERISTICS
        transaction_options(body.get("args"), acc)
        return
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        values: list[str] | None = []
    elif kind == "VAR_SET_CURRENT":
        values = None
    else:
        values = _var_values(body, acc)
    effects, _ = setting_effects(name, values, as_list=as_list)
    for cat, code, msg in effects:
        acc.add(cat, code, msg)


def transaction_options(opts: list[Any] | None, acc: Acc) -> None:
    acc.add(CONTROL, "transaction", "transaction control")
    for o in opts or ():
        d = o.get("DefElem") or {}
        if d.get("defname") == "transaction_read_only":
            state, text = value_of(d.get("arg"), acc)
            if state == _KNOWN and text not in ("0", "false"):
                continue
            acc.add(
                ESCAPE,
                "read-write-transaction",
                "READ WRITE turns off a read-only transaction default",
            )


def _transaction(body: dict[str, Any], acc: Acc) -> None:
    transaction_options(body.get("options"), acc)


def _explain(body: dict[str, Any], acc: Acc) -> None:
    analyze = False
    for o in body.get("options", ()):
        d = o.get("DefElem") or {}
        if d.get("defname") == "analyze":
            if "arg" not in d:
                analyze = True
            else:
                state, text = value_of(d["arg"], acc)
                analyze = not (
                    state == _KNOWN and (text or "").strip().lower() in ("off", "false", "0", "no")
                )
    q = body.get("query") or {}
    if analyze:
        for k, b in q.items():
            stmt_body(k, b, acc)
        return
    acc.add(READ, "explain", "EXPLAIN only plans the statement")
    sub = Acc(acc.params, acc.prepared, acc.extra_pure, acc.depth)
    for k, b in q.items():
        stmt_body(k, b, sub)
    # planning can evaluate IMMUTABLE functions: unknown ones stay opaque
    acc.merge(sub.result(), only=frozenset({OPAQUE}))
    acc.sensitive |= sub.sensitive
    acc.uncacheable |= sub.uncacheable


def _copy(body: dict[str, Any], acc: Acc) -> None:
    rel = body.get("relation")
    is_from = body.get("is_from", False)
    if body.get("is_program"):
        acc.add(ADMIN, "copy-program", "COPY runs a program on the database server")
    elif body.get("filename"):
        acc.add(ADMIN, "copy-server-file", "COPY reads or writes a file on the database server")
    if is_from:
        if rel:
            _target_write(rel, acc)
        acc.add(WRITE, "copy-from", "COPY FROM loads rows")
        walk(body.get("whereClause"), acc, False, {})
        return
    acc.add(EXPORT, "copy-to", "COPY TO sends data out in bulk")
    acc.add(DUMP, "copy-to", "COPY TO reads in bulk")
    if rel:
        schema, name = _relname(rel)
        acc.tables.add(_table_key(schema, name))
        acc.add(READ, "select", "reads data")
        if _is_catalog(schema, name):
            _catalog_read(schema, name, acc)
    for a in body.get("attlist", ()):
        s = a.get("String")
        if s is not None:
            acc.columns.add(s.get("sval", ""))
    q = body.get("query") or {}
    for k, b in q.items():
        query(k, b, acc, True, {})


def _prepare(body: dict[str, Any], acc: Acc) -> None:
    acc.add(CONTROL, "prepare", "PREPARE stores a statement; it is classified by its body")
    q = body.get("query") or {}
    sub = Acc(None, acc.prepared, acc.extra_pure, acc.depth)
    for k, b in q.items():
        stmt_body(k, b, sub)
    acc.merge(sub.result())
    acc.sensitive |= sub.sensitive


def _execute(body: dict[str, Any], acc: Acc) -> None:
    name = body.get("name", "")
    acc.uncacheable = True  # depends on session state, never cache
    # The arguments are expressions evaluated when EXECUTE runs (set_config(...),
    # pg_read_file(...) are allowed there): they are classified like any other.
    walk(body.get("params"), acc, True, {})
    found = acc.prepared.get(name) if acc.prepared is not None else None
    # The session may know several statements the name could stand for (after errors,
    # see dbgate.proxy.prepared): each is classified, so the strictest one decides.
    texts = (found,) if isinstance(found, str) else tuple(found or ())
    if not texts:
        acc.add(OPAQUE, "unknown-prepared", f"EXECUTE {name}: the prepared statement is unknown")
        return
    params: list[bytes | str | None] | None = []
    for p in body.get("params", ()):
        state, v = value_of(p, acc)
        if state != _KNOWN or params is None:
            params = None  # some argument is computed or a Bind parameter not yet seen
            continue
        params.append(v)
    for text in texts:
        nested_sql(text, acc, f"EXECUTE {name}", params, unwrap_prepare=True)


def _declare(body: dict[str, Any], acc: Acc) -> None:
    q = body.get("query") or {}
    unbounded = False
    for k, b in q.items():
        unbounded = query(k, b, acc, True, {})
    if unbounded and body.get("options", 0) & 0x20:
        acc.add(DUMP, "held-cursor", "WITH HOLD cursor over whole tables")


def _fetch(body: dict[str, Any], acc: Acc) -> None:
    if body.get("ismove"):
        acc.add(CONTROL, "move", "MOVE repositions a cursor")
    else:
        acc.add(READ, "fetch", "FETCH reads from a cursor classified at DECLARE")


def _call(body: dict[str, Any], acc: Acc) -> None:
    fc = body.get("funccall") or {}
    names = _strs(fc.get("funcname"))
    acc.functions.add(".".join(names))
    acc.add(OPAQUE, "call-procedure", f"CALL {'.'.join(names)}: procedure effects are unknown")
    walk(fc.get("args"), acc, True, {})


def _do(body: dict[str, Any], acc: Acc) -> None:
    acc.add(OPAQUE, "do-block", "DO runs an anonymous code block")


def _notify(body: dict[str, Any], acc: Acc) -> None:
    acc.add(WRITE, "notify", "NOTIFY sends a message to listening sessions")


def _truncate(body: dict[str, Any], acc: Acc) -> None:
    for r in body.get("relations", ()):
        rv = r.get("RangeVar")
        if rv:
            _target_write(rv, acc)
    acc.add(DESTRUCTIVE, "truncate", "TRUNCATE removes all rows")


_DROP_EXTRA = {
    "OBJECT_EXTENSION": (ADMIN, "extension", "drops an extension"),
    "OBJECT_POLICY": (PRIVILEGE, "policy", "drops a row-level security policy"),
    "OBJECT_PUBLICATION": (ADMIN, "replication-object", "drops a publication"),
    "OBJECT_EVENT_TRIGGER": (ADMIN, "event-trigger", "drops an event trigger"),
    "OBJECT_FOREIGN_SERVER": (EXPORT, "foreign-data", "drops a foreign server"),
    "OBJECT_FDW": (EXPORT, "foreign-data", "drops a foreign-data wrapper"),
    "OBJECT_LANGUAGE": (ADMIN, "language", "drops a procedural language"),
    "OBJECT_ACCESS_METHOD": (ADMIN, "access-method", "drops an access method"),
    "OBJECT_TRANSFORM": (ADMIN, "transform", "drops a transform"),
}


def _drop(body: dict[str, Any], acc: Acc) -> None:
    rt = body.get("removeType", "")
    acc.add(DDL, "drop", "DROP changes the schema")
    acc.add(DESTRUCTIVE, "drop", f"DROP {rt.removeprefix('OBJECT_').lower()} removes objects")
    extra = _DROP_EXTRA.get(rt)
    if extra is not None:
        acc.add(*extra)
    if rt in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE"):
        for o in body.get("objects", ()):
            lst = o.get("List")
            if lst:
                acc.tables.add(".".join(_strs(lst.get("items"))))


def _alter_table(body: dict[str, Any], acc: Acc) -> None:
    acc.add(DDL, "alter", "ALTER changes the schema")
    rel = body.get("relation") or {}
    acc.tables.add(_table_key(*_relname(rel)))
    for c in body.get("cmds", ()):
        cmd = c.get("AlterTableCmd") or {}
        st = cmd.get("subtype", "")
        if st == "AT_DropColumn":
            acc.add(DESTRUCTIVE, "drop-column", "ALTER TABLE ... DROP COLUMN removes data")
        elif st == "AT_ChangeOwner":
            acc.add(PRIVILEGE, "owner-to", "ALTER ... OWNER TO changes ownership")
        elif st in ("AT_DisableRowSecurity", "AT_NoForceRowSecurity"):
            acc.add(PRIVILEGE, "row-security-off", "turns row-level security off")
        elif st in ("AT_DisableTrig", "AT_DisableTrigAll", "AT_DisableTrigUser", "AT_DisableRule"):
            acc.add(PRIVILEGE, "disable-trigger", "disables triggers or rules (audit, integrity)")
        definition(cmd.get("def"), acc)


def _create_table_as(body: dict[str, Any], acc: Acc) -> None:
    into = body.get("into") or {}
    rel = into.get("rel") or {}
    acc.tables.add(_table_key(*_relname(rel)))
    if into.get("skipData"):  # WITH NO DATA: structure only, the query does not run
        acc.add(DDL, "create", "creates a table or materialized view WITH NO DATA")
        definition(body.get("query"), acc)
        return
    acc.add(DDL, "create-table-as", "CREATE TABLE AS creates a table")
    acc.add(WRITE, "create-table-as", "CREATE TABLE AS writes rows")
    q = body.get("query") or {}
    for k, b in q.items():
        if k == "SelectStmt":
            if select(b, acc, True, {}, False):
                acc.add(DUMP, "copy-table-into-table", "copies whole tables into a new table")
        else:
            stmt_body(k, b, acc)


def _create_function(body: dict[str, Any], acc: Acc) -> None:
    acc.add(DDL, "create-function", "creates a function or procedure")
    acc.add(OPAQUE, "function-body", "function bodies are not analysed")
    _function_options(body.get("options"), acc)
    names = _strs(body.get("funcname"))
    acc.functions.add(".".join(names))


_UNTRUSTED = frozenset({"c", "internal", "plpython3u", "plpythonu", "plperlu", "pltclu", "plsh"})


def _function_options(opts: list[Any] | None, acc: Acc) -> None:
    for o in opts or ():
        d = o.get("DefElem") or {}
        name = d.get("defname")
        if name == "security":
            state, text = value_of(d.get("arg"), acc)
            if state != _KNOWN or text not in ("false", "0"):
                acc.add(PRIVILEGE, "security-definer", "SECURITY DEFINER runs as the owner")
        elif name == "language":
            state, text = value_of(d.get("arg"), acc)
            if state == _KNOWN and (text or "").lower() in _UNTRUSTED:
                acc.add(ADMIN, "untrusted-language", f"function in untrusted language {text}")
        elif name == "set":
            vs = (d.get("arg") or {}).get("VariableSetStmt")
            if vs and vs.get("name") in ("role", "session_authorization"):
                variable_set(vs, acc)


def _alter_function(body: dict[str, Any], acc: Acc) -> None:
    acc.add(DDL, "alter-function", "alters a function")
    _function_options(body.get("actions"), acc)


def _alter_role_set(body: dict[str, Any], acc: Acc) -> None:
    acc.add(PRIVILEGE, "alter-role", "changes a role's defaults")
    variable_set(body.get("setstmt") or {}, acc)


def _alter_database_set(body: dict[str, Any], acc: Acc) -> None:
    acc.add(DDL, "alter-database", "changes a database's defaults")
    variable_set(body.get("setstmt") or {}, acc)


def _alter_system(body: dict[str, Any], acc: Acc) -> None:
    acc.add(ADMIN, "alter-system", "ALTER SYSTEM rewrites server configuration")
    variable_set(body.get("setstmt") or {}, acc)


def _vacuum(body: dict[str, Any], acc: Acc) -> None:
    if body.get("is_vacuumcmd"):
        acc.add(ADMIN, "vacuum", "VACUUM is server maintenance")
    else:
        acc.add(CONTROL, "analyze", "ANALYZE refreshes planner statistics")
    for r in body.get("rels", ()):
        vr = r.get("VacuumRelation") or {}
        rel = vr.get("relation")
        if rel:
            acc.tables.add(_table_key(*_relname(rel)))


def _rename(body: dict[str, Any], acc: Acc) -> None:
    if body.get("renameType") == "OBJECT_ROLE":
        acc.add(PRIVILEGE, "rename-role", "renames a role")
    else:
        acc.add(DDL, "rename", "renames an object")
    rel = body.get("relation")
    if rel:
        acc.tables.add(_table_key(*_relname(rel)))


def _create_schema(body: dict[str, Any], acc: Acc) -> None:
    acc.add(DDL, "create-schema", "creates a schema")
    role = body.get("authrole") or {}
    if role.get("roletype") == "ROLESPEC_CSTRING":  # owned by another, named role
        acc.add(PRIVILEGE, "owner-to", "CREATE SCHEMA ... AUTHORIZATION gives it to a role")
    for e in body.get("schemaElts", ()):
        for k, b in e.items():
            stmt_body(k, b, acc)


def _variable_set_stmt(body: dict[str, Any], acc: Acc) -> None:
    variable_set(body, acc)


def _create(body: dict[str, Any], acc: Acc) -> None:
    rel = body.get("relation") or {}
    acc.tables.add(_table_key(*_relname(rel)))
    acc.add(DDL, "create", "creates a table")
    definition(body.get("tableElts"), acc)


_STMT: dict[str, Callable[[dict[str, Any], Acc], None]] = {
    "TransactionStmt": _transaction,
    "VariableSetStmt": _variable_set_stmt,
    "ExplainStmt": _explain,
    "CopyStmt": _copy,
    "PrepareStmt": _prepare,
    "ExecuteStmt": _execute,
    "DeclareCursorStmt": _declare,
    "FetchStmt": _fetch,
    "CallStmt": _call,
    "DoStmt": _do,
    "NotifyStmt": _notify,
    "TruncateStmt": _truncate,
    "DropStmt": _drop,
    "AlterTableStmt": _alter_table,
    "CreateTableAsStmt": _create_table_as,
    "CreateFunctionStmt": _create_function,
    "AlterFunctionStmt": _alter_function,
    "AlterRoleSetStmt": _alter_role_set,
    "AlterDatabaseSetStmt": _alter_database_set,
    "AlterSystemStmt": _alter_system,
    "VacuumStmt": _vacuum,
    "RenameStmt": _rename,
    "CreateSchemaStmt": _create_schema,
    "CreateStmt": _create,
}

_S = tuple[tuple[Category, str, str], ...]
_ctl: _S = ((CONTROL, "session", "session control"),)
_ddl: _S = ((DDL, "ddl", "changes the schema"),)
_ddl_drop: _S = (*_ddl, (DESTRUCTIVE, "drop", "removes objects"))
_priv: _S = ((PRIVILEGE, "privilege", "changes roles or privileges"),)
_ext: _S = ((ADMIN, "extension", "installs or changes extensions (server code)"), *_ddl)
_fdw: _S = (
    (EXPORT, "foreign-data", "foreign servers and user mappings reach other servers"),
    *_ddl,
)
_repl: _S = (
    (ADMIN, "replication-object", "publications/subscriptions replicate data"),
    (EXPORT, "replication-object", "publications/subscriptions move data to other servers"),
    *_ddl,
)

_STATIC: dict[str, _S] = {
    "VariableShowStmt": ((CONTROL, "show", "SHOW reads a setting"),),
    "DiscardStmt": ((CONTROL, "discard", "DISCARD resets session state"),),
    "ListenStmt": ((CONTROL, "listen", "LISTEN"),),
    "UnlistenStmt": ((CONTROL, "listen", "UNLISTEN"),),
    "DeallocateStmt": _ctl,
    "ClosePortalStmt": _ctl,
    "ConstraintsSetStmt": _ctl,
    "LockStmt": ((WRITE, "lock", "LOCK TABLE takes table locks"),),
    "RefreshMatViewStmt": ((WRITE, "refresh", "refreshes a materialized view"),),
    "CheckPointStmt": ((ADMIN, "checkpoint", "CHECKPOINT forces a server checkpoint"),),
    "LoadStmt": ((ADMIN, "load", "LOAD loads a shared library into the server"),),
    "ClusterStmt": ((ADMIN, "cluster", "CLUSTER rewrites tables under exclusive lock"),),
    "ReindexStmt": ((ADMIN, "reindex", "REINDEX rebuilds indexes under lock"),),
    "CreateExtensionStmt": _ext,
    "AlterExtensionStmt": _ext,
    "AlterExtensionContentsStmt": _ext,
    "CreateEventTrigStmt": ((ADMIN, "event-trigger", "event triggers run on every DDL"), *_ddl),
    "AlterEventTrigStmt": ((ADMIN, "event-trigger", "event triggers run on every DDL"), *_ddl),
    "CreatePLangStmt": ((ADMIN, "language", "installs a procedural language"), *_ddl),
    "CreateTransformStmt": ((ADMIN, "transform", "creates a transform"), *_ddl),
    "CreateAmStmt": ((ADMIN, "access-method", "creates an access method"), *_ddl),
    "CreateTableSpaceStmt": ((ADMIN, "tablespace", "tablespaces are server directories"), *_ddl),
    "DropTableSpaceStmt": ((ADMIN, "tablespace", "drops a tablespace"), *_ddl_drop),
    "AlterTableSpaceOptionsStmt": ((ADMIN, "tablespace", "alters a tablespace"), *_ddl),
    "AlterTableMoveAllStmt": ((ADMIN, "tablespace", "moves relations between tablespaces"), *_ddl),
    "CreatePublicationStmt": _repl,
    "AlterPublicationStmt": _repl,
    "CreateSubscriptionStmt": _repl,
    "AlterSubscriptionStmt": _repl,
    "DropSubscriptionStmt": (*_repl, (DESTRUCTIVE, "drop", "removes objects")),
    "CreateFdwStmt": _fdw,
    "AlterFdwStmt": _fdw,
    "CreateForeignServerStmt": _fdw,
    "AlterForeignServerStmt": _fdw,
    "CreateUserMappingStmt": _fdw,
    "AlterUserMappingStmt": _fdw,
    "DropUserMappingStmt": (*_fdw, (DESTRUCTIVE, "drop", "removes objects")),
    "ImportForeignSchemaStmt": _fdw,
    "CreateForeignTableStmt": _fdw,
    "GrantStmt": ((PRIVILEGE, "grant", "GRANT/REVOKE changes privileges"),),
    "GrantRoleStmt": ((PRIVILEGE, "grant-role", "grants or revokes role membership"),),
    "AlterDefaultPrivilegesStmt": (
        (PRIVILEGE, "default-privileges", "changes default privileges"),
    ),
    "CreateRoleStmt": ((PRIVILEGE, "create-role", "creates a role"),),
    "AlterRoleStmt": ((PRIVILEGE, "alter-role", "alters a role"),),
    "DropRoleStmt": (
        (PRIVILEGE, "drop-role", "drops a role"),
        (DESTRUCTIVE, "drop", "removes roles"),
    ),
    "ReassignOwnedStmt": ((PRIVILEGE, "reassign-owned", "reassigns ownership"),),
    "DropOwnedStmt": (
        (PRIVILEGE, "drop-owned", "drops a role's objects and privileges"),
        (DESTRUCTIVE, "drop", "removes objects"),
    ),
    "AlterOwnerStmt": ((PRIVILEGE, "owner-to", "ALTER ... OWNER TO changes ownership"),),
    "CreatePolicyStmt": ((PRIVILEGE, "policy", "row-level security policy"), *_ddl),
    "AlterPolicyStmt": ((PRIVILEGE, "policy", "row-level security policy"), *_ddl),
    "SecLabelStmt": ((PRIVILEGE, "security-label", "security label"),),
    "CreatedbStmt": _ddl,
    "AlterDatabaseStmt": _ddl,
    "AlterDatabaseRefreshCollStmt": _ddl,
    "DropdbStmt": _ddl_drop,
    "IndexStmt": _ddl,
    "CreateSeqStmt": _ddl,
    "AlterSeqStmt": _ddl,
    "ViewStmt": _ddl,
    "CreateTrigStmt": _ddl,
    "RuleStmt": _ddl,
    "CreateDomainStmt": _ddl,
    "AlterDomainStmt": _ddl,
    "CreateEnumStmt": _ddl,
    "AlterEnumStmt": _ddl,
    "CompositeTypeStmt": _ddl,
    "CreateRangeStmt": _ddl,
    "DefineStmt": _ddl,
    "CreateCastStmt": _ddl,
    "CreateOpClassStmt": _ddl,
    "CreateOpFamilyStmt": _ddl,
    "AlterOpFamilyStmt": _ddl,
    "CreateConversionStmt": _ddl,
    "CreateStatsStmt": _ddl,
    "AlterStatsStmt": _ddl,
    "CommentStmt": _ddl,
    "AlterObjectSchemaStmt": _ddl,
    "AlterObjectDependsStmt": _ddl,
    "AlterOperatorStmt": _ddl,
    "AlterTypeStmt": _ddl,
    "AlterCollationStmt": _ddl,
    "AlterTSConfigurationStmt": _ddl,
    "AlterTSDictionaryStmt": _ddl,
}
