"""Tokens in, values out: resolve tokens the agent sends back before the server sees them.

``SELECT … WHERE email = 'tok_email_r…'`` must find the customer, so the token is
replaced by the real value in the forwarded text; ``= ANY($1)`` with an array of tokens
works the same in Bind values. The agent never sees the value: every output that the
resolved literal flows into is tokenized again (lineage marks it), and a token may not
be resolved where the value could be stored or echoed raw — a column the catalog does
not mark as PII, a setting, a user function's argument, a view definition, EXPLAIN —
(the walker in :mod:`dbgate.pii.lineage` decides, per literal and per parameter).

A token that does not resolve (altered, issued under another key, or a hashed token
no longer in the cache) is an error with SQLSTATE 22023, never a silent miss: a
``WHERE email = 'tok_…'`` that quietly matched nothing would mislead the agent.

Rewriting SQL text: the literal holding the token (found by pglast's scanner, so
identifiers and comments are never touched) is replaced whole by a dollar-quoted
literal of the resolved text, whatever its original quoting (``'…'``, ``E'…'``,
``$$…$$``) — dollar quoting does not depend on ``standard_conforming_strings``.
Inside a JSON literal the value is JSON-escaped; inside an array literal
(``'{tok_a,tok_b}'``) each element is re-quoted as the array syntax needs.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections.abc import Callable, Sequence

from pglast import parser as _pg

from dbgate.pii.lineage import Analysis
from dbgate.pii.lineage.context import NOT_A_CONTAINER
from dbgate.pii.pseudonyms import (
    ARRAY,
    BYTEA,
    JSON,
    JSONB,
    OPAQUE,
    TEXT,
    TypeRegistry,
)
from dbgate.pii.text_arrays import map_elements
from dbgate.pii.tokens import TOKEN_RE, TOKEN_RE_BYTES, TokenError, in_container_syntax

__all__ = ["Resolver", "detokenize_params", "detokenize_sql"]

#: token -> (entity, value bytes); raises TokenError
Resolver = Callable[[str], tuple[str, bytes]]


def _value_text(resolve: Resolver, token: str) -> str:
    _entity, value = resolve(token)
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise TokenError(
            f"token {token[:40]}… stands for bytes that are not UTF-8 text", token
        ) from None
    if "\0" in text:
        raise TokenError(f"token {token[:40]}… stands for a value with a NUL byte", token)
    return text


def _whole_value(text: str, resolve: Resolver) -> str:
    """The value of a token that is the whole of ``text`` (a literal, an array element,
    a JSON string); TokenError when a token is only a part of it. Put inside other
    text, the value would be parsed by whatever type the text is read as: the bound
    of a range (``'[tok_…,5e15)'::numrange``), a cube's coordinate, an hstore's pair,
    where the server compares it with bounds the agent chose or fails on it by its
    size — an order, not a whole-value guess."""
    if TOKEN_RE.fullmatch(text) is not None:
        return _value_text(resolve, text)
    found = TOKEN_RE.search(text)
    if found is None:
        return text
    raise TokenError(
        f"token {found.group(0)[:40]}… is part of a longer value: a token stands for its"
        " value only as a whole literal, array element or JSON string",
        found.group(0),
    )


def _replace_in_text(text: str, resolve: Resolver) -> str:
    """Tokens inside one literal's value, replaced with regard to JSON and array syntax:
    each must be the whole literal, a whole array element or a whole JSON string."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[", '"'):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        else:
            return json.dumps(_json_replace(doc, resolve), ensure_ascii=False)
        if stripped.startswith("{") and doc is None:
            try:
                return _array_replace(text, resolve, ",")
            except ValueError:
                pass
    return _whole_value(text, resolve)


def _json_replace(doc: object, resolve: Resolver) -> object:
    if isinstance(doc, str):
        return _whole_value(doc, resolve)
    if isinstance(doc, list):
        return [_json_replace(x, resolve) for x in doc]
    if isinstance(doc, dict):
        return {_json_replace(k, resolve): _json_replace(v, resolve) for k, v in doc.items()}
    return doc


def _array_replace(text: str, resolve: Resolver, delim: str) -> str:
    return map_elements(
        text,
        delim,
        lambda value: _whole_value(value, resolve) if "tok_" in value else None,
    )


def _dollar_quote(value: str) -> str:
    tag = "$dbgate$"
    while tag in value or value.endswith("$dbgate"):
        tag = f"$dbgate{secrets.token_hex(4)}$"
    return f"{tag}{value}{tag}"


def detokenize_sql(
    sql: str, analysis: Analysis, resolve: Resolver, resolve_stored: Resolver | None = None
) -> str:
    """``sql`` with every token literal resolved; TokenError (22023) when one may not be.

    ``analysis`` must be the lineage of this very text (the plan's). ``resolve_stored``
    resolves a token whose value is stored in a PII column (``TokenSite.stores``).
    """
    sites = analysis.token_sites
    if not sites:
        return sql
    for site in sites:
        if not site.allowed:
            raise TokenError(f"a token cannot be resolved here: {site.why}")
    if analysis.token_writes:
        raise TokenError(
            f"a token cannot be resolved here: the statement {analysis.token_writes[0]}"
        )
    unseen = analysis.unseen_code()
    if unseen:
        raise TokenError(
            "a token cannot be resolved into the text of a statement that runs code of"
            f" the database's own ({unseen}): that code may keep the text"
            " (current_query()), the value in it; send the value as a Bind parameter"
        )
    raw = sql.encode()
    spans: dict[int, tuple[int, int]] = {}
    for tok in _pg.scan(sql):
        if tok.name in ("SCONST", "USCONST"):
            spans[tok.start] = (tok.start, tok.end + 1)
    replacements: list[tuple[int, int, str]] = []
    for site in sites:
        char_at = len(raw[: site.location].decode("utf-8", "replace")) if site.location >= 0 else -1
        span = spans.get(char_at)
        if span is None:
            raise TokenError("a token literal could not be located in the statement text")
        how = resolve_stored if site.stores and resolve_stored is not None else resolve
        replacements.append((span[0], span[1], _dollar_quote(_replace_in_text(site.text, how))))
    out = []
    pos = 0
    for start, end, text in sorted(set(replacements)):
        out.append(sql[pos:start])
        out.append(text)
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def _replace_bytes(value: bytes, resolve: Resolver) -> bytes:
    """A binary text value (or element) that is one whole token, resolved (see
    :func:`_whole_value`)."""
    if TOKEN_RE_BYTES.fullmatch(value) is not None:
        return resolve(value.decode())[1]
    found = TOKEN_RE_BYTES.search(value)
    if found is None:
        return value
    raise TokenError(
        "a token is part of a longer value: a token stands for its value only as a whole"
        " value or array element",
        found.group(0).decode(),
    )


#: ``unknown``: a parameter declared so has its type inferred by the server, as one
#: declared 0 has.
UNKNOWN_OID = 705

#: ``"char"`` (its first byte), ``name`` (63 bytes), ``float4`` and ``float8`` (the
#: leading digits): a Bind value of these types (or of a domain over one, or an array
#: of one) reaches the server cut.
TRUNCATING_TYPE_OIDS = frozenset({18, 19, 700, 701})


def detokenize_params(
    analysis: Analysis,
    params: Sequence[bytes | None],
    formats: Sequence[int],
    param_types: Sequence[int],
    types: TypeRegistry,
    resolve: Resolver,
    resolve_stored: Resolver | None = None,
) -> tuple[tuple[bytes | None, ...], frozenset[int]]:
    """Bind values with tokens resolved, and the 1-based numbers of those that held one.

    ``formats`` and ``param_types`` are per parameter (expanded; 0 where unknown);
    ``resolve_stored`` resolves a parameter stored in a PII column (``param_stores``).
    """
    out = list(params)
    replaced: set[int] = set()
    any_resolve = resolve
    for i, value in enumerate(params):
        if value is None or b"tok_" not in value:
            continue
        fmt = formats[i] if i < len(formats) else 0
        if fmt == 0 and TOKEN_RE_BYTES.search(value) is None:
            continue
        n = i + 1
        resolve = (
            resolve_stored
            if resolve_stored is not None and n in analysis.param_stores
            else any_resolve
        )
        oid = param_types[i] if i < len(param_types) else 0
        if oid == UNKNOWN_OID:
            # declared ``unknown``, a parameter's type is left to the server as with 0:
            # it takes the type of what it is compared with (``length(email) = $1``
            # reads a binary value's bytes as an int4, failing by their number)
            oid = 0
        base = types.bases.get(oid, oid)
        elem = types.elems.get(oid, 0)
        if base in TRUNCATING_TYPE_OIDS or types.bases.get(elem, elem) in TRUNCATING_TYPE_OIDS:
            # its input keeps a part of the text ("char" the first byte): the
            # server would compare or store that part, not the value
            raise TokenError(
                f"a token in parameter ${n} cannot be resolved here: its type keeps only "
                "part of a value"
            )
        kind = types.kind(oid) if oid else TEXT
        if (
            oid
            and n not in analysis.param_stores
            and (oid in types.bases or elem in types.bases or kind == OPAQUE)
            and TOKEN_RE_BYTES.search(value) is not None
        ):
            # a domain's CHECK runs on the value it is given (``CHECK (VALUE < 'm')``
            # fails or not by its order), and a type dbgate does not know (one made
            # since the snapshot, a domain too) reads it as it likes. Written into a
            # PII column, a value takes the column's type, whose checks run on a
            # literal written there as well (the server infers a parameter written
            # into a domain's column as of that domain)
            raise TokenError(
                f"a token in parameter ${n} cannot be resolved here: its type is a domain,"
                " whose checks would run on the value, or one dbgate does not know"
            )
        if n in analysis.param_contained and not (
            kind in (ARRAY, JSON, JSONB) or (fmt == 0 and oid == 0 and value[:1] in b"{[")
        ):
            # compared by @> or <@ as a scalar: within a range's (a cube's, an
            # ltree's) bounds the other operand chose, an order, not a guess
            raise TokenError(
                f"a token in parameter ${n} cannot be resolved here: @> and <@ compare a"
                " token whole only inside an array or a JSON value"
            )
        if n in analysis.param_contained and n in analysis.param_loose and oid == 0:
            # compared by @> or <@ with what is not visibly an array or JSON, its type
            # left to the server: a JSON object is one element of a range over text
            raise TokenError(
                f"a token in parameter ${n} cannot be resolved here: {NOT_A_CONTAINER}"
            )
        if fmt == 0:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                raise TokenError(f"parameter ${n} is not valid UTF-8 text") from None
            if oid == 0 and n in analysis.param_loose and in_container_syntax(text):
                # its type left to the server, which takes that of what it is compared
                # with or written into: not visibly an array or JSON, it may read the
                # text as another type's (a line's coefficients, around the value)
                raise TokenError(
                    f"a token in parameter ${n} cannot be resolved here: {NOT_A_CONTAINER}"
                )
            if kind == ARRAY or (oid == 0 and text.startswith("{")):
                delim = types.delims.get(oid, ",")
                if kind == ARRAY and types.kind(types.elems.get(oid, 0)) in (JSON, JSONB):
                    # each element a JSON text: the value JSON-escaped inside it
                    new = map_elements(
                        text,
                        delim,
                        lambda v, how=resolve: (  # type: ignore[misc]
                            _replace_in_text(v, how) if "tok_" in v else None
                        ),
                    ).encode()
                else:
                    new = (
                        _array_replace(text, resolve, delim)
                        if kind == ARRAY
                        else _replace_in_text(text, resolve)
                    ).encode()
            elif kind in (JSON, JSONB):
                new = _replace_in_text(text, resolve).encode()
            elif kind == BYTEA:
                raise TokenError(f"parameter ${n}: tokens are not resolved inside bytea values")
            else:
                new = _whole_value(text, resolve).encode()
        elif not oid and TOKEN_RE_BYTES.search(value) is not None:
            # a binary value of a type the Parse left to the server: its layout is the
            # type the server infers, which dbgate does not know (``= ANY($1)``: a
            # binary text[], whose element lengths a value put in place of a token no
            # longer match; ``birth_date = $1``: four bytes of the value read as a
            # date), so whether the server reads it, and how, would depend on the value
            raise TokenError(
                f"a token in parameter ${n} cannot be resolved here: a binary value of a "
                "type the statement does not declare (declare the parameter's type, or "
                "send it in text format)"
            )
        elif kind == TEXT:
            new = _replace_bytes(value, resolve)
        elif kind in (JSON, JSONB):
            new = _binary_json(value, kind, resolve, n)
        elif kind == ARRAY and types.kind(types.elems.get(oid, 0)) == TEXT:
            new = _binary_array(value, lambda v, how=resolve: _replace_bytes(v, how))  # type: ignore[misc]
        elif kind == ARRAY and types.kind(types.elems.get(oid, 0)) in (JSON, JSONB):
            elem_kind = types.kind(types.elems.get(oid, 0))
            new = _binary_array(
                value,
                lambda v, how=resolve, k=elem_kind, m=n: _binary_json(v, k, how, m),  # type: ignore[misc]
            )
        elif kind == BYTEA and TOKEN_RE_BYTES.search(value) is not None:
            # its bytes are the value itself, as in the text format: a token there is
            # not resolved, and never passed on as if it had been
            raise TokenError(f"parameter ${n}: tokens are not resolved inside bytea values")
        else:
            continue  # a binary value of another type: "tok_" is only a coincidence of bytes
        if new == value:
            continue
        why = analysis.param_sites.get(n, "")
        if why:
            raise TokenError(f"a token in parameter ${n} cannot be resolved here: {why}")
        if n in analysis.param_writes:
            raise TokenError(
                f"a token in parameter ${n} cannot be resolved here: its value would be stored "
                "where the PII catalog does not mark it"
            )
        out[i] = new
        replaced.add(n)
    return tuple(out), frozenset(replaced)


def _binary_json(value: bytes, kind: str, resolve: Resolver, n: int) -> bytes:
    """A binary json (its text) or jsonb (a version byte, then its text) value with
    the tokens inside it resolved, as in the text format."""
    if TOKEN_RE_BYTES.search(value) is None:
        return value  # "tok_" and no token: kept byte for byte
    head = b""
    if kind == JSONB:
        if value[:1] != b"\x01":
            raise TokenError(f"parameter ${n}: a jsonb value of an unknown version")
        head, value = value[:1], value[1:]
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise TokenError(f"parameter ${n} is not valid UTF-8 text") from None
    return head + _replace_in_text(text, resolve).encode()


def _binary_array(raw: bytes, replace: Callable[[bytes], bytes]) -> bytes:
    ndim, _flags, _elem = struct.unpack_from("!iiI", raw, 0)
    pos = 12 + 8 * ndim
    count = 1 if ndim else 0
    for i in range(ndim):
        count *= struct.unpack_from("!i", raw, 12 + 8 * i)[0]
    parts = [raw[:pos]]
    for _ in range(count):
        n = struct.unpack_from("!i", raw, pos)[0]
        pos += 4
        if n < 0:
            parts.append(b"\xff\xff\xff\xff")
            continue
        new = replace(raw[pos : pos + n])
        parts.append(struct.pack("!i", len(new)) + new)
        pos += n
    return b"".join(parts)
