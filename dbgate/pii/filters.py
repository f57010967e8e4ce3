"""PII in ErrorResponse, NoticeResponse and NotificationResponse bodies.

The server echoes values in its messages: ``Key (email)=(ann@example.com) already
exists``, ``Failing row contains (…)``, ``invalid input syntax for type integer:
"ann@example.com"`` (a PII value cast to a number), ``COPY customers, line 3, column
email: "…"``; user functions RAISE whatever they like; triggers NOTIFY row data.

* **Templates** for the messages PostgreSQL itself writes: key values are tokenized
  when a key column is PII (or the relation is unknown), failing rows when the relation
  has any PII column, and every double-quoted value of a data exception (class 22),
  whose origin a message cannot tell.
* **Detectors** (:mod:`dbgate.pii.detectors`) over every free-text field (message,
  detail, hint, context, internal query): the backstop for RAISE and anything else.
  ``pii.raise_messages: tokenize`` replaces the text of RAISE messages whole instead.
* **Withheld**, for an error or notice of a statement that involves PII (it reads a
  PII column anywhere, had tokens resolved into it, or its PII involvement is not
  known): the server echoes values in messages no template covers
  (``unrecognized configuration parameter "…"``, ``relation "…" does not exist``,
  ``date field value out of range: 1991-08-54``, ``JSON data, line 1: …``), so the
  message, detail, hint, context and internal query are replaced by a fixed text
  (:meth:`MessageFilter.withhold`). The SQLSTATE, severity and the names (schema,
  table, column, data type, constraint) stay; the positions go too (an input function
  run on a value, ``repeat('a', ascii(…))::regtype``, reports a position inside that
  value). Integrity violations (class 23, written by the server, not RAISE) keep their
  tokenized text.
* **Notifications**: payloads are tokenized whole by default (a trigger may send a
  whole row as JSON); ``detect`` or ``pass`` per channel where that is too much.

Bodies that do not parse are returned unchanged: the relay already checked framing,
and a message dbgate cannot read carries nothing it could have tokenized better.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from dbgate.pii.detectors import replace_detected
from dbgate.pii.entities import MIXED, UNKNOWN
from dbgate.wire.errors import ProtocolError
from dbgate.wire.messages import parse_error_fields

__all__ = ["COPY_TOKEN_REFUSAL", "WITHHELD_HINT", "MessageFilter", "withheld_message"]

_KEY = re.compile(
    r"Key \((?P<cols>.*?)\)=\((?P<vals>.*)\) (?P<rest>already exists|is not present in table|is still referenced from table|conflicts with existing key)"
)
_CONFLICT = re.compile(r"(conflicts with existing key \((?P<cols>.*?)\)=\()(?P<vals>.*)(\)\.?)$")
_FAILING = re.compile(r"^(Failing row contains )\((?P<vals>.*)\)(\.?)$", re.DOTALL)
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
_COPY_CTX = re.compile(r'^(COPY \S+, line \d+, column [^:]+: )"(?P<val>.*)"$', re.MULTILINE)
_FREE_TEXT = ("M", "D", "H", "W", "q")
#: Fields a withheld message keeps: severity, SQLSTATE and the names the server reports
#: separately. Not the positions: an error of an input function run on a value (a type
#: name parsed at run time) points into that value, so a position can spell a number
#: derived from PII. Nor where in the server's source it was raised (file, line,
#: routine): a CASE over a character code can choose among dozens of failing calls
#: (``int4div``, ``pg_strtoint32_safe``, ``numeric_in``, ``string_to_uuid`` …), and the
#: routine and line of the one that ran named the character.
_KEPT = frozenset("SVCstcdn")
#: ... and of a RAISE in PL/pgSQL, whose name fields are whatever its code gave them
_KEPT_OF_RAISE = frozenset("SVC")
#: Whole texts of class-23 details that hold nothing but tokens after the templates.
_SAFE_23_DETAIL = re.compile(
    r"^(?:Key \((?P<kc>[^()]*(?:\([^()]*\)[^()]*)*)\)=\(tok_[A-Za-z0-9_]+\) "
    r"(?:already exists|is not present in table \"[^\"]*\"|is still referenced from table \"[^\"]*\")\.?"
    r"|Failing row contains \(tok_[A-Za-z0-9_]+\)\.?)$"
)
_SAFE_23_MESSAGE = re.compile(
    r'^(?:duplicate key value violates unique constraint "[^"]*"'
    r'|null value in column "[^"]*"(?: of relation "[^"]*")? violates not-null constraint'
    r'|new row for relation "[^"]*" violates check constraint "[^"]*"'
    r'|insert or update on table "[^"]*" violates foreign key constraint "[^"]*"'
    r'|update or delete on table "[^"]*" violates foreign key constraint "[^"]*" on table "[^"]*")$'
)
#: The reason dbgate gives the server's COPY when the client's data holds a token
#: (``MessageFilter.copy_data``): the server's error quotes it, and is then told to
#: the client as this text with SQLSTATE 22023.
COPY_TOKEN_REFUSAL = (
    "dbgate: COPY data holds a PII token; tokens stand for their values in statement "
    "texts and Bind values only"
)
COPY_TOKEN_HINT = (
    "Send these rows with INSERT, where a token written into a PII column is resolved, "
    "or leave the tokens out of the COPY's data; the COPY stored none of its rows."
)
_COPY_FAILED = "COPY from stdin failed: " + COPY_TOKEN_REFUSAL
#: A token in data of any format: no look around it (in binary COPY a field's length
#: bytes stand right before it, and may be letters or digits).
_TOKEN_IN_DATA = re.compile(rb"tok_[a-z][a-z0-9]*(?:_[a-z0-9]+)*?_[rh][0-9a-f]{32}")
WITHHELD_HINT = (
    "dbgate withholds the text of errors and notices of statements that read PII or "
    "resolve tokens, because the server may echo values in it; the SQLSTATE and names "
    "(schema, table, column, constraint) are kept."
)


def withheld_message(code: str) -> str:
    return (
        "dbgate: the server's message was withheld: the statement involves PII "
        f"(SQLSTATE {code or 'unknown'})"
    )


#: (schema or None, table, column) -> entity, ``unknown`` when the relation is unknown,
#: or None when the column is not PII
ColumnLookup = Callable[[str | None, str, str], str | None]
RelationLookup = Callable[[str | None, str], bool]  # does the relation have PII columns?
Token = Callable[[str, bytes], str]


def _encode_fields(fields: Mapping[str, str]) -> bytes:
    parts = []
    for code, text in fields.items():
        parts.append(code.encode() + text.encode() + b"\0")
    parts.append(b"\0")
    return b"".join(parts)


class MessageFilter:
    """Rewrites notices, errors and notifications (a ``MessageFilter`` of proxy/seams.py)."""

    def __init__(
        self,
        token: Token,
        column_entity: ColumnLookup,
        relation_has_pii: RelationLookup,
        *,
        raise_messages: str = "detect",
        notification_payloads: str = "tokenize",
        notification_channels: Mapping[str, str] | None = None,
        detectors: bool = True,
        fresh: Token | None = None,
    ) -> None:
        self.token = token
        #: Tokens new at every use, for every echoed value but a PII key column's: an
        #: agent can have a text of its choosing echoed (a NOTIFY payload, a value its
        #: statement fails on), and a deterministic token of it would be a codebook
        #: entry for whatever PII reaches the same place. ``token`` when not given.
        self.fresh = token if fresh is None else fresh
        self.column_entity = column_entity
        self.relation_has_pii = relation_has_pii
        self.raise_messages = raise_messages
        self.notification_payloads = notification_payloads
        self.notification_channels = dict(notification_channels or {})
        self.detectors = detectors

    # ------------------------------------------------------------------ seam methods
    def notice(self, body: bytes, *, involves_pii: bool = False, positions: bool = True) -> bytes:
        """``involves_pii``: the notice comes from a statement that reads PII or had
        tokens resolved (or whose involvement is unknown): its text is withheld.
        ``positions``: whether the statement's positions are the client's (False when
        dbgate rewrote its text: they are dropped)."""
        return self._fields(body, "NoticeResponse", involves_pii, positions)

    def error(self, body: bytes, *, involves_pii: bool = False, positions: bool = True) -> bytes:
        """As :meth:`notice`."""
        return self._fields(body, "ErrorResponse", involves_pii, positions)

    def copy_data(self, data: bytes) -> str | None:
        """The reason to end a COPY FROM STDIN whose data (``data``: the client's
        CopyData, with the end of the one before) holds a token, or None. Tokens are
        resolved where the gate sees what they are compared with or written into; in
        COPY data one would be stored as its own text, silently."""
        if b"tok_" not in data or _TOKEN_IN_DATA.search(data) is None:
            return None
        return COPY_TOKEN_REFUSAL

    def notification(self, body: bytes) -> bytes:
        if len(body) < 6:
            return body
        end = body.find(b"\0", 4)
        if end < 0 or not body.endswith(b"\0"):
            return body
        channel = body[4:end].decode("utf-8", "replace")
        payload = body[end + 1 : -1]
        mode = self.notification_channels.get(channel, self.notification_payloads)
        if mode == "pass" or not payload:
            return body
        if mode == "detect":
            text = payload.decode("utf-8", "replace")
            new = replace_detected(text, self.fresh).encode()
        else:
            new = self.fresh(MIXED, payload).encode()
        if new == payload:
            return body
        return body[: end + 1] + new + b"\0"

    # ------------------------------------------------------------------ errors/notices
    def _fields(
        self, body: bytes, what: str, involves_pii: bool = False, positions: bool = True
    ) -> bytes:
        try:
            fields = parse_error_fields(body, what)
        except ProtocolError:
            if not involves_pii:
                return body
            # fail closed: nothing of an unreadable message of a PII statement
            fields = {"S": "ERROR" if what == "ErrorResponse" else "NOTICE", "C": "XX000"}
            return _encode_fields(self.withhold(fields, positions=False))
        if fields.get("M") == _COPY_FAILED and fields.get("C") == "57014":
            # the server quoting dbgate's own CopyFail (copy_data): said as dbgate's
            return _encode_fields(
                {
                    "S": fields.get("S", "ERROR"),
                    "V": fields.get("V", "ERROR"),
                    "C": "22023",
                    "M": COPY_TOKEN_REFUSAL,
                    "H": COPY_TOKEN_HINT,
                }
            )
        new = self.withhold(fields, positions=positions) if involves_pii else self.scrub(fields)
        return body if new == fields else _encode_fields(new)

    def withhold(self, fields: dict[str, str], *, positions: bool = True) -> dict[str, str]:
        """The fields of a message of a statement that involves PII: the message,
        detail, hint, context and internal query replaced by a fixed text, except an
        integrity violation the templates fully tokenized (a new dict)."""
        code = fields.get("C", "")
        user_raise = fields.get("R") == "exec_stmt_raise"
        # a RAISE in PL/pgSQL names what it likes (``USING COLUMN = NEW.full_name``):
        # of its message, only the severity and SQLSTATE stay
        kept = _KEPT_OF_RAISE if user_raise else _KEPT
        out = {k: v for k, v in fields.items() if k in kept}
        if code.startswith("23") and not user_raise:
            scrubbed = self.scrub(fields)
            msg, detail = scrubbed.get("M", ""), scrubbed.get("D")
            if _SAFE_23_MESSAGE.match(msg) and (detail is None or _SAFE_23_DETAIL.match(detail)):
                out["M"] = msg
                if detail is not None:
                    out["D"] = detail
                return out
        out["M"] = withheld_message(code)
        out["H"] = WITHHELD_HINT
        return out

    def scrub(self, fields: dict[str, str]) -> dict[str, str]:
        """The fields with echoed values tokenized (a new dict; the input is not changed)."""
        out = dict(fields)
        code = fields.get("C", "")
        schema = fields.get("s") or None
        table = fields.get("t", "")
        user_raise = fields.get("R") == "exec_stmt_raise"
        if "D" in out:
            out["D"] = self._detail(out["D"], schema, table)
        if code.startswith("22"):
            for key in ("M", "D"):
                if key in out:
                    out[key] = _QUOTED.sub(
                        lambda m: (
                            '"' + self.fresh(MIXED, m.group(1).replace('""', '"').encode()) + '"'
                        ),
                        out[key],
                    )
        if "W" in out:
            out["W"] = _COPY_CTX.sub(
                lambda m: m.group(1) + '"' + self._copy_value(m, fields) + '"', out["W"]
            )
        if user_raise and self.raise_messages == "tokenize":
            for key in ("M", "D", "H"):
                if out.get(key):
                    out[key] = self.fresh(MIXED, out[key].encode())
        elif self.detectors:
            for key in _FREE_TEXT:
                if out.get(key):
                    out[key] = replace_detected(out[key], self.fresh)
        return out

    def _copy_value(self, m: re.Match[str], fields: Mapping[str, str]) -> str:
        return self.fresh(MIXED, m.group("val").encode())

    def _detail(self, text: str, schema: str | None, table: str) -> str:
        key = _KEY.search(text)
        if key is not None:
            text = self._key_values(text, key.group("cols"), key.group("vals"), schema, table, key)
            conflict = _CONFLICT.search(text)
            if conflict is not None:
                cols = [c.strip() for c in conflict.group("cols").split(",")]
                entity = self._entity_of(cols, schema, table)
                if entity is not None:
                    tok = self._key_token(entity, conflict.group("vals").encode())
                    text = text[: conflict.start("vals")] + tok + text[conflict.end("vals") :]
            return text
        failing = _FAILING.match(text)
        if failing is not None and (not table or self.relation_has_pii(schema, table)):
            return (
                failing.group(1)
                + "("
                + self.fresh(MIXED, failing.group("vals").encode())
                + ")"
                + failing.group(3)
            )
        return text

    def _entity_of(self, cols: list[str], schema: str | None, table: str) -> str | None:
        if not table:
            return UNKNOWN
        entities = set()
        for col in cols:
            e = self.column_entity(schema, table, col.strip('"'))
            if e is not None:
                entities.add(e)
        if not entities:
            return None
        return entities.pop() if len(entities) == 1 else MIXED

    def _key_values(
        self, text: str, cols_text: str, vals: str, schema: str | None, table: str, m: re.Match[str]
    ) -> str:
        cols = [c.strip() for c in cols_text.split(",")]
        entity = self._entity_of(cols, schema, table)
        if entity is None:
            return text
        tok = self._key_token(entity, vals.encode())
        return text[: m.start("vals")] + tok + text[m.end("vals") :]

    def _key_token(self, entity: str, value: bytes) -> str:
        """A key value's token: the column's own (deterministic, so the agent can tell
        which row a unique violation names) when the key is one PII column of a known
        kind; else a fresh one, like every other value a message echoes."""
        if entity in (MIXED, UNKNOWN):
            return self.fresh(entity, value)
        return self.token(entity, value)
