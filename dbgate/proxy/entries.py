"""The statement tracker's vocabulary: message type bytes, the kinds of entries in
its in-flight queue, and small readers of message bodies.

Shared by :mod:`dbgate.proxy.tracker` and its measured-writes part
(:mod:`dbgate.proxy.measured`); nothing here keeps state.
"""

from __future__ import annotations

import secrets
from struct import Struct
from typing import Any

from dbgate.proxy.seams import Allow
from dbgate.wire import messages as m
from dbgate.wire import sqlstate
from dbgate.wire.errors import ClientProtocolError
from dbgate.wire.framing import type_mask

NONCE = secrets.token_hex(8)  # marks errors this process injected; unguessable by clients
#: The savepoint of a measured statement: a name no client can guess, so it cannot
#: release or roll back to it by accident (nor shadow it).
SAVEPOINT = f"dbgate_measure_{NONCE}"

# Frontend message types
QUERY_MSG, PARSE_MSG, BIND_MSG, FUNCTION_MSG = (ord(c) for c in "QPBF")
SYNC_MSG, CLOSE_MSG, TERMINATE_MSG, FLUSH_MSG = (ord(c) for c in "SCXH")
EXECUTE_MSG, DESCRIBE_MSG = ord("E"), ord("D")
COPY_DONE_MSG, COPY_FAIL_MSG = ord("c"), ord("f")
#: What the client side must see; all other messages pass as bytes.
CLIENT_TYPES = type_mask("QPBFSCXEDcf")
#: The same and CopyData, for a session whose COPY data is looked at (proxy/copy_in.py).
CLIENT_TYPES_COPY = type_mask("QPBFSCXEDcfd")

MEMO_MAX_ENTRIES = 128  # repeatable verdicts remembered per session
MEMO_MAX_MESSAGE = 2048  # bytes; longer messages are always inspected
#: Remembered verdicts older than this are forgotten: the inspector, asked again, also
#: reads again the catalog snapshots its verdicts came from once they are old (the
#: keys, the PII schema: a migration outside dbgate), which a session repeating only
#: remembered texts would otherwise never make it do.
MEMO_MAX_AGE_SECONDS = 30.0

# Backend message types
READY_MSG, PARAM_STATUS_MSG, ERROR_MSG, NOTICE_MSG, NOTIFY_MSG = (ord(c) for c in "ZSENA")
PARSE_OK, BIND_OK, CLOSE_OK = (ord(c) for c in "123")
PARAM_DESC, ROW_DESC, NO_DATA = (ord(c) for c in "tTn")
DATA_ROW, CMD_COMPLETE, EMPTY_QUERY, SUSPENDED = (ord(c) for c in "DCIs")
COPY_IN, COPY_OUT, COPY_BOTH, COPY_DATA = (ord(c) for c in "GHWd")
COPY_DONE_SRV = ord("c")
FUNC_RESULT = ord("V")

#: What the server side must always see: everything that answers a client message,
#: and ParameterStatus/ErrorResponse. DataRow/CopyData only while a rewriter is
#: active; notices and notifications only when a message filter is configured.
TRACK_TYPES = type_mask("ZSE123tTnCIsGHWV")
TRACK_WITH_MESSAGES = type_mask("ZSE123tTnCIsGHWVNA")

#: Entries in flight per session; a client that pipelines more without reading its
#: answers is ended (54000) rather than allowed to grow dbgate's memory.
MAX_IN_FLIGHT = 100_000

# Entry kinds. Entries are tuples whose first item is the kind (tuples are several
# times cheaper to make than objects, and one is made per message):
#   (QUERY, verdict, record, changes)   changes: None or [index, [(i, handle), ...]]
#   (PARSE, name key, KnownStatement, handle, record)
#   (BIND, body, None, None) / (BIND, body, verdict, record, portal, statement key)
#                              (its names, read once: an inspected Bind, or any
#                              while row limits are in play; verdict may be None)
#   (DESCRIBE_S, name key) / (DESCRIBE_P, portal)
#   (EXECUTE, portal, record, fetch)  fetch: the Execute's row count (0: all) when its
#                                     rows are counted, not watched (see _counted)
#   (CLOSE, "S" or "P", name, handle)
#   (SYNC,) / (COPY_END,)     COPY_END marks where the client ended COPY data
#   (FUNCTION, record)
#   (INJECTED_QUERY, refusal, record, token) / (INJECTED_PARSE, refusal, record, token)
#   (PING,)                   a Sync of dbgate's (see :meth:`StatementTracker.ping`)
QUERY, PARSE, BIND, DESCRIBE_S, DESCRIBE_P, EXECUTE, CLOSE, SYNC, FUNCTION = range(9)
INJECTED_QUERY, INJECTED_PARSE, COPY_END = 9, 10, 11
# Failures dbgate sends after a statement that went over its row limit finished
# anyway, so that the server agrees it failed; their answers are not shown.
SILENT_QUERY, SILENT_PARSE = 12, 13
# Queries of dbgate's around a measured Query (see dbgate.proxy.measure): its set-up
# (BEGIN; SAVEPOINT), statements whose answers are never shown (release, undo), and
# the COMMIT of a block dbgate opened (its error and ReadyForQuery are the client's).
MEASURE_SETUP, MEASURE_SILENT, MEASURE_COMMIT = 14, 15, 16
# A Sync of dbgate's that keeps a held statement's transaction from idling out: its
# ReadyForQuery is not shown, and it is not a client cycle.
PING = 17
# A Close of dbgate's: a named statement a measured batch prepared, closed again when
# the batch is undone (its CloseComplete is not shown).
MEASURE_CLOSE = 18
KIND_NAMES = (
    "Query",
    "Parse",
    "Bind",
    "Describe of a statement",
    "Describe of a portal",
    "Execute",
    "Close",
    "Sync",
    "FunctionCall",
    "refused Query",
    "refused message",
    "end of COPY data",
    "Query of dbgate's",
    "Parse of dbgate's",
    "measurement set-up of dbgate's",
    "Query of dbgate's",
    "COMMIT of dbgate's",
    "Sync of dbgate's",
    "Close of dbgate's",
)
SYNC_ENTRY = (SYNC,)
DESCRIBE_UNNAMED_PORTAL = (DESCRIBE_P, "")
COPY_END_ENTRY = (COPY_END,)
PING_ENTRY = (PING,)
SYNC_FRAME = m.frame(ord("S"), b"")
ENDS_CYCLE = frozenset({QUERY, SYNC, FUNCTION, INJECTED_QUERY, SILENT_QUERY})

I16 = Struct("!h")
#: Parameter counts are sent as Int16 but read unsigned: a statement may have up to
#: 65,535 parameters (asyncpg checks 32,768 of them), past the signed range.
U16 = Struct("!H")
STATUS = {0x49: "I", 0x54: "T", 0x45: "E"}
Entry = tuple[Any, ...]


def bind_statement_name(chunk: bytes, s: int, e: int) -> bytes:
    """The statement name of a Bind message, as raw bytes, without decoding the rest."""
    i = chunk.find(b"\0", s, e)
    j = chunk.find(b"\0", i + 1, e) if i >= 0 else -1
    if j < 0:
        raise ClientProtocolError("malformed Bind message")
    return chunk[i + 1 : j]


def rewritten_message(t: int, body: bytes, verdict: Allow) -> bytes:
    """The message to forward for an Allow that replaces the SQL text or Bind values."""
    if t == QUERY_MSG and verdict.replace_sql is not None:
        return m.frame(t, verdict.replace_sql.encode() + b"\0")
    if t == PARSE_MSG and verdict.replace_sql is not None:
        name, _, types = m.parse_parse(body)
        return m.Parse(name, verdict.replace_sql, types).encode()
    if t == BIND_MSG and verdict.replace_params is not None:
        portal, stmt, formats, _, result_formats = m.parse_bind(body)
        return m.Bind(
            portal,
            stmt,
            param_formats=formats,
            params=verdict.replace_params,
            result_formats=result_formats,
        ).encode()
    return m.frame(t, body)


def row_count(tag: str) -> int:
    """Rows returned or affected, from a command tag ("SELECT 5", "INSERT 0 5")."""
    i = tag.rfind(" ")
    if i > 0 and tag[i + 1 :].isdigit():
        return int(tag[i + 1 :])
    return 0


#: CommandComplete body -> (tag, rows). A session repeats a handful of tags
#: ("SELECT 1", "UPDATE 1"); only well-formed ones are kept, and the table is
#: emptied when full, so a server that invents tags costs memory for 1,024 at most.
_TAGS: dict[bytes, tuple[str, int]] = {}
_TAGS_SIZE = 1024


def command_tag(body: bytes) -> tuple[str, int]:
    """The tag of a CommandComplete body and the rows it counts (:func:`row_count`);
    a malformed body raises as :func:`~dbgate.wire.messages.parse_command_complete`
    does. Read once per answered statement, so the answer is remembered."""
    hit = _TAGS.get(body)
    if hit is None:
        tag = m.parse_command_complete(body)
        hit = (tag, row_count(tag))
        if len(_TAGS) >= _TAGS_SIZE:
            _TAGS.clear()
        _TAGS[body] = hit
    return hit


def expand_formats(formats: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Bind's format codes (none = all text, one = all alike, or one each) for n values."""
    if not formats:
        return (0,) * n
    if len(formats) == 1:
        return formats * n
    return formats


def bind_names(body: bytes) -> tuple[str, str]:
    """Portal and statement name of a Bind body, without decoding the values."""
    if body[:2] == b"\0\0":
        return "", ""  # the unnamed portal of the unnamed statement: the common case
    if body[:1] == b"\0":  # the unnamed portal of a prepared statement: the next one
        j = body.find(b"\0", 1)
        if j < 0:
            raise ClientProtocolError("malformed Bind message")
        return "", body[1:j].decode("utf-8", "surrogateescape")
    i = body.find(b"\0")
    j = body.find(b"\0", i + 1) if i >= 0 else -1
    if j < 0:
        raise ClientProtocolError("malformed Bind message")
    return (
        body[:i].decode("utf-8", "surrogateescape"),
        body[i + 1 : j].decode("utf-8", "surrogateescape"),
    )


def field_count(description: bytes | None) -> int:
    return 0 if description is None or len(description) < 2 else I16.unpack_from(description)[0]


def description_formats(body: bytes) -> tuple[int, ...]:
    """The format code of each column of a RowDescription body."""
    n = I16.unpack_from(body)[0]
    pos = 2
    out = []
    for _ in range(n):
        pos = body.index(b"\0", pos) + 1 + 16  # name, table oid, attnum, type, size, mod
        out.append(I16.unpack_from(body, pos)[0])
        pos += 2
    return tuple(out)


def sqlstate_of(body: bytes) -> str:
    """The C field of an ErrorResponse body, walking its (code, string) fields."""
    pos = 0
    n = len(body)
    while pos < n and body[pos]:
        end = body.find(b"\0", pos + 1)
        if end < 0:
            break
        if body[pos] == 0x43:  # 'C'
            return body[pos + 1 : end].decode("ascii", "replace")
        pos = end + 1
    return sqlstate.INTERNAL_ERROR
