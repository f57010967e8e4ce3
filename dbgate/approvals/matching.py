"""When is a retried statement "the same" as the one an approver approved?

Approve-then-retry lets the agent re-send a statement once it has been approved. The
retry must be the *identical* statement with the *identical* parameter values — an
approval of ``DELETE FROM orders WHERE id = 7`` must not cover ``id = 8`` — but it
should not fail over what the server ignores: whitespace, comments (a different
``/* dbgate: purpose=… */``), the case of keywords and unquoted identifiers.

So the statement is reduced to PostgreSQL's own tokens (pglast's scanner), comments
dropped, keywords and unquoted identifiers lower-cased, literals and quoted
identifiers kept byte for byte. The result and the parameters are then hashed with
HMAC-SHA-256 under a key the state database's readers do not have, so the stored
hash cannot be used to confirm guesses of the values (an SSN has only 10^9).

One text with one set of values does not always do one thing: the session's
``search_path`` decides which ``orders`` a ``DROP TABLE orders`` drops, its user
whose privileges it runs with, ``standard_conforming_strings`` and the client
encoding how its literals read, ``DateStyle``/``IntervalStyle``/``TimeZone`` which
rows ``WHERE day = '01/02/2026'`` matches, and a parameter's declared type which
function or operator it calls. So the hash also covers that *context*
(:func:`statement_context`), and a shape approval — which frees the values — is tied
to it by :func:`context_hash`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence

from pglast import parser as pg

from dbgate.pii.sql_mask import slow_to_scan

_DROPPED = frozenset({"C_COMMENT", "SQL_COMMENT"})
_FOLDED = frozenset({"IDENT"})  # unquoted identifiers: the server folds them
#: How the server folds an unquoted identifier (``downcase_identifier``): ASCII
#: letters only. ``str.lower`` would also fold ``Äpfel`` to ``äpfel`` and the Kelvin
#: sign to ``k`` — two different tables, one approval.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalized_sql(sql: str) -> str:
    """The statement as the server sees it: tokens, no comments, folded case."""
    if slow_to_scan(sql) is not None:
        return sql.strip()  # a run the scanner takes quadratic time over: exact text only
    try:
        tokens = pg.scan(sql)
    except pg.ParseError:
        return sql.strip()  # unscannable: only the exact text matches
    out = []
    for tok in tokens:
        if tok.name in _DROPPED:
            continue
        text = sql[tok.start : tok.end + 1]
        if tok.kind != "NO_KEYWORD" or (tok.name in _FOLDED and not text.startswith('"')):
            text = text.translate(_ASCII_LOWER)  # the server folds A-Z only: Ä stays Ä
        out.append(text)
    return " ".join(out)


#: Settings the server reports (ParameterStatus) that change what a statement does
#: without changing its text. ``search_path`` is reported from PostgreSQL 18 on; an
#: older server does not report it, and its changes are not seen (docs/approvals.md).
CONTEXT_SETTINGS = (
    "search_path",
    "session_authorization",
    "standard_conforming_strings",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
)

#: A statement's context: (name, value) pairs, in a fixed order.
Context = tuple[tuple[str, str], ...]

#: The context entry :func:`statement_context` adds for declared parameter types.
_PARAMETER_TYPES = "parameter types"


def statement_context(server_params: Mapping[str, str], param_types: Sequence[int] = ()) -> Context:
    """The session's settings that decide what a statement does, and the types its
    parameters were declared with (0: left to the server, which infers them from
    the text — the same text infers the same types)."""
    pairs = [(name, server_params[name]) for name in CONTEXT_SETTINGS if name in server_params]
    if any(param_types):
        pairs.append((_PARAMETER_TYPES, ",".join(str(oid) for oid in param_types)))
    return tuple(pairs)


def match_hash(
    key: bytes,
    sql: str,
    params: Sequence[str | None] = (),
    database: str = "",
    context: Context = (),
) -> bytes:
    """Keyed hash of the normalized statement, its parameter values, the database it
    is sent to (an identity may reach several: ``DROP TABLE orders`` approved in one
    is not approved in another) and its context (:func:`statement_context`)."""
    payload = json.dumps(
        [normalized_sql(sql), list(params), database, [list(p) for p in context]],
        ensure_ascii=False,
    )
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).digest()


def context_hash(key: bytes, database: str, context: Context) -> bytes:
    """Keyed hash of where and how a statement runs, without its text and values:
    what a shape approval with free values must still share with its source. The
    parameters' types are left out: the values are free, and a value bound as a
    parameter or written as a literal is one value (a shape approved from a Bind
    covers the literal form too)."""
    kept = [list(p) for p in context if p[0] != _PARAMETER_TYPES]
    payload = json.dumps(["context", database, kept], ensure_ascii=False)
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).digest()


#: Statements whose literal constants are data (compared, assigned, inserted, limits):
#: a shape approval with free values lets these vary. Everywhere else (SET, DO, COPY,
#: GRANT, CREATE FUNCTION, EXECUTE, ...) a constant names a role, a setting, a program
#: or carries code, and must be the same.
_DATA_STATEMENTS = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})

_VALUES = frozenset({"A_Const", "ParamRef"})

#: A LIMIT or OFFSET (FETCH FIRST) decides how many rows a statement reads or changes,
#: not which values it compares: ``LIMIT 5000`` approved is no approval of
#: ``LIMIT ALL``. Kept like a function's arguments (a parameter there fixes values).
_COUNTS = frozenset({"limitCount", "limitOffset"})


#: What masking leaves of a value (``'<email>'``, ``'call <phone>'``): the text the
#: approver saw, not the value.
_MASKED = re.compile(r"<[^<>\s]+>")


def _shape_tree(node: object, free: bool) -> object:
    if isinstance(node, dict):
        if free and node.keys() & _VALUES:  # a literal or a parameter: a value
            return "?"
        const = node.get("A_Const")
        if isinstance(const, dict):
            sval = (const.get("sval") or {}).get("sval")
            if isinstance(sval, str) and _MASKED.search(sval):
                # A constant that must be the same (see below) but was masked: two
                # different values read alike, so it counts as a parameter that is
                # not data — only a shape with fixed values (compared by the keyed
                # hash of the raw text) covers it.
                return {"ParamRef": "masked"}
        out = {}
        for name, value in node.items():
            if name == "location" or name.endswith("_location") or name == "stmt_len":
                continue
            if (
                name == "FuncCall"
                or name in _COUNTS
                or (name == "TypeCast" and _names_an_object(value))
            ):
                # A function's constant arguments name what it does (set_config's
                # setting, query_to_xml's query, a file, a sequence), and a cast to
                # an object identifier type names the object ('orders'::regclass):
                # kept, parameters included (see :func:`fixes_parameters`).
                out[name] = _shape_tree(value, False)
            else:
                out[name] = _shape_tree(value, free)
        return out
    if isinstance(node, list):
        return [_shape_tree(item, free) for item in node]
    if not free and isinstance(node, str) and _MASKED.search(node):
        return {"ParamRef": "masked"}  # masked code (a DO block's literals): as above
    return node


def _names_an_object(cast: object) -> bool:
    """Whether a TypeCast is to an object identifier type (regclass, regproc, ...)."""
    if not isinstance(cast, dict):
        return False
    names = (cast.get("typeName") or {}).get("names") or []
    last = names[-1] if names else {}
    name = (last.get("String") or {}).get("sval", "") if isinstance(last, dict) else ""
    return name.startswith("reg")


def fixes_parameters(key: str) -> bool:
    """Whether a statement with this :func:`shape_key` has parameters that are not
    data — arguments of a function (``set_config($1, $2, false)``), casts to an
    object type, any parameter of a statement other than a SELECT or DML: their
    values decide what it does, so only a shape approval with fixed values covers
    it. So does a constant of that kind that masking replaced (``EXECUTE p('<value>')``,
    ``set_config('<full_name>', full_name, false)``): the masked text no longer tells
    two values apart. (A literal that spells ``ParamRef`` makes this True: stricter,
    never wider.)"""
    return "ParamRef" in key


def shape_key(sql: str) -> str | None:
    """What a shape approval with free values compares: the statement's parse tree
    without positions, with the literal constants that are data left out.

    pglast's fingerprint leaves out far more than data: the body of a ``DO`` block or
    of ``CREATE FUNCTION``, role names (``SET ROLE``, ``GRANT … TO``), prepared
    statement names, the arguments of ``set_config``. Two statements with one
    fingerprint may do entirely different things, so a shape is found by fingerprint
    and then must also have this key. None when the text does not parse (nothing
    matches it).
    """
    try:
        tree = json.loads(pg.parse_sql_json(sql))
    except (pg.ParseError, ValueError, RecursionError):
        return None
    stmts = []
    for raw in tree.get("stmts", ()):
        stmt = raw.get("stmt") or {}
        stmts.append(_shape_tree(stmt, stmt.keys() <= _DATA_STATEMENTS))
    return json.dumps(stmts, sort_keys=True, ensure_ascii=False)
