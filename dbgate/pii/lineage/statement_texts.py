"""Statement texts asked questions of: held.

dbgate forwards a text with the tokens the agent sent back replaced by their values,
and the server hands such texts back: ``pg_stat_activity.query`` (another session's
running or last text), ``pg_prepared_statements.statement`` (a driver prepares a
text it runs five times), ``pg_cursors.statement``, ``current_query()`` … What they
return is tokenized, but a statement that computes on them answers its own question
of the value: ``SELECT 1 FROM pg_prepared_statements WHERE ascii(substr(statement,
strpos(statement, '$dbgate$') + 8, 1)) & 1 <> 0`` returns its row by a bit of it, and
reads no table row. A statement that reads statement texts may return them only as
they are, a bare column (or call) of its own select list; anywhere else — a WHERE, a
join's ON, ORDER BY, GROUP BY, DISTINCT, a window, a function's argument, an
aggregate, a sub-select, a CTE, a set operation — it is held.
"""

from __future__ import annotations

from typing import Any

from dbgate.pii.catalog import QUERY_TEXT_COLUMNS
from dbgate.pii.lineage.nodes import Node
from dbgate.pii.lineage.results import ColumnSource

#: the names of the columns that hold statement texts, whatever relation they are of
TEXT_COLUMNS = frozenset(p.rsplit(".", 1)[-1] for p in QUERY_TEXT_COLUMNS)

#: clauses, by their parse-tree key, as an approver reads them
_CLAUSES = {
    "whereClause": "WHERE",
    "havingClause": "HAVING",
    "quals": "a join's ON",
    "sortClause": "ORDER BY",
    "groupClause": "GROUP BY",
    "distinctClause": "DISTINCT",
    "windowClause": "a window",
    "limitCount": "LIMIT",
    "limitOffset": "OFFSET",
    "targetList": "an expression of the select list",
    "withClause": "a CTE",
    "larg": "a set operation",
    "rarg": "a set operation",
    "fromClause": "a FROM item",
}


def asks_statement_text(stmt: Node, source: ColumnSource, readers: frozenset[str]) -> str:
    """Where ``stmt`` (which reads statement texts) uses one other than as a bare
    output column of its own select list, in words; "" when it does not."""
    names = _Names(source, readers)
    names.collect(stmt, 0)
    body = stmt.get("SelectStmt") if isinstance(stmt, dict) else None
    if not isinstance(body, dict) or body.get("op", "SETOP_NONE") != "SETOP_NONE":
        return names.find(stmt, "", 0)
    bare: list[bool] = []  # per output: a statement text returned as it is
    for item in body.get("targetList") or ():
        target = item.get("ResTarget", {}) if isinstance(item, dict) else {}
        val = target.get("val")
        kind = names.bare(val)
        if kind is None:
            found = names.find(val, "targetList", 0)
            if found:
                return found
            bare.append(False)
            continue
        if kind == "call":
            found = names.find(val["FuncCall"].get("args"), "targetList", 0)
            if found:
                return found
        bare.append(kind != "clean")
        if kind == "star":
            bare.extend([True] * 1000)  # the positions after a * are not known
        if kind != "clean" and target.get("name"):
            names.columns.add(str(target["name"]).lower())
        elif kind == "call":  # an output named after the function: ORDER BY current_query
            names.columns.add(_func_name(val["FuncCall"]))
    if any(bare) and body.get("distinctClause"):
        return "DISTINCT (it compares the texts it returns)"
    for key in ("sortClause", "groupClause", "distinctClause"):
        for item in body.get(key) or ():
            for number in _positions(item):
                if 0 < number <= len(bare) and bare[number - 1]:
                    return f"{_CLAUSES[key]} {number}"
    for key, value in body.items():
        if key == "targetList":
            continue
        found = names.find(value, key, 0)
        if found:
            return found
    return ""


def _positions(item: Any) -> list[int]:
    """The output numbers an ORDER BY, GROUP BY or DISTINCT ON item names (``2``,
    ``ROLLUP (1, 2)``, ``GROUPING SETS ((1, 2))``)."""
    if not isinstance(item, dict):
        return []
    node = item.get("SortBy", {}).get("node") if "SortBy" in item else item
    if not isinstance(node, dict):
        return []
    nested = node.get("GroupingSet", {}).get("content") or node.get("RowExpr", {}).get("args")
    if nested:
        return [n for sub in nested for n in _positions(sub)]
    if "A_Const" in node:
        ival = node["A_Const"].get("ival")
        if isinstance(ival, dict) and isinstance(ival.get("ival", 0), int):
            return [ival.get("ival", 0)]
    return []


class _Names:
    """The names under which a statement sees statement texts."""

    def __init__(self, source: ColumnSource, readers: frozenset[str]) -> None:
        self.source = source
        self.readers = readers
        #: column names that hold a statement text (``query``, an alias, a view's column)
        self.columns: set[str] = set(TEXT_COLUMNS)
        #: relation names and aliases whose whole row holds one (``row_to_json(p)``)
        self.rows: set[str] = set()

    def collect(self, node: Any, depth: int) -> None:
        if depth > 300:
            return
        if isinstance(node, dict):
            rel = node.get("RangeVar")
            if isinstance(rel, dict):
                self.relation(rel)
            func = node.get("RangeFunction")
            if isinstance(func, dict):
                self.function(func)
            for value in node.values():
                self.collect(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                self.collect(value, depth + 1)

    def _alias(self, alias: Any, names: set[str]) -> None:
        if isinstance(alias, dict):
            if alias.get("aliasname"):
                self.rows.add(str(alias["aliasname"]).lower())
                names.add(str(alias["aliasname"]).lower())
            for col in alias.get("colnames") or ():
                self.columns.add(str(col.get("String", {}).get("sval", "")).lower())

    def relation(self, rel: Node) -> None:
        name = str(rel.get("relname", "")).lower()
        columns: set[str] = set()
        if name in self.readers:
            self.rows.add(name)
        else:
            for found in self.source.snapshot.lookup(rel.get("relname", ""), rel.get("schemaname")):
                if found.definition is None:
                    continue
                from dbgate.pii.lineage.walker import _reads_statement_text

                probe = [{"RangeVar": {"relname": found.name, "schemaname": found.schema}}]
                if not _reads_statement_text(probe, self.source):
                    continue
                self.rows.add(name)
                lins = self.source.relation_lins(found)
                for col, lin in zip(found.columns, lins, strict=False):
                    if not lin.clean:
                        columns.add(col.name.lower())
            if name not in self.rows:
                return
        self.columns |= columns
        self._alias(rel.get("alias"), set())

    def function(self, func: Node) -> None:
        called: set[str] = set()
        for item in func.get("functions") or ():
            for part in (item.get("List", {}).get("items") or ()) if isinstance(item, dict) else ():
                call = part.get("FuncCall") if isinstance(part, dict) else None
                if isinstance(call, dict):
                    name = _func_name(call)
                    if name in self.readers:
                        called.add(name)
        if not called:
            return
        # a scalar function's column is named after the alias, or the function
        self.columns |= called
        self.rows |= called
        alias = func.get("alias")
        if isinstance(alias, dict) and alias.get("aliasname"):
            self.columns.add(str(alias["aliasname"]).lower())
        self._alias(alias, set())
        for col in func.get("coldeflist") or ():
            self.columns.add(str(col.get("ColumnDef", {}).get("colname", "")).lower())

    def bare(self, val: Any) -> str | None:
        """For a select-list item: "text" (a column holding a statement text, as it
        is), "star", "call" (a reader called whole), "clean" (a column not holding
        one), None (an expression)."""
        if not isinstance(val, dict):
            return None
        ref = val.get("ColumnRef")
        if isinstance(ref, dict):
            fields = ref.get("fields") or []
            if fields and "A_Star" in fields[-1]:
                return "star"
            names = [str(f.get("String", {}).get("sval", "")).lower() for f in fields]
            if names and (names[-1] in self.columns or (len(names) == 1 and names[0] in self.rows)):
                return "text"
            return "clean"
        call = val.get("FuncCall")
        if isinstance(call, dict) and _func_name(call) in self.readers:
            if call.get("agg_star") or call.get("agg_order") or call.get("over"):
                return None
            return "call"
        return None

    def find(self, node: Any, clause: str, depth: int) -> str:
        """The first use of a statement text in ``node``, in words; "" when none."""
        if depth > 300:
            return "a statement nested too deep to read"
        if isinstance(node, dict):
            ref = node.get("ColumnRef")
            if isinstance(ref, dict):
                return self._ref(ref, clause)
            call = node.get("FuncCall")
            if isinstance(call, dict) and _func_name(call) in self.readers:
                return f"{_func_name(call)}() in {_CLAUSES.get(clause, 'an expression')}"
            join = node.get("JoinExpr")
            if isinstance(join, dict):
                # a NATURAL join or USING compares the columns of the same name
                using = {
                    str(u.get("String", {}).get("sval", "")).lower()
                    for u in join.get("usingClause") or ()
                    if isinstance(u, dict)
                }
                if join.get("isNatural") or using & self.columns:
                    return "a NATURAL join or USING (it compares columns by their names)"
            func = node.get("RangeFunction")
            if isinstance(func, dict):
                # a reader called as a FROM item: its columns are named, its args asked
                node = dict(
                    func,
                    functions=[
                        _unless_reader(f, self.readers) for f in func.get("functions") or ()
                    ],
                )
            for key, value in node.items():
                if key == "RangeVar":
                    continue
                found = self.find(value, key if key in _CLAUSES else clause, depth + 1)
                if found:
                    return found
        elif isinstance(node, list):
            for value in node:
                found = self.find(value, clause, depth + 1)
                if found:
                    return found
        return ""

    def _ref(self, ref: Node, clause: str) -> str:
        fields = ref.get("fields") or []
        names = [str(f.get("String", {}).get("sval", "")).lower() for f in fields]
        where = _CLAUSES.get(clause, "an expression")
        if fields and "A_Star" in fields[-1]:
            if len(names) == 1 or names[-2] in self.rows:
                return f"{'.'.join(n or '*' for n in names)} in {where}"
            return ""
        if names and names[-1] in self.columns:
            return f"{names[-1]} in {where}"
        if len(names) == 1 and names[0] in self.rows:
            return f"the whole row of {names[0]} in {where}"
        return ""


def _unless_reader(item: Any, readers: frozenset[str]) -> Any:
    """A FROM item's function list item, with a reader's call replaced by its args."""
    if not isinstance(item, dict):
        return item
    parts = item.get("List", {}).get("items") or []
    out = []
    for part in parts:
        call = part.get("FuncCall") if isinstance(part, dict) else None
        if isinstance(call, dict) and _func_name(call) in readers:
            out.append(call.get("args"))
        else:
            out.append(part)
    return out


def _func_name(call: Node) -> str:
    parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", ())]
    return str(parts[-1]).lower() if parts else ""
