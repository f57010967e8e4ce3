"""Mask PII in SQL text and parameter values before a human or a log sees them.

Approvers must see *what* a held statement does without seeing the personal data it
carries: ``UPDATE customers SET email = 'ann@example.com' WHERE id = 7`` is shown as
``UPDATE customers SET email = '<email>' WHERE id = 7``. Two things get masked:

* **by place**: a literal or ``$n`` parameter that is compared with, assigned to,
  inserted into or passed together with a column whose name says it holds PII
  (``email``, ``phone``, ``ssn``, ``card_number``, ``full_name``, ``address``,
  ``birth_date`` …, plus any column the caller names in ``pii_columns``, e.g. from the
  PII catalog). Where a place's columns are unknown — ``INSERT`` without a column list —
  every value is masked (fail closed);
* **by look**: any string literal, comment, quoted identifier or parameter value that
  contains something shaped like an e-mail address, a phone number, a payment card
  number (Luhn-checked), a US SSN, a UK National Insurance number or an IBAN
  (mod-97-checked), wherever it appears; an escaped literal (``E'…'``, ``U&'…'``) is
  read as its value.

Literals are found with PostgreSQL's own scanner and parser (pglast), not with
regular expressions over the text, so quoting tricks (``E'\\''``, ``$$…$$``,
``U&'…'``) cannot hide a value. The replacement itself is presidio-anonymizer's
``replace`` operator applied to the spans found. Text the scanner cannot read (an
unterminated literal) is masked from the point where scanning failed to the end.

All functions are pure: no I/O, same input → same output.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import parser as pg
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

from dbgate.pii.detectors import luhn_ok

__all__ = [
    "is_pii_column",
    "looks_like_pii",
    "mask_every_literal",
    "mask_sql",
    "mask_text",
    "mask_value",
]

#: Parts of a column name (split at ``_``) that mark it as personal data. A name
#: matches when one of its parts, or two adjacent parts joined, is listed:
#: ``customer_email`` (``email``), ``birth_date`` (``birth``), ``cc_number`` (``cc``).
_PII_NAME_PARTS = frozenset(
    {
        "email",
        "mail",
        "phone",
        "mobile",
        "telephone",
        "tel",
        "fax",
        "ssn",
        "sin",
        "nin",
        "nino",
        "passport",
        "nationalid",
        "taxid",
        "tin",
        "card",
        "cardnumber",
        "pan",
        "cc",
        "ccnumber",
        "creditcard",
        "cvv",
        "cvc",
        "iban",
        "name",
        "firstname",
        "lastname",
        "fullname",
        "surname",
        "givenname",
        "middlename",
        "maidenname",
        "address",
        "street",
        "postcode",
        "postalcode",
        "zip",
        "zipcode",
        "birth",
        "birthdate",
        "birthday",
        "dob",
        "password",
        "secret",
    }
)

#: Scanner tokens that are literal values.
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
#: Tokens whose text is searched for PII-shaped values.
_SEARCHED_TOKENS = frozenset({"SCONST", "USCONST", "IDENT", "UIDENT", "C_COMMENT", "SQL_COMMENT"})
_NUMERIC_TOKENS = frozenset({"ICONST", "FCONST"})

#: Nodes whose constants are masked when any column under them is a PII column:
#: ``email = 'x'``, ``lower(email) LIKE 'x%'``, ``coalesce(phone, 'x')``, ``email IN (…)``,
#: ``CASE email WHEN 'x' …``.
_CONTEXT_NODES = frozenset(
    {"A_Expr", "FuncCall", "CoalesceExpr", "MinMaxExpr", "NullIfExpr", "SubLink", "CaseExpr"}
)

# The local part is bounded (RFC 5321: 64 characters): unbounded, every position of a
# long run of such characters (a comment of 64 KB of letters) was scanned to its end,
# quadratic time on the event loop; bounded, it is linear, and an email with a longer
# local part still has its last 64 characters and its domain masked.
_EMAIL = re.compile(r"[\w.%+\-]{1,64}@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")
_SSN = re.compile(r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])")
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"""
    (?<![\w+.-])
    (?:
        \+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}  # +CC …
      | (?:00\d{1,3}[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}      # (555) 123-4567
    )
    (?:\s?(?:x|ext\.?)\s?\d{1,6})?
    (?![\w.-])
    """,
    re.VERBOSE,
)
#: A whole value of bare digits this long is taken for a phone number (``5552368101``).
_BARE_PHONE = re.compile(r"\+?\d{10,15}")
_INDEX = re.compile(r"at index (\d+)")


def is_pii_column(name: str, extra: Iterable[str] = ()) -> bool:
    """True when a column of this name probably holds personal data."""
    low = name.lower().strip('"')
    if low in {e.lower() for e in extra}:
        return True
    parts = [p for p in re.split(r"[^a-z0-9]+", low) if p]
    if any(p in _PII_NAME_PARTS for p in parts):
        return True
    return any(a + b in _PII_NAME_PARTS for a, b in itertools.pairwise(parts))


@dataclass(frozen=True, slots=True)
class _Span:
    start: int  # character offset, inclusive
    end: int  # exclusive
    label: str
    quoted: bool  # replace with a quoted placeholder (a whole literal)


def _iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _shaped(text: str, numeric: bool = False) -> Iterator[tuple[int, int, str]]:
    """Spans of ``text`` that look like PII, as (start, end, label)."""
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            yield m.start(), m.end(), "card"
    if numeric:
        return
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end(), "email"
    for m in _SSN.finditer(text):
        yield m.start(), m.end(), "ssn"
    for m in _NINO.finditer(text):
        yield m.start(), m.end(), "national_id"
    for m in _IBAN.finditer(text):
        if _iban_ok(m.group()):
            yield m.start(), m.end(), "iban"
    for m in _PHONE.finditer(text):
        if 9 <= sum(c.isdigit() for c in m.group()) <= 20:
            yield m.start(), m.end(), "phone"


@lru_cache(maxsize=1)
def _engine() -> AnonymizerEngine:
    return AnonymizerEngine()


def _apply(text: str, spans: Iterable[_Span]) -> str:
    """Replace the spans with placeholders, using presidio's ``replace`` operator."""
    chosen: list[_Span] = []
    for s in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if chosen and s.start < chosen[-1].end:  # overlaps an earlier, wider span
            if s.end > chosen[-1].end:
                last = chosen[-1]
                chosen[-1] = _Span(last.start, s.end, last.label, last.quoted)
            continue
        chosen.append(s)
    if not chosen:
        return text
    results = []
    operators: dict[str, OperatorConfig] = {}
    for s in chosen:
        new_value = f"'<{s.label}>'" if s.quoted else f"<{s.label}>"
        entity = f"DBGATE_{'Q' if s.quoted else 'P'}_{s.label.upper()}"
        operators[entity] = OperatorConfig("replace", {"new_value": new_value})
        results.append(RecognizerResult(entity, s.start, s.end, 1.0))
    return _engine().anonymize(text=text, analyzer_results=results, operators=operators).text


def looks_like_pii(text: str) -> bool:
    """Whether :func:`mask_text` would mask something in ``text``."""
    return next(_shaped(text), None) is not None


def mask_text(text: str) -> str:
    """Mask PII-shaped values in free text (purposes, messages, application names)."""
    if not text:
        return text
    return _apply(text, (_Span(a, b, label, False) for a, b, label in _shaped(text)))


def mask_value(value: str | None, label: str | None = None) -> str | None:
    """Mask one parameter value: all of it when ``label`` (its PII column) is given,
    else the parts of it that look like PII."""
    if value is None:
        return None
    if label is not None:
        return f"<{label}>"
    if _BARE_PHONE.fullmatch(value.strip()):
        return "<phone>"
    return mask_text(value)


# -- where the PII columns are -------------------------------------------------------


def _node_items(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        yield from node.values()
    elif isinstance(node, list):
        yield from node


#: Row sources in FROM whose arguments become rows: functions (``unnest``,
#: ``jsonb_to_recordset``, ``json_populate_record``), ``XMLTABLE``, ``JSON_TABLE``.
_ROW_FUNCTIONS = frozenset({"RangeFunction", "RangeTableFunc", "JsonTable"})
#: Nodes that name columns, and the field that lists the names: an alias's column
#: names (``x(full_name)``), a CTE's, a join's ``USING``.
_NAMING = {
    "alias": "colnames",
    "Alias": "colnames",
    "CommonTableExpr": "aliascolnames",
    "JoinExpr": "usingClause",
}
#: Operators whose right operand names a field of a JSON value: ``doc->>'email'``.
_JSON_KEY_OPS = frozenset({"->", "->>", "#>", "#>>"})
#: What :func:`_columns_under` yields for a whole row (``c``, ``c.*``, ``ROW(c.*)``):
#: it holds every column of its table, PII ones included.
WHOLE_ROW = "*"


def _columns_under(node: Any, rows: frozenset[str] = frozenset()) -> Iterator[str]:
    """Column names referenced anywhere under a JSON parse-tree node: column
    references, fields picked from a composite (``(c).email``) or named as a JSON key
    (``to_jsonb(c)->>'email'``), and :data:`WHOLE_ROW` for a reference to a whole row
    (``*``, or a name in ``rows``: the statement's tables and aliases)."""
    if isinstance(node, dict):
        ref = node.get("ColumnRef")
        if isinstance(ref, dict):
            fields = ref.get("fields", ())
            names = [f["String"]["sval"] for f in fields if "String" in f]
            if any("A_Star" in f for f in fields) or (len(names) == 1 and names[0] in rows):
                yield WHOLE_ROW
            if names:
                yield names[-1]
        ind = node.get("A_Indirection")
        if isinstance(ind, dict):
            for f in ind.get("indirection") or ():
                if isinstance(f, dict) and "String" in f:
                    yield f["String"]["sval"]
                elif isinstance(f, dict) and "A_Star" in f:
                    yield WHOLE_ROW
        expr = node.get("A_Expr")
        if isinstance(expr, dict):
            ops = [n["String"]["sval"] for n in expr.get("name") or () if "String" in n]
            key = ((expr.get("rexpr") or {}).get("A_Const") or {}).get("sval")
            if ops and ops[-1] in _JSON_KEY_OPS and isinstance(key, dict) and "sval" in key:
                yield key["sval"]
    for child in _node_items(node):
        yield from _columns_under(child, rows)


def _range_names(node: Any) -> Iterator[str]:
    """Names a whole row can be referred to by: tables, their aliases, CTEs."""
    if isinstance(node, dict):
        if isinstance(node.get("relname"), str):  # a RangeVar in a field of its own type
            yield node["relname"]
            alias = node.get("alias")
            if isinstance(alias, dict) and alias.get("aliasname"):
                yield alias["aliasname"]
        for kind, body in node.items():
            if not isinstance(body, dict):
                continue
            if kind == "RangeVar" and body.get("relname"):
                yield body["relname"]
            if kind in ("RangeVar", "RangeSubselect", "RangeFunction"):
                alias = body.get("alias")
                if isinstance(alias, dict) and alias.get("aliasname"):
                    yield alias["aliasname"]
            if kind == "CommonTableExpr" and body.get("ctename"):
                yield body["ctename"]
    for child in _node_items(node):
        yield from _range_names(child)


def _output_names(node: Any) -> Iterator[tuple[list[str], Any]]:
    """(names, value) for what a query hands on under another name: a select list
    entry ``full_name AS n``, and the column aliases of a subquery in FROM or a CTE
    (``v(n)``, ``x(n) AS (…)``) with the whole query they name."""
    if isinstance(node, dict):
        # a SELECT in a field of its own type (a UNION's sides) is not wrapped
        wrapped = {"SelectStmt": node} if "op" in node and node.get("targetList") else node
        for kind, body in wrapped.items():
            if not isinstance(body, dict):
                continue
            if kind == "SelectStmt":
                for t in body.get("targetList") or ():
                    res = t.get("ResTarget") if isinstance(t, dict) else None
                    if isinstance(res, dict) and res.get("name") and res.get("val"):
                        yield [res["name"]], res["val"]
            elif kind == "RangeSubselect":
                cols = (body.get("alias") or {}).get("colnames") or ()
                names = [c["String"]["sval"] for c in cols if "String" in c]
                if names:
                    yield names, body.get("subquery")
            elif kind == "CommonTableExpr":
                cols = body.get("aliascolnames") or ()
                names = [c["String"]["sval"] for c in cols if "String" in c]
                if names:
                    yield names, body.get("ctequery")
    for child in _node_items(node):
        yield from _output_names(child)


def _values_under(node: Any) -> Iterator[tuple[str, int]]:
    """("const", byte location) and ("param", number) under a JSON parse-tree node."""
    if isinstance(node, dict):
        const = node.get("A_Const")
        if isinstance(const, dict) and not const.get("isnull") and "location" in const:
            yield "const", const["location"]
        param = node.get("ParamRef")
        if isinstance(param, dict) and "number" in param:
            yield "param", param["number"]
    for child in _node_items(node):
        yield from _values_under(child)


class _Places:
    """Collects the constants and parameters that sit in a PII column's place."""

    def __init__(self, extra: Sequence[str]) -> None:
        self.extra: tuple[str, ...] = tuple(extra)
        self.rows: frozenset[str] = frozenset()  # names of whole rows (tables, aliases)
        self.aliases: set[str] = set()  # other names PII values go by (see learn)
        self.consts: dict[int, str] = {}  # byte location -> label
        self.params: dict[int, str] = {}  # parameter number -> label
        # VALUES lists that are not an INSERT's rows (FROM (VALUES …) v(n), a CTE, a
        # MERGE's USING) and the select lists of subqueries in FROM and of CTEs: their
        # values reach columns through aliases no place follows.
        self.loose_rows: list[Any] = []
        self.insert_rows: set[int] = set()
        self.touches_pii = False  # a PII column is named anywhere in the statement

    def pii(self, name: str | None) -> str | None:
        if name == WHOLE_ROW:
            return "value"
        if name and (name.lower() in self.aliases or is_pii_column(name, self.extra)):
            return name.lower()
        return None

    def learn(self, tree: Any) -> None:
        """Before :meth:`walk`: the names a PII value goes by in this statement besides
        its column's (``SELECT full_name AS n``, ``(SELECT full_name …) v(n)``,
        ``WITH x(n) AS (SELECT full_name …)``, followed through as many levels as there
        are), and the names of whole rows. Each output is looked at once (a worklist),
        however long a chain of aliases a statement builds."""
        self.rows = frozenset(_range_names(tree))
        outputs = [(names, set(_columns_under(v, self.rows))) for names, v in _output_names(tree)]
        users: dict[str, list[int]] = {}
        work: list[int] = []
        for i, (_names, columns) in enumerate(outputs):
            if any(map(self.pii, columns)):
                work.append(i)
            else:
                for c in columns:
                    users.setdefault(c.lower(), []).append(i)
        seen: set[int] = set()
        while work:
            i = work.pop()
            if i in seen:
                continue
            seen.add(i)
            for name in outputs[i][0]:
                if self.pii(name):
                    continue  # a PII name already: whoever uses it was queued above
                self.aliases.add(name.lower())
                work.extend(users.get(name.lower(), ()))

    def mark(self, node: Any, label: str) -> None:
        for kind, where in _values_under(node):
            target = self.consts if kind == "const" else self.params
            target.setdefault(where, label)

    def walk(self, node: Any) -> None:
        if isinstance(node, dict):
            for kind, body in node.items():
                if not isinstance(body, dict):
                    continue
                if kind in _CONTEXT_NODES:
                    label = next(filter(None, map(self.pii, _columns_under(body, self.rows))), None)
                    if label:
                        self.mark(body, label)
                elif kind == "ResTarget":
                    self._target(body)
                elif kind == "InsertStmt":
                    source = (body.get("selectStmt") or {}).get("SelectStmt")
                    if isinstance(source, dict):
                        self.insert_rows.add(id(source))
                    if not body.get("cols"):
                        # the target's columns are unknown: they may all be PII, and
                        # values reach them from row sources no place follows
                        # (INSERT INTO customers SELECT * FROM unnest($1, $2))
                        self.touches_pii = True
                    self._positional(body.get("cols"), body.get("selectStmt"))
                elif kind == "SelectStmt" and body.get("valuesLists"):
                    if id(body) not in self.insert_rows:
                        self.loose_rows.append(body["valuesLists"])
                elif kind == "SelectStmt" and body.get("op") not in (None, "SETOP_NONE"):
                    # UNION / INTERSECT / EXCEPT line each arm's values up with the
                    # other arms' columns by position (SELECT full_name … INTERSECT
                    # SELECT 'Ann Lee' compares them)
                    if id(body) not in self.insert_rows:
                        self.loose_rows.append(list(_select_rows(body)))
                elif kind in ("RangeSubselect", "CommonTableExpr"):
                    query = body.get("subquery") or body.get("ctequery") or {}
                    select = query.get("SelectStmt") if isinstance(query, dict) else None
                    if isinstance(select, dict):
                        self.loose_rows.append(list(_select_rows(select)))
                elif kind in _ROW_FUNCTIONS:
                    # a function in FROM hands its arguments on as rows under names no
                    # place follows: unnest(ARRAY['Ann Lee']) x, jsonb_to_recordset($1)
                    self.loose_rows.append(body)
                elif kind == "ColumnRef" and not self.touches_pii:
                    self.touches_pii = any(map(self.pii, _columns_under(node, self.rows)))
                elif kind in _NAMING and not self.touches_pii:
                    # a row source's columns named after PII columns, a join by them:
                    # (VALUES ('Ann Lee')) x(full_name), JOIN x USING (full_name)
                    self.touches_pii = any(
                        self.pii(n["String"]["sval"])
                        for n in body.get(_NAMING[kind]) or ()
                        if isinstance(n, dict) and "String" in n
                    )
                elif kind == "AlterTableCmd" and (label := self.pii(body.get("name"))):
                    self.mark(body.get("def"), label)  # ALTER COLUMN email SET DEFAULT 'x'
                elif kind == "ColumnDef" and (label := self.pii(body.get("colname"))):
                    self.touches_pii = True  # also jsonb_to_record(…) AS x(full_name text)
                    self.mark(body.get("constraints"), label)  # email text DEFAULT 'x'
                    self.mark(body.get("raw_default"), label)
                elif kind == "NamedArgExpr" and (label := self.pii(body.get("name"))):
                    # a function's parameter named after a PII column takes one:
                    # add_customer(full_name => 'Ann Lee')
                    self.mark(body.get("arg"), label)
                elif kind in ("partbound", "bound") and body.get("strategy") and self.extra:
                    # a partition's bounds are values of its parent's partition key,
                    # which the text does not name: masked when a table it touches
                    # has PII columns (PARTITION OF customers FOR VALUES IN ('…'))
                    self.mark(body, "value")
                elif kind == "ExecuteStmt":  # the prepared statement's places are unknown
                    self.mark(body.get("params"), "value")
                elif kind == "MergeWhenClause" and body.get("commandType") == "CMD_INSERT":
                    self._positional(
                        body.get("targetList"), {"List": {"items": body.get("values")}}
                    )
        for child in _node_items(node):
            self.walk(child)

    def finish(self) -> None:
        """A statement that names a PII column has its loose VALUES masked: which
        column each value ends up in is not followed through aliases."""
        if self.touches_pii:
            for rows in self.loose_rows:
                self.mark(rows, "value")

    def _target(self, body: dict[str, Any]) -> None:
        label = self.pii(body.get("name"))
        if label:
            self.touches_pii = True
        val = body.get("val")
        if not label or val is None:
            return
        multi = val.get("MultiAssignRef") if isinstance(val, dict) else None
        if isinstance(multi, dict):  # SET (a, b) = ('x', 'y')
            row = (multi.get("source") or {}).get("RowExpr")
            colno = multi.get("colno", 0)
            if isinstance(row, dict) and 0 < colno <= len(row.get("args", [])):
                self.mark(row["args"][colno - 1], label)
                return
        self.mark(val, label)

    def _positional(self, cols: Any, source: Any) -> None:
        """INSERT (cols) VALUES (…) / SELECT …: each value takes its column's place."""
        names = [c.get("ResTarget", {}).get("name") for c in cols or ()]
        rows: list[list[Any]] = []
        select = source.get("SelectStmt") if isinstance(source, dict) else None
        if isinstance(select, dict):
            rows.extend(_select_rows(select))
        elif isinstance(source, dict) and "List" in source:
            rows.append(list(source["List"].get("items") or ()))
        for row in rows:
            for i, value in enumerate(row):
                if not names:  # no column list: the values' columns are unknown
                    self.mark(value, "value")
                elif i < len(names) and (label := self.pii(names[i])):
                    self.mark(value, label)


def _select_rows(select: dict[str, Any]) -> Iterator[list[Any]]:
    """The rows a SELECT hands to an INSERT, position by position: its VALUES, its
    select list, both sides of a UNION / INTERSECT / EXCEPT."""
    for side in ("larg", "rarg"):
        part = select.get(side)
        if isinstance(part, dict):
            yield from _select_rows(part)
    for row in select.get("valuesLists") or ():
        yield list((row.get("List") or {}).get("items") or ())
    if select.get("targetList"):
        yield [t.get("ResTarget", {}).get("val") for t in select["targetList"]]


def _char_offsets(sql: str) -> Any:
    if sql.isascii():
        return lambda b: b
    return pg.Displacements(sql)


# PostgreSQL's scanner reads a "/*" and every operator character after it as one token
# and gives back all but two: a run of them with "/*" throughout costs the square of
# its length (64 KB of "/*": seconds, on the event loop; the server pays it too, in
# its own backend). A run this long is not scanned: what follows is masked as text
# the scanner cannot read. Whole runs only (the look-behind keeps the search linear).
_OPERATOR_RUN = re.compile(r"(?<![~!@#^&|`?%+\-*/<>=])[~!@#^&|`?%+\-*/<>=]{512,}")


def slow_to_scan(sql: str) -> int | None:
    """Where a run of operator characters holding ``/*`` that would take the scanner
    quadratic time starts, or None."""
    for run in _OPERATOR_RUN.finditer(sql):
        if "/*" in run.group():
            return run.start()
    return None


def _scan(sql: str) -> tuple[list[Any], int | None]:
    """The scanner's tokens, and where scanning failed (None: it did not)."""
    cut = slow_to_scan(sql)
    if cut is not None:
        tokens, failed = _scan(sql[:cut])
        return tokens, cut if failed is None else failed
    try:
        return list(pg.scan(sql)), None
    except pg.ParseError as e:
        m = _INDEX.search(str(e))
        failed = int(m.group(1)) if m else 0
        if failed > 0:
            try:
                return list(pg.scan(sql[:failed])), failed
            except pg.ParseError:
                pass
        return [], 0


_C_ESCAPE = re.compile(
    r"\\(?:x([0-9A-Fa-f]{1,2})|([0-7]{1,3})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL
)
_UESCAPE = re.compile(r"\s*(?i:uescape)\s*'([^'])'")
_C_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescaped(text: str, escape: str = "\\") -> str | None:
    """The value of an escaped literal — ``E'ann\\x40example.com'``, ``U&'ann\\0040…'``
    — for masking by look, which its escapes would otherwise hide; None for a literal
    whose text is its value."""

    def char(code: str, base: int) -> str:
        try:
            return chr(int(code, base))
        except (ValueError, OverflowError):
            return "?"

    if text[:2] in ("E'", "e'"):
        body = text[2:-1].replace("''", "'")
        return _C_ESCAPE.sub(
            lambda m: (
                char(m.group(1), 16)
                if m.group(1)
                else char(m.group(2), 8)
                if m.group(2)
                else char(m.group(3) or m.group(4), 16)
                if m.group(3) or m.group(4)
                else _C_SIMPLE.get(m.group(5), m.group(5))
            ),
            body,
        )
    if text[:3] in ("U&'", "u&'"):
        body = text[3:-1].replace("''", "'")
        e = re.escape(escape)
        pattern = re.compile(e + r"(?:\+([0-9A-Fa-f]{6})|([0-9A-Fa-f]{4})|(" + e + "))")
        return pattern.sub(
            lambda m: escape if m.group(3) else char(m.group(1) or m.group(2), 16), body
        )
    return None


_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")
#: A key of a JSON object (``"full_name": …``) or an hstore (``full_name => …``).
_DOC_KEY = re.compile(r'"((?:[^"\\]|\\.){1,128})"\s{0,64}(?::|=>)|([^\W\d]\w{0,127})\s{0,64}=>')


def _names_pii(value: str, extra: Sequence[str]) -> bool:
    """Whether ``value`` is a document whose keys name a PII column: a JSON object
    or an hstore that ``json_populate_record(null::customers, …)``, ``jsonb_to_record``
    or ``@>`` reads by those names, a place no parse tree shows."""
    if ":" not in value and "=>" not in value:
        return False
    seen: set[str] = set()  # a document of many rows repeats its keys
    for m in _DOC_KEY.finditer(value):
        key = m.group(2) or m.group(1)
        if key in seen:
            continue
        seen.add(key)
        if m.group(2) is None and "\\" in key:
            with contextlib.suppress(ValueError):
                key = json.loads('"' + key + '"')
        if isinstance(key, str) and is_pii_column(key, extra):
            return True
    return False


def _literal_value(text: str, decoded: str | None) -> str:
    """A string constant's value as written: quotes, doubled quotes and dollar tags
    taken off (``decoded``: an escaped literal's value, already worked out)."""
    if decoded is not None:
        return decoded
    if text[:1] == "'" and text[-1:] == "'" and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    tag = _DOLLAR_TAG.match(text)
    if tag is not None and len(text) >= 2 * len(tag.group()):
        return text[len(tag.group()) : -len(tag.group())]
    return text


#: Scanner token kinds that may name a column (a column may be called ``name``, a
#: keyword).
_NAME_KINDS = frozenset({"NO_KEYWORD", "UNRESERVED_KEYWORD", "COL_NAME_KEYWORD"})


def _code_spans(text: str, offset: int, extra: Sequence[str]) -> list[_Span]:
    """A string that holds code — a ``DO`` block, a function's body, the query of
    ``query_to_xml`` — which names a PII column: its literals are masked too
    (``DO $$ … SET full_name = '<value>' … $$``). A dollar-quoted body keeps the rest
    of its text; a single-quoted one (its quotes doubled) is masked whole."""
    tag = _DOLLAR_TAG.match(text)
    if tag is not None:
        size = len(tag.group())
        if len(text) < 2 * size or not text.endswith(tag.group()):
            return []
        body, at = text[size:-size], offset + size
    elif text[:1] == "'":
        body, at = text[1:-1].replace("''", "'"), -1
    else:  # E'', U&'': escapes would move the offsets
        body, at = text[2:-1], -1
    if not body.strip():
        return []
    tokens, failed = _scan(body)
    names_pii = any(
        (t.name in ("IDENT", "UIDENT") or t.kind in _NAME_KINDS)
        and is_pii_column(body[t.start : t.end + 1], extra)
        for t in tokens
    )
    if not names_pii:
        return []
    literals = [t for t in tokens if t.name in _LITERAL_TOKENS]
    if not literals and failed is None:
        return []
    if at < 0:
        return [_Span(offset, offset + len(text), "value", True)]
    spans = [_Span(at + t.start, at + t.end + 1, "value", True) for t in literals]
    if failed is not None:
        spans.append(_Span(at + failed, at + len(body), "value", False))
    return spans


def mask_sql(
    sql: str, params: Sequence[str | None] = (), *, pii_columns: Sequence[str] = ()
) -> tuple[str, tuple[str | None, ...]]:
    """Return ``(masked_sql, masked_params)``; see the module docstring for what is masked.

    ``params`` are the Bind values as text (None for NULL); ``pii_columns`` adds
    column names to those recognised by name (e.g. the PII catalog's).
    """
    if slow_to_scan(sql) is not None:  # not parsed: every literal and value is masked
        return mask_every_literal(sql), tuple(None if v is None else "<masked>" for v in params)
    places = _Places(pii_columns)
    # Unparseable SQL has no places; masking by look still applies below.
    with contextlib.suppress(pg.ParseError, ValueError, RecursionError):
        tree = json.loads(pg.parse_sql_json(sql))
        places.learn(tree)
        places.walk(tree)
    places.finish()
    to_char = _char_offsets(sql)
    const_at = {to_char(loc): label for loc, label in places.consts.items()}
    tokens, failed = _scan(sql)

    spans: list[_Span] = []
    pending = sorted(const_at.items())
    k = 0
    for tok in tokens:
        start, end = tok.start, tok.end + 1
        whole: str | None = None
        # A constant's location may point at a sign or a type name (DATE '…'):
        # it covers the first literal token at or after it.
        while k < len(pending) and pending[k][0] <= start and tok.name in _LITERAL_TOKENS:
            whole = whole or pending[k][1]
            k += 1
        while k < len(pending) and pending[k][0] < start:
            k += 1
        if whole is not None:
            spans.append(_Span(start, end, whole, True))
            continue
        if tok.name in _SEARCHED_TOKENS or tok.name in _NUMERIC_TOKENS:
            text = sql[start:end]
            numeric = tok.name in _NUMERIC_TOKENS
            for a, b, label in _shaped(text, numeric=numeric):
                spans.append(_Span(start + a, start + b, label, numeric))
            quoted = tok.name == "SCONST" and len(text) >= 2 and text[0] == "'" == text[-1]
            if quoted and _BARE_PHONE.fullmatch(text[1:-1].strip()):
                spans.append(_Span(start, end, "phone", True))
            if tok.name == "SCONST":
                spans.extend(_code_spans(text, start, places.extra))
            decoded = None
            if tok.name in ("SCONST", "USCONST"):
                uescape = _UESCAPE.match(sql, end) if tok.name == "USCONST" else None
                decoded = _unescaped(text, uescape.group(1) if uescape else "\\")
            if decoded is not None and decoded != text:
                hidden = list(_shaped(decoded))
                # more than the text shows as written: an escape hides one
                if len(hidden) > sum(1 for _ in _shaped(text)):
                    spans.append(_Span(start, end, hidden[0][2], True))
            if tok.name in ("SCONST", "USCONST") and _names_pii(
                _literal_value(text, decoded), places.extra
            ):
                spans.append(_Span(start, end, "value", True))
    masked = _apply(sql if failed is None else sql[:failed], spans)
    if failed is not None:
        masked += "<masked: the rest could not be scanned>"

    out_params = tuple(
        mask_value(v, places.params.get(i + 1) or _document_label(v, places.extra))
        for i, v in enumerate(params)
    )
    return masked, out_params


def _document_label(value: str | None, extra: Sequence[str]) -> str | None:
    """``value`` for a parameter that is a document keyed by PII column names."""
    return "value" if value is not None and _names_pii(value, extra) else None


def mask_every_literal(sql: str) -> str:
    """``sql`` with **every** literal replaced by ``$n`` (numbered after the highest
    parameter the text already has), and PII-shaped values in comments and quoted
    identifiers masked by look; text the scanner cannot read is masked from there on.

    For records that need the statement's shape, not its values (the audit trail, the
    operator log). Unlike :func:`mask_sql` it does not depend on knowing which column a
    literal ends up in (an alias, a JSON key, a whole-row reference, ``EXECUTE p('…')``
    hide that), and unlike PostgreSQL's own normalization it also replaces the
    literals of utility statements (``PREPARE``, ``EXECUTE``, ``COMMENT``, ``CREATE
    VIEW``): every scanner token that is a constant goes, whatever the grammar makes of
    it.
    """
    tokens, failed = _scan(sql)
    top = 0
    for tok in tokens:
        if tok.name == "PARAM":
            with contextlib.suppress(ValueError):
                top = max(top, int(sql[tok.start + 1 : tok.end + 1]))
    parts: list[str] = []
    pos = 0
    for tok in tokens:
        start, end = tok.start, tok.end + 1
        if tok.name in _LITERAL_TOKENS:
            top += 1
            parts.append(sql[pos:start])
            parts.append(f"${top}")
            pos = end
        elif tok.name in _SEARCHED_TOKENS:
            spans = [_Span(a, b, label, False) for a, b, label in _shaped(sql[start:end])]
            if spans:
                parts.append(sql[pos:start])
                parts.append(_apply(sql[start:end], spans))
                pos = end
    end_of_text = len(sql) if failed is None else failed
    parts.append(sql[pos:end_of_text])
    if failed is not None:
        parts.append("<masked: the rest could not be scanned>")
    return "".join(parts)
