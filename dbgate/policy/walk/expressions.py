"""Expressions: column references, operators, function calls and the sub-queries in them.

:func:`walk` is the generic descent over any subtree and the classifier's hottest
loop. Every called function is looked up in the function catalog
(:mod:`dbgate.policy.functions`); the few whose effect depends on their arguments
(``set_config``, ``pg_notify``, ``query_to_xml`` and friends) are judged here from
those arguments. ``out`` tells whether values at this point flow into the
statement's result (a sub-select in the target list) or only filter (in WHERE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dbgate.policy import functions as _fn
from dbgate.policy.catalog_builtin import BUILTIN_TYPES, OPERATORS
from dbgate.policy.catalog_settings import VALUE_SENSITIVE, setting_effects
from dbgate.policy.model import DUMP, EXPORT, OPAQUE, READ, WRITE
from dbgate.policy.walk import guards, nested, queries, sources, statements
from dbgate.policy.walk.bounds import plus
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import (
    DYNAMIC,
    KNOWN,
    NEED_BIND,
    QUERY_NODES,
    Ctes,
    op_name,
    relname,
    strs,
    value_of,
)


def walk(v: Any, facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    """Walk any subtree. ``out``: values here flow into the statement's result.

    Hot loop: exact ``type() is`` checks, scalar fields skipped before any lookup,
    and subtrees that cannot contain calls or columns (constants, type names) skipped.
    """
    t = type(v)
    if t is list:
        for x in v:
            if type(x) is dict:
                walk(x, facts, out, ctes)
        return
    if t is not dict:
        return
    for k, x in v.items():
        tx = type(x)
        if tx is dict:
            if k in _SKIP:
                if k == "typeName":
                    type_name(x, facts)
                continue
            h = _EXPR.get(k)
            if h is not None:
                h(x, facts, out, ctes)
            elif k in QUERY_NODES:
                queries.nested_query(k, x, facts, out, ctes)
            elif k[0].isupper() and k.endswith("Stmt"):
                statements.stmt_body(k, x, facts)
            else:
                walk(x, facts, out, ctes)
        elif tx is list:
            for y in x:
                if type(y) is dict:
                    walk(y, facts, out, ctes)


#: Subtrees with nothing to find: literals and type names (typmods are literals).
_SKIP = frozenset({"A_Const", "TypeName", "typeName", "String", "Integer", "Float", "Boolean"})


def _column_ref(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    parts = []
    for f in x.get("fields", ()):
        s = f.get("String")
        parts.append(s["sval"] if s is not None and "sval" in s else "*")
    if len(parts) == 1:
        facts.columns.add(parts[0])
        if facts.free_refs is not None and parts[0] != "*":
            facts.free_refs.add("?" + parts[0])
    elif parts:
        facts.columns.add(".".join(parts))
        if facts.free_refs is not None:
            facts.free_refs.add(parts[-2])


def _sublink(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    if "operName" in x:
        _check_operator(strs(x["operName"]), facts)
    walk(x.get("testexpr"), facts, False, ctes)
    kind = x.get("subLinkType", "")
    carries = out and kind in ("EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK", "CTE_SUBLINK")
    sub = x.get("subselect")
    if isinstance(sub, dict):
        for k, body in sub.items():
            produced = queries.nested_query(k, body, facts, carries, ctes)
            if kind == "ARRAY_SUBLINK":
                # ARRAY(SELECT ...) puts every row it reads in one value: in the
                # result, or in an error message when cast to something it is not.
                _collected(produced, facts, "ARRAY(SELECT ...)")


def _collected(produced: Any, facts: StatementFacts, construct: str) -> None:
    """``dump`` when the query a construct collects into one array reads rows no key
    bounds."""
    if queries.carries_rows(produced.reads, produced.rows):
        tables = tuple(t for t, n in produced.reads.items() if type(t) is str and n is None)
        facts.add(
            DUMP,
            "collects-rows",
            f"collects rows of {_names(tables)} into one array ({construct}) "
            "with no unique key that bounds them, so a row limit cannot bound it",
        )


#: Operator "names" the grammar uses for constructs that are not pg_operator entries.
_SYNTAX_OPS = frozenset({"BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"})


def _check_operator(names: list[str], facts: StatementFacts) -> None:
    """Operators run functions too: a user-defined one (``===``) is as unknown as a call."""
    if not names:
        return
    op = names[-1]
    if (len(names) > 1 and names[-2] != "pg_catalog") or (
        op not in OPERATORS and op not in _SYNTAX_OPS
    ):
        facts.add(
            OPAQUE,
            "unknown-operator",
            f"uses the operator {'.'.join(names)}, which is not a built-in; its effect is unknown",
        )


def _a_expr(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    op, foreign = op_name(x.get("name"))
    if foreign or (op not in OPERATORS and op not in _SYNTAX_OPS):
        _check_operator(strs(x.get("name")), facts)
    walk(x.get("lexpr"), facts, out, ctes)
    walk(x.get("rexpr"), facts, out, ctes)


def _range_var_expr(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    """A relation outside any FROM this walk understands: read, and not bounded."""
    schema, name = relname(x)
    if schema is None and name in ctes:
        return
    whole = sources.from_range_var(x, facts)
    for table in whole:
        facts.reads[table] = None


def _names(tables: tuple[str, ...]) -> str:
    from dbgate.policy.walk.nodes import name_list

    return name_list(tables or ("a table",))


def _func_call(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    names = strs(x.get("funcname"))
    name = names[-1] if names else ""
    within = bool(x.get("agg_within_group"))
    if facts.calls is not None:
        recorded = name
        if within and name in _fn.FRACTION_AGGREGATES:
            facts.sensitive = True  # 0.5 and '{0.1,0.5}' mask alike: exact text only
            if not (_one_number(x.get("args")) or _written_numbers(x.get("args"))):
                recorded = f"{name}[]"  # perhaps many fractions: collects (functions.py)
        facts.calls.append((recorded, names[-2] if len(names) > 1 else None, "over" in x))
    func_names(names, x, facts, out, ctes)
    walk(x.get("args"), facts, out, ctes)
    for f in ("agg_order", "agg_filter", "over"):
        if f in x:
            # An ordered-set aggregate's WITHIN GROUP input is what it returns (mode,
            # percentile_disc ...), not only an order.
            carries = out and f == "agg_order" and within
            carries = carries and name not in _fn.HYPOTHETICAL_AGGREGATES
            walk(x[f], facts, carries, ctes)


def _one_number(args: Any) -> bool:
    """Whether an aggregate's arguments are one numeric constant (``0.5``,
    ``'0.5'::float8``): a single fraction."""
    if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], dict):
        return False
    node = args[0]
    cast = node.get("TypeCast")
    if cast is not None:  # '0.5'::float8, not '{0.1,0.5}'::float8[]
        if (cast.get("typeName") or {}).get("arrayBounds"):
            return False
        const = (cast.get("arg") or {}).get("A_Const")
        return const is not None and ("fval" in const or "ival" in const or "sval" in const)
    const = node.get("A_Const")  # a bare '...' could be read as an array of fractions
    return const is not None and ("fval" in const or "ival" in const)


def _written_numbers(args: Any) -> bool:
    """Whether an aggregate's arguments are one ``ARRAY[…]`` of numeric constants
    (``ARRAY[0.25, 0.5, 0.75]``, quartiles): it returns one value per constant written
    in the text, as as many calls of one fraction each would. (An array literal,
    ``'{0.25,0.75}'::float8[]``, still collects.)"""
    if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], dict):
        return False
    node = args[0]
    cast = node.get("TypeCast")
    if cast is not None:  # ARRAY[0.25, 0.75]::float8[]
        node = cast.get("arg") or {}
    elements = (node.get("A_ArrayExpr") or {}).get("elements")
    return bool(elements) and all(_one_number([e]) for e in elements)


def func_names(
    names: list[str], x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes
) -> None:
    """Look a called function up in the catalog and add its categories."""
    if not names:
        facts.add(OPAQUE, "unknown-function", "calls a function without a name")
        return
    name = names[-1]
    schema = names[-2] if len(names) > 1 else None
    qual = ".".join(names)
    facts.functions.add(qual)
    if name in _fn.SESSION_PLANNING:  # hypopg, in whatever schema it was installed
        eff = _fn.SESSION_PLANNING_EFFECT
        for c in eff.categories:
            facts.add(c, eff.code, f"calls {qual}, which {eff.message}")
        return
    eff = _fn.EFFECTS.get(name)
    if eff is not None:
        for c in eff.categories:
            facts.add(c, eff.code, f"calls {qual}, which {eff.message}")
        if WRITE in eff.categories:
            facts.write_calls += 1
    builtin = schema is None or schema == "pg_catalog"
    if builtin and name in _fn.SPECIAL:
        _special(name, qual, x, facts)
        return
    if eff is not None and builtin and name in _fn.BUILTIN_NAMES:
        return  # a known built-in with a known effect; extension functions stay opaque
    if _fn.is_pure(name, schema):
        return
    if facts.extra_pure and (
        qual in facts.extra_pure or (schema is None and name in facts.extra_pure)
    ):
        return
    facts.add(
        OPAQUE,
        "unknown-function",
        f"calls {qual}, which is not a function dbgate knows, so its effect is unknown",
    )


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


def _special(name: str, qual: str, x: dict[str, Any], facts: StatementFacts) -> None:
    args = _positional(name, x.get("args") or [])
    if name == "set_config":
        _set_config(qual, args, facts)
    elif name == "pg_notify":
        _notify(qual, args, facts)
    elif name in _fn.LO_WRITES:
        if all(guards.single_value(a) for a in args):
            facts.add(WRITE, "lo-write", f"calls {qual}, which creates or changes a large object")
            facts.write_calls += 1
        else:
            facts.add(
                EXPORT,
                "lo-write-carries-data",
                f"calls {qual} with computed arguments, which copies data into a large "
                "object, outside the table and out of reach of its row limits",
            )
    elif name in _fn.LO_READS:
        if args and guards.single_value(args[0]):
            facts.add(READ, "lo-read", f"calls {qual}, which reads one large object")
        else:
            facts.add(
                DUMP,
                "lo-read-computed",
                f"calls {qual} on large objects chosen by a computed value (one per row), "
                "which reads their contents in bulk",
            )
    elif name in _fn.SLEEPS:
        guards.sleep(name, args, facts)
    else:  # query_to_xml & co: execute a SQL string
        idx = _fn.SQL_STRING_FUNCTIONS[name]
        if name.startswith("query_to"):
            facts.add(
                DUMP, "xml-query-export", f"calls {qual}, which returns a whole query result as XML"
            )
        state, text = value_of(args[idx], facts) if len(args) > idx else (DYNAMIC, None)
        if state == KNOWN and text is not None:
            before = facts.nested_rows
            facts.nested_rows = 0
            nested.nested_sql(text, facts, f"SQL executed by {qual}")
            rows = facts.nested_rows
            facts.nested_rows = None if before is None or rows is None else plus(before, rows)
            if name == "ts_rewrite" and rows is None:
                # each (target, substitute) row rewrites the query in turn, so a
                # substitute that puts the target back ('ssn | a') folds every row into
                # the one tsquery returned: a collecting aggregate by another name
                facts.add(
                    DUMP,
                    "collects-rows",
                    f"calls {qual} with a query no unique key or LIMIT bounds, whose every "
                    "row can be folded into the one value it returns",
                )
        elif state == NEED_BIND:
            facts.add(
                OPAQUE, "needs-bind", f"calls {qual}, which runs SQL given as a parameter at Bind"
            )
        else:
            facts.add(OPAQUE, "dynamic-sql", f"calls {qual}, which runs SQL computed at run time")


def _notify(qual: str, args: list[Any], facts: StatementFacts) -> None:
    """``pg_notify(channel, payload)``: a side effect other sessions see; with a
    computed channel or payload, a channel that can carry table data out."""
    if len(args) >= 2 and all(guards.single_value(a) for a in args[:2]):
        facts.add(WRITE, "notify", f"calls {qual}, which notifies listening sessions")
    else:
        facts.add(
            EXPORT,
            "notify-carries-data",
            f"calls {qual} with a computed channel or payload, which can carry table data "
            "to other sessions",
        )


def _set_config(qual: str, args: list[Any], facts: StatementFacts) -> None:
    if not args:
        facts.add(OPAQUE, "dynamic-setting", f"calls {qual} without a setting name")
        return
    rows = _pg_settings_names(args[0], facts)
    if rows is not None:  # set_config(name, ...) FROM pg_settings WHERE name = '...'
        for name in sorted(rows):
            _setting(qual, name, args, facts)
        return
    state, name = value_of(args[0], facts)
    if state != KNOWN or name is None:
        if state == NEED_BIND:
            facts.add(OPAQUE, "needs-bind", f"calls {qual} with the setting name given at Bind")
        else:
            facts.add(
                OPAQUE, "dynamic-setting", f"calls {qual} with a setting name computed at run time"
            )
        return
    _setting(qual, name.strip(), args, facts)


def _setting(qual: str, name: str, args: list[Any], facts: StatementFacts) -> None:
    """The effects of ``set_config(name, args[1], ...)`` for one known setting name."""
    lname = name.lower()
    value = args[1] if len(args) > 1 else None
    if lname in guards.GUARDS:
        guards.set_config_guard(qual, lname, args, facts)
    vstate, text = KNOWN, None
    if lname in VALUE_SENSITIVE and len(args) > 1:  # only read the value if it matters
        vstate, text = value_of(value, facts)
    elif value is not None and not guards.single_value(value):
        # application_name is reported back to the client (ParameterStatus), and any
        # setting can be read back with current_setting(): a computed value is a way out
        facts.add(
            EXPORT,
            "setting-carries-data",
            f"calls {qual} with a value computed at run time, which can carry table data "
            "into a setting the session reads back",
        )
    values = None if vstate != KNOWN else ([] if text is None else [text])
    effects, needed = setting_effects(name, values, as_list=True)
    for cat, code, msg in effects:
        if needed and vstate == NEED_BIND:
            facts.add(OPAQUE, "needs-bind", f"calls {qual} with the value of {name} given at Bind")
        else:
            facts.add(cat, code, msg)


def _pg_settings_names(arg: Any, facts: StatementFacts) -> frozenset[str] | None:
    """The setting names ``arg`` can be, when it is the ``name`` column of pg_settings
    rows that the enclosing query's WHERE limits to literal names; else None.

    pg_dump sends ``SELECT set_config(name, '...', false) FROM pg_settings WHERE name =
    '...'`` to set a setting only where the server has it. The query level sets
    ``facts.setting_rows`` (see :func:`dbgate.policy.walk.queries.select`).
    """
    rows = facts.setting_rows
    if rows is None or type(arg) is not dict:
        return None
    ref = arg.get("ColumnRef")
    if ref is None:
        return None
    fields = strs(ref.get("fields"))
    if len(fields) != len(ref.get("fields", ())) or not fields or fields[-1] != "name":
        return None
    qualifiers, names = rows
    if (len(fields) == 2 and fields[0] not in qualifiers) or len(fields) > 2:
        return None
    return names


def _range_function(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    walk(x.get("functions"), facts, out, ctes)
    for col in x.get("coldeflist") or ():  # json_to_record(...) AS x(a my_domain)
        if type(col) is dict:
            type_name((col.get("ColumnDef") or {}).get("typeName"), facts)


def _json_agg(name: str) -> Callable[[dict[str, Any], StatementFacts, bool, Ctes], None]:
    """JSON_ARRAYAGG / JSON_OBJECTAGG are their own nodes, not calls: record them."""

    def handler(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
        if facts.calls is not None:
            facts.calls.append((name, None, "over" in (x.get("constructor") or {})))
        walk(x, facts, out, ctes)

    return handler


def _json_array_query(x: dict[str, Any], facts: StatementFacts, out: bool, ctes: Ctes) -> None:
    """JSON_ARRAY(SELECT ...): every row the query reads in one value, as
    ARRAY(SELECT ...) (see :func:`_sublink`)."""
    walk(x.get("format"), facts, False, ctes)
    query = x.get("query")
    if not isinstance(query, dict):
        return
    for k, body in query.items():
        _collected(queries.nested_query(k, body, facts, out, ctes), facts, "JSON_ARRAY(SELECT ...)")


#: Types a cast may name besides BUILTIN_TYPES: pseudo-types (a cast to them is an
#: error or a no-op) and information_schema's domains, whose checks are built in.
_CAST_TYPES = frozenset(
    {"record", "unknown", "cstring", "void", "anyelement", "anyarray", "anynonarray"}
)
_INFORMATION_SCHEMA_TYPES = frozenset(
    {"cardinal_number", "character_data", "sql_identifier", "time_stamp", "yes_or_no"}
)


def type_name(x: Any, facts: StatementFacts) -> None:
    """A value is made of a named type (a cast, a typed column of ``json_to_record(...)
    AS x(a t)``, xmltable or JSON_TABLE, JSON ``RETURNING t``, a PREPARE's parameter):
    that runs code of the type, a domain's CHECK constraints (which may call any
    function) or a user-defined cast's function. Only PostgreSQL's own types are
    known: a type of any other schema (``public.int4`` is not ``int4``) or name is code
    dbgate cannot see, like an unknown function."""
    if type(x) is not dict:
        return
    names = strs(x.get("names"))
    name = names[-1] if names else ""
    schema = names[-2] if len(names) > 1 else None
    if len(names) > 2 or not (
        (schema in (None, "pg_catalog") and (name in BUILTIN_TYPES or name in _CAST_TYPES))
        or (schema == "information_schema" and name in _INFORMATION_SCHEMA_TYPES)
    ):
        qual = ".".join(names) or "a type without a name"
        if facts.extra_pure and (
            qual in facts.extra_pure or (schema is None and name in facts.extra_pure)
        ):
            return  # the operator vouched for the type (an extension's vector, citext)
        facts.add(
            OPAQUE,
            "unknown-type",
            f"makes a value of type {qual}, which is not a type dbgate knows: a domain's "
            "checks or a user-defined cast run code whose effect is unknown",
        )


_EXPR: dict[str, Callable[[dict[str, Any], StatementFacts, bool, Ctes], None]] = {
    "ColumnRef": _column_ref,
    "SubLink": _sublink,
    "FuncCall": _func_call,
    "A_Expr": _a_expr,
    "RangeVar": _range_var_expr,
    "RangeFunction": _range_function,
    "JsonArrayAgg": _json_agg("JSON_ARRAYAGG"),
    "JsonObjectAgg": _json_agg("JSON_OBJECTAGG"),
    "JsonArrayQueryConstructor": _json_array_query,
}
