"""Framing of PostgreSQL protocol messages, both ways (sans-IO): the one framer.

Every length word dbgate reads is checked here, and every message it builds is
wrapped by :func:`frame`. Three readers, for three ways of reading:

* :class:`FrameReader`: the relay's stream of typed messages, many per read;
* :class:`HandshakeReader`: startup and authentication, one packet at a time, of
  whatever kind the exchange expects next (untyped startup packet, typed message,
  the single byte that answers SSLRequest);
* :class:`StartupReader`: untyped startup packets only.

:class:`FrameReader` is the proxy's hot path: every byte of every session passes through
:meth:`FrameReader.feed`. It is written for few allocations per read:

* when the previous read left no partial message (the common case) the incoming
  ``bytes`` object is used as is, with no copy;
* complete messages are returned as ``(type, body_start, body_end)`` offsets into
  one ``chunk``; the caller forwards ``chunk`` with a single write unless it needs
  to rewrite something, and decodes only the message types it cares about;
* a type the mask *folds* (:func:`type_mask`'s ``runs``) comes as one frame per run
  of consecutive messages, ``(RUN | type, body_start of the first, body_end of the
  last)``: a result whose rows are rewritten or counted costs one frame per read,
  not one per row (``chunk[body_start - 5 : body_end]`` is the run, framed).

Typed messages (everything after startup) are ``type:u8, length:u32 (includes
itself), body``. Startup-phase packets have no type byte: ``length:u32, body``.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

from dbgate.wire.errors import LimitExceeded, ProtocolError

_U32 = Struct("!I")
_unpack_u32 = _U32.unpack_from
_pack_u32 = _U32.pack

Frame = tuple[int, int, int]  # (message type byte, body start, body end) within the chunk

#: Added to the type of a folded run's frame (see :func:`type_mask`).
RUN = 0x100
#: The frame of a run of DataRows, when the mask folds them.
DATA_ROW_RUN = RUN | ord("D")

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_PACKET = 10_000  # the server's own limit for startup packets
#: A partial message longer than this is streamed or collected, not re-joined per read.
LARGE_MESSAGE = 64 * 1024
_NO_LIMIT = 0xFFFFFFFF


class FrameReader:
    """Split a byte stream of typed messages into whole messages (see the module).

    Messages longer than ``large`` that one read does not bring whole take one of
    two roads, so that the cost of a 60 MB message is linear in its size:

    * *streamed*: a message the caller did not select (a DataRow nobody rewrites, a
      client's CopyData) is returned piece by piece as it arrives, never held. Its
      first piece ends a chunk that holds no selected frame (the caller may change
      its mask after looking at those frames, see :meth:`feed_select`); the pieces
      that follow start the next chunks, before their frames;
    * *collected*: a selected message (a statement to inspect, a row to rewrite) is
      copied, read by read, into one ``bytes`` of its size, allocated when it starts
      (:class:`Collector`), and handed on when the last piece is here: it is held
      once, never as its reads and their join at the same time, and the reads'
      buffers are freed (and reused) as they come. ``on_collect(total_size)`` is
      called when a collection starts, ``on_collect(0)`` when it ends (complete,
      taken or reset): the relay holds that much memory for the session meanwhile,
      and asks its budget for it.

    Shorter partial messages are kept as one ``bytes`` and joined with the next
    read (a copy of at most ``large`` bytes), except in two cases where the read is
    relayed as it came and the message's rest streams at the start of the next chunk:

    * on the server's side (``limit_streamed`` false), a read that selected nothing
      and ends in an unselected message of any length (rows nobody counts or
      rewrites);
    * a *split run*: the read is one folded run (:func:`type_mask`'s ``runs``) that
      ends in the middle of a message of the run, and ``run_room()`` (set by the
      caller: how many more messages of the run it passes unchanged) covers every
      message the run started. The run's frame then ends at the chunk's end
      (:func:`count_messages` with ``split_last`` counts the partial message).

    A result of a million rows under a row limit it does not reach is thus relayed
    without copying each read twice (the join and the cut).

    ``max_size`` limits every message when ``limit_streamed`` (a client: dbgate will
    not relay a message above its limit, even in pieces); otherwise only those that
    must be held whole (the server's: a 200 MB value passes through unless a result
    plan needs the row whole).
    """

    __slots__ = (
        "_have",
        "_need",
        "_parts",
        "_pending",
        "_scan_limit",
        "_streams_short",
        "large",
        "max_size",
        "on_collect",
        "run_room",
        "streaming",
    )

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        large: int = LARGE_MESSAGE,
        limit_streamed: bool = True,
        on_collect: Callable[[int], None] | None = None,
    ) -> None:
        self._pending = b""
        self._parts: Collector | None = None
        self._have = 0
        self._need = 0
        self.max_size = max_size
        self._scan_limit = max_size if limit_streamed else _NO_LIMIT
        self._streams_short = not limit_streamed
        self.large = large
        self.on_collect = on_collect
        #: Bytes of a streamed message still to come (passed on as they arrive).
        self.streaming = 0
        #: How many more messages of a folded run the caller passes unchanged (see the
        #: class); None: runs are never split.
        self.run_room: Callable[[], int] | None = None

    @property
    def pending(self) -> int:
        """Bytes held back because they are the start of an incomplete message."""
        return self._have if self._parts is not None else len(self._pending)

    def take_pending(self) -> bytes:
        """Remove and return the held-back partial message (used when the caller must
        re-queue the rest of a read in order, e.g. while a statement waits)."""
        if self._parts is not None:
            rest = self._parts.take()
            self._end_collection()
            return rest
        rest, self._pending = self._pending, b""
        return rest

    def reset(self) -> None:
        """Drop everything held (the session ended): memory is released now, not at
        the next garbage collection of whatever still refers to this reader."""
        if self._parts is not None:
            self._end_collection()
        self._pending = b""
        self.streaming = 0

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add ``data``; return ``(chunk, frames)`` for every complete message.

        ``chunk`` contains exactly the complete messages (possibly ``b""``); any
        trailing partial message is kept for the next call.

        Raises :class:`ProtocolError` on a length below 4, :class:`LimitExceeded`
        on one above ``max_size``.
        """
        return self.feed_select(data, ALL_TYPES)

    def feed_select(self, data: bytes, mask: bytes) -> tuple[bytes, list[Frame]]:
        """Like :meth:`feed`, but return frames only for the types in ``mask``, and
        stream the long messages it does not select (see the class).

        The relay's fast path asks only for the few types it tracks (ReadyForQuery,
        ParameterStatus, ErrorResponse), so a stream of DataRows costs no Python
        object per row. ``chunk`` may begin with the rest of a streamed message and
        end with the start of one; every frame in it is whole, and nothing follows a
        selected frame but whole messages.
        """
        start = 0
        if self.streaming:
            n = len(data)
            if n <= self.streaming:
                self.streaming -= n
                return data, []
            start, self.streaming = self.streaming, 0
            buf = data
        elif self._parts is not None:
            self._have = self._parts.add(data)
            if self._have < self._need:
                return b"", []
            buf = self._parts.take()
            self._end_collection()
        elif self._pending:
            buf = self._pending + data
            self._pending = b""
        else:
            buf = data
        if _c_scan is not None:  # inlined _select: this runs once per read of the relay
            try:
                end, frames = _c_scan(buf, start, self._scan_limit, mask)
            except ValueError:
                end, frames = _select(buf, start, self._scan_limit, mask)  # the length error
        else:
            end, frames = _py_scan(buf, start, self._scan_limit, mask)
        if end == len(buf):
            return buf, frames
        return self._tail(buf, end, frames, mask)

    def _tail(
        self, buf: bytes, end: int, frames: list[Frame], mask: bytes
    ) -> tuple[bytes, list[Frame]]:
        """``buf[end:]`` starts a message that is not complete: stream, collect or keep."""
        have = len(buf) - end
        if have >= 5:
            t = buf[end]
            length = _unpack_u32(buf, end + 1)[0]
            if mask[t] == 2 and self._splits(buf, end, length, frames):
                self.streaming = length + 1 - have
                frames[0] = (RUN | t, frames[0][1], len(buf))
                return buf, frames
            if length + 1 > self.large and mask[t]:
                if length > self.max_size:
                    raise _bad_length(t, length, self.max_size)
                self._parts = Collector(length + 1)
                self._parts.add(memoryview(buf)[end:])
                self._have, self._need = have, length + 1
                if self.on_collect is not None:
                    self.on_collect(length + 1)
                return buf[:end], frames
            if not (frames or mask[t]) and (length + 1 > self.large or self._streams_short):
                self.streaming = length + 1 - have
                return buf, frames
        self._pending = buf[end:]
        return buf[:end], frames

    def _splits(self, buf: bytes, end: int, length: int, frames: list[Frame]) -> bool:
        """Whether the run that ``buf[end:]`` continues is split there (see the class):
        the read is that one run, the message is within the limits, and the caller
        passes every message of the run, the partial one too, unchanged."""
        room = self.run_room
        if room is None or len(frames) != 1:
            return False
        kind, body_start, run_end = frames[0]
        if kind != RUN | buf[end] or run_end != end or length < 4 or length >= self._scan_limit:
            return False
        left = room()
        if left <= 0:
            return False
        start = body_start - 5
        # every message is at least 5 bytes: the cheap bound first, the count if needed
        return (end - start) // 5 < left or count_messages(buf, start, end) < left

    def _end_collection(self) -> None:
        self._parts = None
        self._have = self._need = 0
        if self.on_collect is not None:
            self.on_collect(0)


def type_mask(types: str | bytes, runs: str | bytes = b"", base: bytes | None = None) -> bytes:
    """A 256-byte mask selecting message types for :meth:`FrameReader.feed_select`.

    Types in ``types`` get a frame each; types in ``runs`` one frame per run of
    consecutive messages of that type (type ``RUN | t``). ``base``: start from that
    mask instead of an empty one.
    """
    mask = bytearray(base if base is not None else bytes(256))
    for t in types.encode() if isinstance(types, str) else types:
        mask[t] = 1
    for t in runs.encode() if isinstance(runs, str) else runs:
        mask[t] = 2
    return bytes(mask)


class _PyCollector:
    """:class:`Collector` without the compiled module: the reads, joined at the end
    (the message is held twice while it is joined)."""

    __slots__ = ("_have", "_parts")

    def __init__(self, size: int) -> None:
        self._parts: list[bytes] | None = []
        self._have = 0

    def add(self, data: bytes | memoryview) -> int:
        if self._parts is None:
            raise ValueError("the collector was taken")
        self._parts.append(bytes(data))
        self._have += len(data)
        return self._have

    def take(self) -> bytes:
        if self._parts is None:
            raise ValueError("the collector was taken")
        out = b"".join(self._parts)
        self._parts = None
        self._have = 0
        return out

    def __len__(self) -> int:
        return self._have


try:  # the compiled scanner (dbgate/wire/_scan.c); optional, same semantics
    from dbgate.wire._scan import Collector
    from dbgate.wire._scan import count as _c_count
    from dbgate.wire._scan import scan as _c_scan
    from dbgate.wire._scan import skip as _c_skip
except ImportError:  # pragma: no cover - exercised when no compiler was available
    _c_scan = _c_count = _c_skip = None
    Collector = _PyCollector


def _py_scan(buf: bytes, start: int, max_size: int, mask: bytes) -> tuple[int, list[Frame]]:
    n = len(buf)
    pos = start
    frames: list[Frame] = []
    run_type = -1  # the folded type whose run is open
    run_start = run_end = 0
    while n - pos >= 5:
        length = _unpack_u32(buf, pos + 1)[0]
        if length < 4 or length > max_size:
            raise _bad_length(buf[pos], length, max_size)
        end = pos + 1 + length
        if end > n:
            break
        t = buf[pos]
        if run_type >= 0 and t != run_type:
            frames.append((RUN | run_type, run_start, run_end))
            run_type = -1
        selected = mask[t]
        if selected == 2:
            if run_type < 0:
                run_type, run_start = t, pos + 5
            run_end = end
        elif selected:
            frames.append((t, pos + 5, end))
        pos = end
    if run_type >= 0:
        frames.append((RUN | run_type, run_start, run_end))
    return pos, frames


def count_messages(buf: bytes, start: int, end: int, split_last: bool = False) -> int:
    """How many messages ``buf[start:end]`` holds; it must hold complete ones only
    (a folded run does), except that with ``split_last`` the last one may start
    there and run past ``end`` (a run :class:`FrameReader` split, see ``run_room``).
    ValueError otherwise."""
    if _c_count is not None:
        return _c_count(buf, start, end, split_last)  # type: ignore[no-any-return]
    if start < 0 or end > len(buf) or start > end:
        raise ValueError("start and end must lie within the buffer")
    n = 0
    pos = start
    while end - pos >= 5:
        length = _unpack_u32(buf, pos + 1)[0]
        if length < 4:
            break
        if length > end - pos - 1:
            if split_last:
                pos = end
                n += 1
            break
        pos += 1 + length
        n += 1
    if pos != end:
        raise ValueError("incomplete message in a run of messages")
    return n


def skip_messages(buf: bytes, start: int, n: int) -> int:
    """The offset just past the ``n`` messages that start at ``start``. ValueError
    when fewer than ``n`` complete messages are there."""
    if _c_skip is not None:
        return _c_skip(buf, start, n)  # type: ignore[no-any-return]
    if start < 0 or start > len(buf) or n < 0:
        raise ValueError("start must lie within the buffer, n >= 0")
    size = len(buf)
    pos = start
    for _ in range(n):
        if size - pos < 5:
            raise ValueError("fewer complete messages than asked to skip")
        length = _unpack_u32(buf, pos + 1)[0]
        if length < 4 or length > size - pos - 1:
            raise ValueError("fewer complete messages than asked to skip")
        pos += 1 + length
    return pos


def _select(buf: bytes, start: int, max_size: int, mask: bytes) -> tuple[int, list[Frame]]:
    if _c_scan is None:
        return _py_scan(buf, start, max_size, mask)
    try:
        return _c_scan(buf, start, max_size, mask)
    except ValueError as e:
        _, _pos, mtype, length = str(e).split()
        raise _bad_length(int(mtype), int(length), max_size) from None


ALL_TYPES = bytes([1]) * 256
#: Every type, DataRows folded into runs: what the relay reads while rows are rewritten.
ALL_TYPES_ROW_RUNS = type_mask("", runs="D", base=ALL_TYPES)


def split_frames(
    buf: bytes, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, mask: bytes = ALL_TYPES
) -> list[Frame]:
    """All frames of ``buf`` (as ``mask`` selects and folds them), which must hold
    complete messages only."""
    end, frames = _select(buf, 0, max_size, mask)
    if end != len(buf):
        raise ProtocolError("incomplete message where complete messages were expected")
    return frames


class StartupReader:
    """Frame the untyped packets of the startup phase (StartupMessage, SSLRequest, ...)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes | None:
        """Add ``data``; return the body of one complete packet, or None if incomplete.

        Call :meth:`take_rest` after a packet to get bytes that followed it (a client
        may pipeline the next message, e.g. a TLS ClientHello after SSLRequest).
        """
        self._pending += data
        if len(self._pending) < 4:
            return None
        length = _startup_length(self._pending)
        if len(self._pending) < length:
            return None
        body = self._pending[4:length]
        self._pending = self._pending[length:]
        return body

    def take_rest(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


class HandshakeReader:
    """Bytes received before the relay starts, taken one packet at a time.

    Startup and authentication are exchanges: read one packet, answer, read the next,
    and what the next one is (an untyped startup packet, a typed message, one byte)
    depends on the exchange. Each ``next_*`` method returns ``None`` until the whole
    packet is here, and checks its length word as soon as that has arrived, with the
    same rules as :class:`FrameReader` and :class:`StartupReader`.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_startup_packet(self) -> bytes | None:
        """The body (after the length word) of the next untyped startup-phase packet."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = _startup_length(buf)
        if len(buf) < length:
            return None
        body = bytes(buf[4:length])
        del buf[:length]
        return body

    def next_message(self) -> tuple[int, bytes] | None:
        """``(type byte, body)`` of the next typed message."""
        buf = self._buf
        if len(buf) < 5:
            return None
        length = _unpack_u32(buf, 1)[0]
        if length < 4 or length > self.max_size:
            raise _bad_length(buf[0], length, self.max_size)
        if len(buf) < 1 + length:
            return None
        message = (buf[0], bytes(buf[5 : 1 + length]))
        del buf[: 1 + length]
        return message

    def next_byte(self) -> bytes | None:
        """One raw byte: a server's 'S' or 'N' answer to SSLRequest."""
        if not self._buf:
            return None
        answer = bytes(self._buf[:1])
        del self._buf[:1]
        return answer

    def take_all(self) -> bytes:
        """Everything received and not taken yet (handed to the relay, in order)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


_TYPE_BYTES = [bytes((i,)) for i in range(256)]


def frame(type_byte: int, body: bytes) -> bytes:
    """A complete message of type ``type_byte`` around an already encoded ``body``.

    Every message dbgate builds goes through here, so the length word is computed in
    one place.
    """
    return _TYPE_BYTES[type_byte] + _pack_u32(len(body) + 4) + body


def _startup_length(buf: bytes | bytearray) -> int:
    """The length word of the startup packet at the start of ``buf``, checked."""
    length = _unpack_u32(buf, 0)[0]
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolError(f"invalid startup packet length {length}")
    return length


def _bad_length(mtype: int, length: int, max_size: int) -> ProtocolError | LimitExceeded:
    shown = chr(mtype) if 32 <= mtype < 127 else f"0x{mtype:02x}"
    if length < 4:
        return ProtocolError(f"invalid message length {length} for message type {shown!r}")
    return LimitExceeded(
        f"message of type {shown!r} is {length} bytes, over the limit of {max_size}"
    )
