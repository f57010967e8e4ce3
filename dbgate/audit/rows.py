"""From an event to the record that is hashed and stored.

:class:`RowBuilder` runs in the writer's task, off the relay's hot path. For each
event it fills the values of :data:`dbgate.audit.canonical.FIELDS` and makes them
safe to store, in this order:

1. coerce: a value of the wrong type is recorded as text, or dropped with a note in
   ``details.coerced`` (an integer out of range): a caller's bug never stops the
   writer or loses the record;
2. hash raw parameters (``bytes``) with a keyed hash (BLAKE2b in its MAC mode, a
   third of HMAC-SHA256's cost here), so equal values can be matched across records
   without being readable;
3. scrub free text (:mod:`dbgate.audit.scrub`); a statement's texts repeat (one
   shape, one application name), so the scrubbed form of short texts is remembered;
4. truncate: the statement to ``max_statement_chars`` (``statement_length`` keeps
   the original length), other text to ``max_text_chars`` — after scrubbing, which
   reads :data:`SCRUB_MARGIN` characters past the cut, so a value across it is
   replaced whole;
5. escape, when any text of the record cannot be stored as is (:mod:`dbgate.audit.text`).

The chain fields (``chain``, ``seq``, ``logged_at``) are left for the writer, which
assigns them in the order it writes.
"""

from __future__ import annotations

from hashlib import blake2b, sha256
from operator import attrgetter
from typing import Any

from dbgate.audit import binary
from dbgate.audit.canonical import (
    AT,
    CHAIN,
    DETAILS,
    ESCAPED,
    FIELDS,
    FORMAT,
    INDEX,
    LAYOUT,
    LOGGED_AT,
    SCRUBBED,
    SEQ,
    FieldType,
    Template,
    array_json,
)
from dbgate.audit.coerce import INT64, at_slow, int_value, names, text_slow, text_value
from dbgate.audit.events import (
    ApprovalEvent,
    DetokenizeEvent,
    ReloadEvent,
    SessionEvent,
    StatementEvent,
    WriterEvent,
)
from dbgate.audit.scrub import scrub
from dbgate.audit.sealing import dump_details, seal
from dbgate.audit.text import from_bytes, truncate
from dbgate.audit.times import MAX_US, MIN_US, iso, to_us

try:  # the compiled quick path of a statement of a known shape (setup.py)
    from dbgate.audit import _seal
except ImportError:  # pragma: no cover - depends on the build
    _seal = None  # type: ignore[assignment]

#: A text cut to its limit is scrubbed this far past the cut first: longer than any
#: value the scrubber finds, so a value across the cut is replaced whole.
SCRUB_MARGIN = 512
#: Texts up to this long have their scrubbed form remembered, up to this many.
_CLEAN_MAX_CHARS = 4096
_CLEAN_ENTRIES = 4096

#: Text fields a caller could fill with data values; the scrubber reads these.
SCRUBBED_FIELDS = frozenset(
    {"statement", "params", "reason", "purpose", "model", "application_name", "details"}
)
_TEXT_FIELDS = tuple(name for name, kind in FIELDS if kind is FieldType.TEXT)
_ARRAY_FIELDS = tuple(name for name, kind in FIELDS if kind is FieldType.ARRAY)
_INT_FIELDS = tuple(name for name, kind in FIELDS if kind is FieldType.INT)


class RowBuilder:
    """Turns events into value lists in :data:`FIELDS` order (chain fields empty).

    Statements, by far the most frequent events, take a straight-line path; the
    other kinds go through a mapping of field names. Escaping is decided later, by
    :func:`seal`, from the canonical text (nearly every record needs none).
    """

    def __init__(
        self,
        replica: str,
        param_key: bytes,
        max_statement_chars: int = 262_144,
        max_text_chars: int = 8_192,
    ) -> None:
        self.replica = replica
        # blake2b's keyed mode (a MAC in one pass) takes keys up to 64 bytes
        self._key = param_key if len(param_key) <= 64 else sha256(param_key).digest()
        self._mac = blake2b(key=self._key, digest_size=16)  # copied for each value
        self._clean: dict[str, tuple[str, int]] = {}
        self._shapes: dict[tuple[Any, ...], _StatementShape] = {}
        self._chain = ""  # the chain the shapes' templates and blocks were made for
        self.max_statement_chars = max_statement_chars
        self.max_text_chars = max_text_chars

    def sealed(
        self, event: object, now_us: int, chain: str, seq: int, logged_us: int, prev: bytes
    ) -> tuple[list[Any], bytes, bytes]:
        """The record of ``event`` as record ``seq`` of ``chain``, logged at
        ``logged_us``, after the record whose hash is ``prev``: its values, its hash
        and its binary COPY row (:mod:`dbgate.audit.binary`).

        :meth:`build`, :func:`seal` and :func:`binary.encode` in one pass. A statement
        of a shape seen before (:class:`_StatementShape`) is made from that shape's
        values, canonical template and row blocks, so only what differs from one
        execution to the next is worked out; anything unusual in it takes the full
        path, which gives the same record.
        """
        if event.__class__ is not StatementEvent:
            values = self.build(event, now_us)
        else:
            if chain is not self._chain:
                if chain != self._chain:  # templates and blocks hold the chain's name
                    self._shapes.clear()
                self._chain = chain
            try:
                key: tuple[Any, ...] | None = _shape_key(event)
                shape = self._shapes.get(key)  # type: ignore[arg-type]
            except TypeError:  # a caller's unhashable value: nothing to remember
                key, shape = None, None
            if shape is not None and shape.native:
                sealed = _seal.seal(shape.native, event, prev, seq, logged_us)  # type: ignore[union-attr]
                if sealed is not None:
                    return sealed  # type: ignore[no-any-return]
                varied = None  # the compiled path gives up exactly where _varying does
            else:
                varied = None if shape is None else self._varying(event, shape.values)  # type: ignore[arg-type]
            if varied is not None:
                values, params_json, params_field = varied
                values[CHAIN] = chain
                values[SEQ] = seq
                values[LOGGED_AT] = logged_us
                template = shape.template  # type: ignore[union-attr]
                if template is None:
                    template = shape.template = Template(values, _RENDERED, _PARAMS)  # type: ignore[union-attr]
                text = template.render(values, params_json)
                if "\\u0000" not in text:  # else it is escaped below (see seal)
                    try:
                        data = text.encode()
                    except UnicodeError:
                        pass
                    else:
                        h = sha256(prev + sha256(data).digest()).digest()
                        blocks = shape.blocks  # type: ignore[union-attr]
                        if blocks is None:
                            blocks = shape.blocks = binary.Blocks(values, _RENDERED, _PARAMS)  # type: ignore[union-attr]
                            shape.native = self._native(shape, chain)  # type: ignore[union-attr]
                        return values, h, blocks.encode(values, prev, h, params_field)
            values = self._statement(event, now_us)  # type: ignore[arg-type]
            if key is not None and shape is None:
                self._learn(key, event, values)  # type: ignore[arg-type]
        values[CHAIN] = chain
        values[SEQ] = seq
        values[LOGGED_AT] = logged_us
        h = seal(values, prev)
        return values, h, binary.encode(values, prev, h)

    def chain_run(
        self,
        queue: Any,
        limit: int,
        chain: str,
        seq: int,
        logged_us: int,
        prev: bytes,
        rec_type: Any,
        pending: list[Any],
    ) -> None:
        """Chain a run of queued statements of known shapes in one compiled loop
        (:func:`dbgate.audit._seal.chain_run`): from the head of ``queue`` (a deque of
        the writer's items), each ordinary statement whose shape has its compiled form
        becomes ``rec_type(values, prev, hash, row, None, size)`` appended to
        ``pending``, as record ``seq``, ``seq + 1``, ... of ``chain``, logged at
        ``logged_us``, after the record whose hash is ``prev`` — the records
        :meth:`sealed` gives, without a turn of Python per record. It stops at the first
        item it cannot chain so (left in the queue for :meth:`sealed`) or after
        ``limit``; the caller counts what it chained in ``pending``."""
        if _seal is None:
            return
        if chain is not self._chain:
            if chain != self._chain:
                self._shapes.clear()
            self._chain = chain
        _seal.chain_run(
            self._shapes,
            _shape_key,
            StatementEvent,
            queue,
            limit,
            prev,
            seq,
            logged_us,
            rec_type,
            pending,
        )

    def _native(self, shape: _StatementShape, chain: str) -> tuple[Any, ...] | None:
        """The shape as the compiled quick path (:mod:`dbgate.audit._seal`) takes it;
        None without it, when the shape's text does not encode, or under an empty
        parameter key (the compiled BLAKE2b always hashes a key block; hashlib's has
        none for an empty key, and no writer uses one: it draws a random key)."""
        if _seal is None or shape.template is None or shape.blocks is None or not self._key:
            return None
        try:
            fragments = tuple(f.encode() for f in shape.template.fragments)
        except UnicodeError:
            return None
        return (
            shape.values,
            fragments,
            shape.blocks.blocks,
            _NATIVE_TEXT_ORDER,
            _NATIVE_ROW_ORDER,
            self._key,
            self.max_text_chars,
            chain,
        )

    def _learn(self, key: tuple[Any, ...], e: StatementEvent, values: list[Any]) -> None:
        """Remember the shape of a statement built in full, when the fields that vary
        from one execution to the next take the quick path in it too."""
        if (
            values[DETAILS] is not None  # something was coerced: not worth a shape
            or len(values[_STATEMENT] or "") > _CLEAN_MAX_CHARS
            or self._varying(e, values) is None
        ):
            return
        shape = values.copy()
        for i in _VARYING:
            shape[i] = None
        if len(self._shapes) >= _SHAPES:
            self._shapes.clear()
        self._shapes[key] = _StatementShape(shape)

    def _varying(self, e: StatementEvent, shape: list[Any]) -> tuple[list[Any], str, bytes] | None:
        """``shape`` with the fields of ``e`` that vary from one execution to the next
        (chain fields left to the caller), and its parameters' canonical text and
        COPY field; None when one of them (or a field whose type its shape's key
        cannot tell apart) needs the full path."""
        at = e.at
        if at.__class__ is not float or not _MIN_S < at < _MAX_S:
            return None
        sid = e.session_id
        if sid is not None and sid.__class__ is not int:
            return None  # 1, 1.0 and True are one key; only an int is what the shape holds
        t = e.tokenized
        if t is not None and t.__class__ is not bool:
            return None
        outcome = e.outcome
        if outcome.__class__ is not str or len(outcome) > self.max_text_chars:
            return None
        rows = e.rows
        if rows is not None and (rows.__class__ is not int or not -INT64 <= rows <= INT64):
            return None
        duration = e.duration_us
        if duration is not None and (
            duration.__class__ is not int or not -INT64 <= duration <= INT64
        ):
            return None
        hashed: list[str | None] | None = None
        params_json, params_field = "[]", binary.NULL
        params = e.params
        if params:
            if params.__class__ is not tuple:
                return None
            hashed = []
            mac = self._mac
            nulls = False
            for p in params:
                if p is None:
                    hashed.append(None)
                    nulls = True
                elif p.__class__ is bytes:
                    h = mac.copy()
                    h.update(p)
                    hashed.append("h:" + h.hexdigest())
                else:  # masked text is scrubbed: the full path
                    return None
            if nulls:
                params_json = array_json(hashed)
                params_field = binary.field(binary.array_literal(hashed))
            else:  # hashes need no escaping, in JSON or in an array literal
                joined = '","'.join(hashed)  # type: ignore[arg-type]
                params_json = '["' + joined + '"]'
                params_field = binary.field('{"' + joined + '"}')
        values = shape.copy()
        values[AT] = round(at * 1_000_000)
        values[_PARAMS] = hashed
        values[_OUTCOME] = outcome or None
        values[_ROWS] = rows
        values[_DURATION_US] = duration
        return values, params_json, params_field

    def build(self, event: object, now_us: int) -> list[Any]:
        """The record of ``event``; ``now_us`` stands in for a missing or bad ``at``."""
        if event.__class__ is StatementEvent:
            return self._statement(event, now_us)  # type: ignore[arg-type]
        raw: dict[str, Any] = {}
        if isinstance(event, SessionEvent):
            self._session(event, raw)
        elif isinstance(event, ApprovalEvent):
            self._approval(event, raw)
        elif isinstance(event, DetokenizeEvent):
            self._detokenize(event, raw)
        elif isinstance(event, ReloadEvent):
            self._reload(event, raw)
        elif isinstance(event, WriterEvent):
            raw.update(kind="audit", event=event.event, details=event.details)
        else:  # the writer refuses these in record(); kept total for safety
            raw.update(kind="audit", event="unknown_event", reason=type(event).__name__)
        notes: list[str] = []
        at = to_us(getattr(event, "at", None))
        if at is None:
            notes.append("at")
            at = now_us
        return self._finish(raw, at, notes)

    # ------------------------------------------------------------------ statements

    def _statement(self, e: StatementEvent, now_us: int) -> list[Any]:
        lim = self.max_text_chars
        notes: list[str] = []
        v: list[Any] = [None] * len(FIELDS)
        v[_FORMAT] = FORMAT
        v[_KIND] = "statement"
        v[_REPLICA] = self.replica
        at = e.at
        v[AT] = (
            round(at * 1_000_000)
            if at.__class__ is float and _MIN_S < at < _MAX_S
            else at_slow(at, now_us, notes)
        )
        statement = e.statement
        if statement.__class__ is not str:
            statement = text_slow(statement, "statement", notes) or ""
        v[_STATEMENT_LENGTH] = len(statement)
        scrubbed = 0
        if statement:
            statement, scrubbed = self._scrub_cut(statement, self.max_statement_chars)
            v[_STATEMENT] = statement
        for i, name, x in zip(_TEXT_AT, _TEXT_NAMES, _get_text(e), strict=True):
            if not x:
                if x is not None and x.__class__ is not str:
                    v[i] = text_value(x, lim, notes, name)
            elif x.__class__ is str and len(x) <= lim:
                v[i] = x
            else:
                v[i] = text_value(x, lim, notes, name)
        for i, name, x in zip(_FREE_AT, _FREE_NAMES, _get_free_text(e), strict=True):
            if x:
                x = text_value(x, lim + SCRUB_MARGIN, notes, name)
                if x:
                    x, n = self._scrub_cut(x, lim)
                    scrubbed += n
                v[i] = x
        if e.params:
            v[_PARAMS], n = self._array(e.params, "params", notes)
            scrubbed += n
        if e.categories:
            v[_CATEGORIES] = names(e.categories, lim, notes, "categories")
        if e.tables:
            v[_TABLES] = names(e.tables, lim, notes, "tables")
        if e.columns:
            v[_COLUMNS] = names(e.columns, lim, notes, "columns")
        for i, name, x in zip(_INT_AT, _INT_NAMES, _get_ints(e), strict=True):
            if x.__class__ is int and -INT64 <= x <= INT64:
                v[i] = x
            elif x is not None:
                v[i] = int_value(x, name, notes)
        t = e.tokenized
        if t is not None and t.__class__ is not bool:
            notes.append("tokenized")
            t = bool(t)
        v[_TOKENIZED] = t
        if notes:
            details, _ = self._details(None, notes)
            v[DETAILS] = dump_details(details)
        v[SCRUBBED] = scrubbed
        v[ESCAPED] = False
        return v

    def _scrub_cut(self, text: str, limit: int) -> tuple[str, int]:
        """``text`` scrubbed, then cut to ``limit`` characters: scrubbed first, so that a
        value across the cut is found whole (cut first, ``alice@exam`` would stay)."""
        if len(text) <= limit:
            return self._scrub(text)
        clean, n = scrub(text[: limit + SCRUB_MARGIN])
        return clean[:limit], n

    def _scrub(self, text: str) -> tuple[str, int]:
        """:func:`scrub`, remembered for short texts (they repeat from record to record)."""
        if len(text) > _CLEAN_MAX_CHARS:
            return scrub(text)
        hit = self._clean.get(text)
        if hit is None:
            if len(self._clean) >= _CLEAN_ENTRIES:
                self._clean.clear()
            hit = self._clean[text] = scrub(text)
        return hit

    # ------------------------------------------------------------------ other kinds

    def _session(self, e: SessionEvent, raw: dict[str, Any]) -> None:
        raw.update(
            kind="session",
            event=e.event,
            identity=e.identity,
            session_id=e.session_id,
            application_name=e.application_name,
            client_addr=e.client_addr,
            database=e.database,
            outcome=e.outcome,
            reason=e.reason,
            duration_us=e.duration_us,
        )
        if e.statements is not None:
            raw["details"] = {"statements": e.statements}

    def _approval(self, e: ApprovalEvent, raw: dict[str, Any]) -> None:
        raw.update(
            kind="approval",
            event=e.event,
            approval_id=e.approval_id,
            identity=e.identity,
            actor=e.actor,
            reason=e.reason,
            statement=e.statement,
            fingerprint=e.fingerprint,
            categories=e.categories,
            rule=e.rule,
            decision=e.event,
        )
        if e.expires_at is not None:
            us = to_us(e.expires_at)
            raw["details"] = {"expires_at": iso(us) if us is not None else repr(e.expires_at)}

    def _detokenize(self, e: DetokenizeEvent, raw: dict[str, Any]) -> None:
        raw.update(
            kind="detokenize",
            event="detokenize",
            identity=e.identity,
            actor=e.actor,
            columns=e.columns,
            approval_id=e.approval_id,
            reason=e.reason,
            rows=e.tokens,
            details={"tokens": e.tokens},
        )

    def _reload(self, e: ReloadEvent, raw: dict[str, Any]) -> None:
        raw.update(
            kind="reload",
            event=e.what,
            outcome="ok" if e.ok else "failed",
            actor=e.actor,
            reason=e.reason,
            details={"source": e.source, "version": e.version},
        )

    def _finish(self, raw: dict[str, Any], at_us: int, notes: list[str]) -> list[Any]:
        values: list[Any] = [None] * len(FIELDS)
        values[_FORMAT] = FORMAT
        values[AT] = at_us
        values[_REPLICA] = self.replica
        scrubbed = 0
        for name in _TEXT_FIELDS:
            if name in raw:
                value = raw[name]
                if value is not None and value.__class__ is not str:
                    value = text_slow(value, name, notes)
                limit = self.max_text_chars
                if name == "statement" and value is not None:
                    values[_STATEMENT_LENGTH] = len(value)
                    limit = self.max_statement_chars
                if value and name in SCRUBBED_FIELDS:
                    value, n = self._scrub_cut(value, limit)
                    scrubbed += n
                elif value is not None:
                    value = truncate(value, limit)
                values[INDEX[name]] = value or None
        for name in _ARRAY_FIELDS:
            if raw.get(name):
                items, n = self._array(raw[name], name, notes)
                scrubbed += n
                values[INDEX[name]] = items
        for name in _INT_FIELDS:
            if name in raw:
                values[INDEX[name]] = int_value(raw[name], name, notes)
        details = raw.get("details")
        if details is not None or notes:
            details, n = self._details(details, notes)
            scrubbed += n
            values[DETAILS] = dump_details(details)
        values[SCRUBBED] = scrubbed
        values[ESCAPED] = False
        return values

    # ------------------------------------------------------------------ pieces

    def _array(
        self, value: Any, name: str, notes: list[str]
    ) -> tuple[list[str | None] | None, int]:
        if value.__class__ is str or isinstance(value, bytes) or not hasattr(value, "__iter__"):
            notes.append(name)
            value = (value,)
        out: list[str | None] = []
        scrubbed = 0
        limit = self.max_text_chars
        params = name == "params"
        for item in value:
            if item is None:
                out.append(None)
                continue
            if item.__class__ is not str:
                if isinstance(item, bytes | bytearray | memoryview):
                    if params:  # a raw value: keep only a keyed hash of it
                        mac = self._mac.copy()
                        mac.update(item)
                        out.append("h:" + mac.hexdigest())
                        continue
                    item = from_bytes(bytes(item))
                else:
                    notes.append(name)
                    item = str(item)
            if params and item:
                item, n = self._scrub_cut(item, limit)
                scrubbed += n
            elif len(item) > limit:
                item = item[:limit]
            out.append(item)
        return (out or None), scrubbed

    def _details(self, details: Any, notes: list[str]) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        scrubbed = 0
        if isinstance(details, dict):
            for key, value in details.items():
                clean, n = self._detail_value(value)
                out[str(key)] = clean
                scrubbed += n
        elif details is not None:
            notes.append("details")
        if notes:
            out["coerced"] = sorted(set(notes))
        return out, scrubbed

    def _detail_value(self, value: Any) -> tuple[Any, int]:
        if value is None or isinstance(value, bool):
            return value, 0
        if isinstance(value, int):
            return (value if -INT64 - 1 <= value <= INT64 else str(value)), 0
        if isinstance(value, list | tuple):
            items = [self._detail_value(v) for v in value]
            return [v for v, _ in items], sum(n for _, n in items)
        if isinstance(value, bytes):
            value = from_bytes(value)
        text = truncate(value if isinstance(value, str) else str(value), self.max_text_chars)
        return scrub(text)


_FORMAT = INDEX["format"]
_KIND = INDEX["kind"]
_EVENT = INDEX["event"]
_REPLICA = INDEX["replica"]
_STATEMENT = INDEX["statement"]
_STATEMENT_LENGTH = INDEX["statement_length"]
_DECISION = INDEX["decision"]
_IDENTITY = INDEX["identity"]
_CLIENT_ADDR = INDEX["client_addr"]
_DATABASE = INDEX["database"]
_FINGERPRINT = INDEX["fingerprint"]
_RULE = INDEX["rule"]
_APPROVAL_ID = INDEX["approval_id"]
_OUTCOME = INDEX["outcome"]
_APPLICATION_NAME = INDEX["application_name"]
_PURPOSE = INDEX["purpose"]
_MODEL = INDEX["model"]
_REASON = INDEX["reason"]
_PARAMS = INDEX["params"]
_CATEGORIES = INDEX["categories"]
_TABLES = INDEX["tables"]
_COLUMNS = INDEX["columns"]
_SESSION_ID = INDEX["session_id"]
_ROWS = INDEX["rows"]
_DURATION_US = INDEX["duration_us"]
_TOKENIZED = INDEX["tokenized"]
# StatementEvent fields read with one attrgetter call each (a C loop, not bytecode).
_TEXT_NAMES = (
    "event",
    "decision",
    "identity",
    "client_addr",
    "database",
    "fingerprint",
    "rule",
    "approval_id",
    "outcome",
)
_FREE_NAMES = ("application_name", "purpose", "model", "reason")  # scrubbed
_INT_NAMES = ("session_id", "rows", "duration_us")
_TEXT_AT = tuple(INDEX[n] for n in _TEXT_NAMES)
_FREE_AT = tuple(INDEX[n] for n in _FREE_NAMES)
_INT_AT = tuple(INDEX[n] for n in _INT_NAMES)
_get_text = attrgetter(*_TEXT_NAMES)
_get_free_text = attrgetter(*_FREE_NAMES)
_get_ints = attrgetter(*_INT_NAMES)
_MIN_S = MIN_US / 1_000_000
_MAX_S = MAX_US / 1_000_000
#: What tells one statement shape from another (see _StatementShape).
_SHAPE_NAMES = (
    "event",
    "statement",
    "decision",
    "identity",
    "session_id",
    "application_name",
    "client_addr",
    "database",
    "purpose",
    "model",
    "fingerprint",
    "categories",
    "tables",
    "columns",
    "rule",
    "approval_id",
    "reason",
    "tokenized",
)
_shape_key = attrgetter(*_SHAPE_NAMES)
#: ... and the fields in which its records differ (the chain fields among them); a
#: builder writes one chain, so its name is rendered into templates and blocks.
_VARYING = (CHAIN, SEQ, LOGGED_AT, AT, _PARAMS, _OUTCOME, _ROWS, _DURATION_US)
_RENDERED = tuple(i for i in _VARYING if i != CHAIN)
_SHAPES = 1024  # shapes remembered (each a few KB at most)


#: The compiled quick path's codes of the varying fields, in the order they come in
#: the canonical text and in the row (see dbgate/audit/_seal.c).
_NATIVE_CODES = {SEQ: 0, LOGGED_AT: 1, AT: 2, _ROWS: 3, _DURATION_US: 4, _OUTCOME: 5, _PARAMS: 6}
_NATIVE_TEXT_ORDER = tuple(
    _NATIVE_CODES[x] for x in LAYOUT if isinstance(x, int) and x in _RENDERED
)
_NATIVE_ROW_ORDER = tuple(_NATIVE_CODES[i] for i in sorted(_RENDERED))
if _seal is not None:
    _seal.configure(
        _MIN_S, _MAX_S, CHAIN, tuple(sorted(_NATIVE_CODES, key=_NATIVE_CODES.__getitem__))
    )
    # the same tuple as the attrgetter's, read from the event's slots (a third of its cost)
    _seal.configure_key(_SHAPE_NAMES)
    _shape_key = _seal.shape_key


class _StatementShape:
    """What the records of one statement shape share: one text, session, decision and
    rule, executed again and again (a driver's prepared statement, a loop of reads).
    Its values are those of a record built in full, the varying fields left empty;
    its canonical template and its row's blocks are made from its first record
    (:class:`Template`, :class:`binary.Blocks`), and from them its form for the
    compiled quick path (``native``)."""

    __slots__ = ("blocks", "native", "template", "values")

    def __init__(self, values: list[Any]) -> None:
        self.values = values
        self.template: Template | None = None
        self.blocks: binary.Blocks | None = None
        self.native: tuple[Any, ...] | None = None
