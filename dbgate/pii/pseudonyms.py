"""Type-preserving replacements for PII values, in text and binary wire formats.

The RowDescription the client already received says ``date`` or ``inet`` or
``text[]``; the replacement must decode as that type in every driver (asyncpg and
psycopg 3 binary cursors, psycopg2, pg8000, psql). So:

* string types (text, varchar, char(n), name, citext, xml, unknown types in text
  format) get the token itself: ``tok_email_r…``; an ltree (lquery, ltxtquery) too, a
  one-label path (in binary after its version byte);
* an hstore gets one pair, ``"pii"=>"tok_…"``, the whole value's token; an enum one
  of its type's labels; a cube a one-dimensional point, a pgvector ``vector`` one
  element;
* json/jsonb/jsonpath get the token as a JSON string: ``"tok_email_r…"``;
* bytea gets the token's bytes (``\\x…`` hex in text format);
* numbers, dates, times, timestamps, intervals, booleans, uuids, inet/cidr and MAC
  addresses get a *pseudonym*: a value of the same type drawn from keyed pseudo-random
  bytes of the original (dates between 1920 and 2009, timestamps between 1970 and 2030,
  IPv4 in 10/8, IPv6 in fd00::/8, locally administered MACs). The same value always gets
  the same pseudonym; they are not reversible (there is no room for ≥ 96 bits in a date);
* arrays and composite values (whole-row references like ``SELECT c FROM customers c``)
  keep their structure and every element or field is replaced by the rule for its type;
* ranges and multiranges (the database's own too) become one range of pseudonyms;
* anything else (extension types dbgate has no rule for) gets the token's bytes: a
  driver that cannot decode that is an error on the client, never a leak. docs/pii.md
  lists these conversions.

Canonical input: a date's pseudonym is computed from its ISO text even when it arrived
in binary, and an integer's from its decimal text, so text and binary clients see the
same pseudonym. Other non-string types are keyed by their wire bytes and format.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from datetime import date, timedelta

from dbgate.pii.schema import SchemaSnapshot
from dbgate.pii.text_arrays import map_elements
from dbgate.pii.tokens import FreshTokens, Tokenizer

__all__ = ["BUILTIN_ARRAYS", "Pseudonymizer", "TypeRegistry"]

TEXT, JSON, JSONB, JSONPATH, BYTEA = "text", "json", "jsonb", "jsonpath", "bytea"
INT2, INT4, INT8, OID, FLOAT4, FLOAT8, NUMERIC, MONEY = (
    "int2",
    "int4",
    "int8",
    "oid",
    "float4",
    "float8",
    "numeric",
    "money",
)
BOOL, DATE, TIME, TIMETZ, TIMESTAMP, TIMESTAMPTZ, INTERVAL = (
    "bool",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
)
UUID, INET, CIDR, MACADDR, MACADDR8 = "uuid", "inet", "cidr", "macaddr", "macaddr8"
BITS = "bits"  # bit(n), bit varying
#: geometric types: point, lseg, box, line, circle, path, polygon
POINT, LSEG, BOX, LINE, CIRCLE, PATH, POLYGON = (
    "point",
    "lseg",
    "box",
    "line",
    "circle",
    "path",
    "polygon",
)
#: how many bits a bit string's pseudonym has: its length may be what an expression of
#: PII chose (``convert_to(email, 'UTF8')::text::bit varying`` is as long as the text)
_BITS = 64
ARRAY, RECORD, OPAQUE = "array", "record", "opaque"
#: extension types, known by their type's name (``EXTENSION_KINDS``), and enums
HSTORE, LTREE, CUBE, VECTOR, ENUM = "hstore", "ltree", "cube", "vector", "enum"
#: extension type name -> kind: citext is text (its binary format is text's), the
#: ltree family a version byte and then text
EXTENSION_KINDS: dict[str, str] = {
    "citext": TEXT,
    "hstore": HSTORE,
    "ltree": LTREE,
    "lquery": LTREE,
    "ltxtquery": LTREE,
    "cube": CUBE,
    "vector": VECTOR,
}
#: a cube's header: its dimensions, and this bit when it is a point
_CUBE_POINT = 0x80000000
RANGE, MULTIRANGE = "range", "multirange"
#: built-in range type -> its subtype (int4range, numrange, tsrange, tstzrange,
#: daterange, int8range)
BUILTIN_RANGES: dict[int, int] = {
    3904: 23,
    3906: 1700,
    3908: 1114,
    3910: 1184,
    3912: 1082,
    3926: 20,
}
#: built-in multirange type -> its range type
BUILTIN_MULTIRANGES: dict[int, int] = {
    4451: 3904,
    4532: 3906,
    4533: 3908,
    4534: 3910,
    4535: 3912,
    4536: 3926,
}

BUILTIN_KINDS: dict[int, str] = {
    25: TEXT,
    1043: TEXT,
    1042: TEXT,
    19: TEXT,
    18: TEXT,
    705: TEXT,
    142: TEXT,
    114: JSON,
    3802: JSONB,
    4072: JSONPATH,
    17: BYTEA,
    21: INT2,
    23: INT4,
    20: INT8,
    26: OID,
    700: FLOAT4,
    701: FLOAT8,
    1700: NUMERIC,
    790: MONEY,
    16: BOOL,
    1082: DATE,
    1083: TIME,
    1266: TIMETZ,
    1114: TIMESTAMP,
    1184: TIMESTAMPTZ,
    1186: INTERVAL,
    2950: UUID,
    869: INET,
    650: CIDR,
    829: MACADDR,
    774: MACADDR8,
    2249: RECORD,
    1560: BITS,
    1562: BITS,
    600: POINT,
    601: LSEG,
    603: BOX,
    628: LINE,
    718: CIRCLE,
    602: PATH,
    604: POLYGON,
}
#: array type -> element type, for the built-in types above
BUILTIN_ARRAYS: dict[int, int] = {
    1009: 25,
    1015: 1043,
    1014: 1042,
    1003: 19,
    1002: 18,
    143: 142,
    199: 114,
    3807: 3802,
    4073: 4072,
    1001: 17,
    1005: 21,
    1007: 23,
    1016: 20,
    1028: 26,
    1021: 700,
    1022: 701,
    1231: 1700,
    791: 790,
    1000: 16,
    1561: 1560,
    1563: 1562,
    1017: 600,
    1018: 601,
    1020: 603,
    629: 628,
    719: 718,
    1019: 602,
    1027: 604,
    1182: 1082,
    1183: 1083,
    1270: 1266,
    1115: 1114,
    1185: 1184,
    1187: 1186,
    2951: 2950,
    1041: 869,
    651: 650,
    1040: 829,
    775: 774,
    2287: 2249,
}

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_EPOCH = date(2000, 1, 1)
_DATE_LO = (date(1920, 1, 1) - _EPOCH).days
_DATE_SPAN = (date(2009, 12, 31) - date(1920, 1, 1)).days
_TS_LO = -946_684_800 * 1_000_000  # 1970-01-01 in µs since 2000
_TS_SPAN = 60 * 365 * 86_400 * 1_000_000
_DAY_US = 86_400 * 1_000_000


#: a value of each kind, replaced for a NULL of a value derived from PII (``null``)
_NULL_TEXT: dict[str, bytes] = {
    TEXT: b"",
    JSON: b"null",
    JSONB: b"null",
    JSONPATH: b"$",
    BYTEA: b"\\x",
    **{k: b"0" for k in (INT2, INT4, INT8, OID, FLOAT4, FLOAT8, NUMERIC, MONEY)},
    BOOL: b"f",
    DATE: b"2000-01-01",
    TIME: b"00:00:00",
    TIMETZ: b"00:00:00+00",
    INTERVAL: b"00:00:00",
    TIMESTAMP: b"2000-01-01 00:00:00",
    TIMESTAMPTZ: b"2000-01-01 00:00:00+00",
    UUID: b"00000000-0000-4000-8000-000000000000",
    INET: b"10.0.0.0",
    CIDR: b"10.0.0.0/32",
    MACADDR: b"02:00:00:00:00:00",
    MACADDR8: b"02:00:00:00:00:00:00:00",
    BITS: b"0",
    **dict.fromkeys((POINT, LSEG, BOX, LINE, CIRCLE, PATH, POLYGON), b"(0,0)"),
    HSTORE: b"",
    LTREE: b"",
    CUBE: b"(0)",
    VECTOR: b"[0]",
    ENUM: b"",
}
_NULL_BINARY: dict[str, bytes] = {
    TEXT: b"",
    JSON: b"null",
    JSONB: b"\x01null",
    JSONPATH: b"\x01$",
    BYTEA: b"",
    INT2: bytes(2),
    INT4: bytes(4),
    INT8: bytes(8),
    OID: bytes(4),
    FLOAT4: bytes(4),
    FLOAT8: bytes(8),
    NUMERIC: bytes(8),
    MONEY: bytes(8),
    BOOL: b"\x00",
    DATE: bytes(4),
    TIME: bytes(8),
    TIMETZ: bytes(12),
    INTERVAL: bytes(16),
    TIMESTAMP: bytes(8),
    TIMESTAMPTZ: bytes(8),
    UUID: bytes(16),
    INET: b"\x02\x20\x00\x04" + bytes(4),
    CIDR: b"\x02\x20\x01\x04" + bytes(4),
    MACADDR: bytes(6),
    MACADDR8: bytes(8),
    BITS: _I32.pack(1) + b"\x00",
    **dict.fromkeys((POINT, LSEG, BOX, LINE, CIRCLE, PATH, POLYGON), bytes(16)),
    HSTORE: bytes(4),
    LTREE: b"\x01",
    CUBE: _U32.pack(_CUBE_POINT | 1) + bytes(8),
    VECTOR: _I16.pack(1) + bytes(6),
    ENUM: b"",
}


#: Kinds whose text output depends on settings that may round it (see
#: :meth:`TypeRegistry.text_may_round`).
_TEXT_MAY_ROUND = frozenset(
    {FLOAT4, FLOAT8, MONEY, OPAQUE, CUBE, VECTOR, POINT, LSEG, BOX, LINE, CIRCLE, PATH, POLYGON}
)
#: geometric kind -> how many float8 its replacement holds (a path two points, a
#: polygon three: how many a value had may be what an expression of PII chose)
_GEOMETRY_FLOATS = {POINT: 2, LSEG: 4, BOX: 4, LINE: 3, CIRCLE: 3, PATH: 4, POLYGON: 6}


class TypeRegistry:
    """Type OID -> how to replace a value of it (built-ins plus the schema's types)."""

    def __init__(self, snapshot: SchemaSnapshot | None = None) -> None:
        self.kinds: dict[int, str] = dict(BUILTIN_KINDS)
        self.elems: dict[int, int] = dict(BUILTIN_ARRAYS)
        self.fields: dict[int, tuple[int, ...]] = {}
        self.delims: dict[int, str] = {1020: ";"}  # box[]: a box's text holds commas
        #: domain -> the base type under it (through domains over domains)
        self.bases: dict[int, int] = {}
        self.ranges: dict[int, int] = dict(BUILTIN_RANGES)
        self.multiranges: dict[int, int] = dict(BUILTIN_MULTIRANGES)
        #: enum -> its labels
        self.labels: dict[int, tuple[str, ...]] = {}
        self.elems.update({oid + 1: oid for oid in BUILTIN_RANGES})  # their arrays
        if snapshot is None:
            return
        types = snapshot.types
        for oid, t in types.items():
            if oid in self.kinds or oid in self.elems:
                continue
            if t.elem:
                self.elems[oid] = t.elem
                if t.delim != ",":
                    self.delims[oid] = t.delim
            elif t.kind == "d":
                base = t.base
                seen = 0
                while base in types and types[base].kind == "d" and seen < 20:
                    base, seen = types[base].base, seen + 1
                self.bases[oid] = base
                self.kinds[oid] = self.kinds.get(base, "") or ("@" + str(base))
            elif t.kind == "e":
                self.kinds[oid] = ENUM
                self.labels[oid] = t.labels or ("",)
            elif t.name in EXTENSION_KINDS:
                self.kinds[oid] = EXTENSION_KINDS[t.name]
            elif t.kind == "r" and t.subtype:
                self.ranges[oid] = t.subtype  # CREATE TYPE … AS RANGE
            elif t.kind == "m" and t.subtype:
                self.multiranges[oid] = t.subtype
            elif t.kind == "c":
                self.kinds[oid] = RECORD
                rel = snapshot.relations.get(t.relid)
                if rel is not None:
                    self.fields[oid] = tuple(c.type_oid for c in rel.columns)
        # domains over arrays and domains over domains resolved after the first pass
        for oid, kind in list(self.kinds.items()):
            if kind.startswith("@"):
                base = int(kind[1:])
                if base in self.elems:
                    self.elems[oid] = self.elems[base]
                    del self.kinds[oid]
                elif base in self.ranges or base in self.multiranges:
                    # a domain over a range: the range's rule (kind() finds it)
                    if base in self.ranges:
                        self.ranges[oid] = self.ranges[base]
                    else:
                        self.multiranges[oid] = self.multiranges[base]
                    del self.kinds[oid]
                else:
                    self.kinds[oid] = self.kinds.get(base, OPAQUE)
                    if base in self.fields:
                        self.fields[oid] = self.fields[base]

        for oid, base in self.bases.items():  # a domain over an enum: its labels
            if base in self.labels:
                self.labels[oid] = self.labels[base]

    def kind(self, oid: int) -> str:
        if oid in self.elems:
            return ARRAY
        kind = self.kinds.get(oid)
        if kind is not None:
            return kind
        if oid in self.ranges:
            return RANGE
        if oid in self.multiranges:
            return MULTIRANGE
        return OPAQUE

    def text_may_round(self, oid: int, depth: int = 0) -> bool:
        """Whether the server's text for a value of ``oid`` may say less than the value,
        by the session's settings: ``extra_float_digits`` below 1 rounds float4 and
        float8 (and the types that print them: geometric ones, extension types, all
        of which dbgate has no rule for), ``lc_monetary`` may drop money's cents. A
        deterministic replacement of such a text is the same for every value it
        rounds alike, and shows which rows hold close values."""
        kind = self.kind(oid)
        if kind in _TEXT_MAY_ROUND or depth > 8:
            return True
        if kind == ARRAY:
            return self.text_may_round(self.elems[oid], depth + 1)
        if kind == RANGE:
            return self.text_may_round(self.ranges[oid], depth + 1)
        if kind == MULTIRANGE:
            return self.text_may_round(self.multiranges[oid], depth + 1)
        if kind == RECORD:
            fields = self.fields.get(oid)
            return fields is None or any(self.text_may_round(f, depth + 1) for f in fields)
        return False


def _record_fields(text: str) -> list[str | None]:
    """Parse a text-format composite ``(a,"b c",,)``; empty unquoted fields are NULL."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError("not a record literal")
    out: list[str | None] = []
    i, n = 1, len(text) - 1
    while True:
        buf: list[str] = []
        quoted = False
        while i < n and text[i] != ",":
            ch = text[i]
            if ch == '"':
                quoted = True
                i += 1
                while i < n:
                    if text[i] == '"':
                        if i + 1 < n and text[i + 1] == '"':
                            buf.append('"')
                            i += 2
                            continue
                        i += 1
                        break
                    if text[i] == "\\":
                        i += 1
                    buf.append(text[i])
                    i += 1
                continue
            if ch == "\\":
                i += 1
            buf.append(text[i])
            i += 1
        out.append("".join(buf) if (buf or quoted) else None)
        if i >= n:
            return out
        i += 1  # the comma


def _quote_record_field(value: str | None) -> str:
    if value is None:
        return ""
    if value == "" or any(c in value for c in '(),"\\') or any(c.isspace() for c in value):
        return '"' + value.replace("\\", "\\\\").replace('"', '""') + '"'
    return value


class Pseudonymizer:
    """Replaces one wire value by its token or pseudonym, for a type OID and format."""

    def __init__(
        self, tokenizer: Tokenizer | FreshTokens, types: TypeRegistry | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.types = types or TypeRegistry()
        #: of values derived from PII (fresh tokens): a NULL and the shape of an array
        #: are made by the same expression as the value, and would pass where the
        #: value does not (``CASE WHEN ascii(...) & (1 << b) <> 0 THEN 1 END`` beside
        #: ``b``, ``array_fill(0, ARRAY[ascii(...)])``): hidden too (``null``)
        self.shapeless = isinstance(tokenizer, FreshTokens)
        self._text: dict[str, Callable[[str, bytes, str], bytes]] = {
            TEXT: self._t_token,
            JSON: self._t_json,
            JSONB: self._t_json,
            JSONPATH: self._t_json,
            BYTEA: self._t_bytea,
            INT2: self._t_int,
            INT4: self._t_int,
            INT8: self._t_int,
            OID: self._t_int,
            FLOAT4: self._t_int,
            FLOAT8: self._t_int,
            NUMERIC: self._t_int,
            MONEY: self._t_int,
            BOOL: self._t_bool,
            DATE: self._t_date,
            TIME: self._t_time,
            TIMETZ: self._t_time,
            TIMESTAMP: self._t_ts,
            TIMESTAMPTZ: self._t_ts,
            INTERVAL: self._t_time,
            UUID: self._t_uuid,
            INET: self._t_inet,
            CIDR: self._t_inet,
            MACADDR: self._t_mac,
            MACADDR8: self._t_mac,
            BITS: self._t_bits,
            **dict.fromkeys(_GEOMETRY_FLOATS, self._t_geometry),
            HSTORE: self._t_hstore,
            LTREE: self._t_token,
            CUBE: self._t_cube,
            VECTOR: self._t_vector,
        }

    # ---------------------------------------------------------------- entry point
    def value(self, entity: str, type_oid: int, fmt: int, raw: bytes, depth: int = 0) -> bytes:
        """The replacement for ``raw`` (never None: NULLs are not passed here)."""
        kind = self.types.kind(type_oid)
        try:
            if kind == ARRAY:
                elem = self.types.elems[type_oid]
                if self.shapeless and depth < 8:
                    # how many elements, and which are NULL, may spell the value
                    return self._one_element(entity, type_oid, fmt, depth, raw)
                if fmt:
                    return self._binary_array(entity, raw, depth)
                return self._text_array(
                    entity, elem, raw, self.types.delims.get(type_oid, ","), depth
                )
            if kind == RECORD:
                if self.shapeless and type_oid not in self.types.fields:
                    # the count and types of an anonymous record's fields may spell
                    # the value (``CASE … THEN row(1) … THEN row(1, 1) END``)
                    return self._one_field(entity, fmt, raw)
                if fmt:
                    return self._binary_record(entity, raw, depth)
                return self._text_record(entity, type_oid, raw, depth)
            if kind in (RANGE, MULTIRANGE):
                return self._range(entity, type_oid, fmt, raw, depth)
            if kind == ENUM:  # its binary format is its label's text, too
                return self._enum(entity, type_oid, raw)
            if fmt:
                return self._binary(entity, kind, raw)
            handler = self._text.get(kind)
            if handler is None:
                return self._token(entity, raw)
            return handler(entity, raw, kind)
        except (ValueError, struct.error, IndexError, UnicodeDecodeError, RecursionError):
            # a value that does not parse as its type: still replaced, never passed
            return self._token(entity, raw)

    def _token(self, entity: str, raw: bytes) -> bytes:
        return self.tokenizer.token(entity, raw).encode()

    def null(self, entity: str, type_oid: int, fmt: int, depth: int = 0) -> bytes:
        """A stand-in for a NULL where a value derived from PII would be: a fresh
        value of the type, as a value's own replacement looks."""
        kind = self.types.kind(type_oid)
        if kind == ARRAY:
            return self._one_element(entity, type_oid, fmt, depth)
        if kind == RECORD and type_oid not in self.types.fields:
            # an anonymous record (``row(...)``) has no declared fields: the layout
            # its values get (a token's bytes would be read as a field count)
            return self._one_field(entity, fmt, b"")
        if kind == RECORD:
            fields = self.types.fields[type_oid]
            if fmt:
                parts = [_I32.pack(len(fields))]
                for oid in fields:
                    new = self.null(entity, oid, 1, depth + 1)
                    parts.append(_U32.pack(oid) + _I32.pack(len(new)) + new)
                return b"".join(parts)
            inner = [self.null(entity, oid, 0, depth + 1).decode() for oid in fields]
            return ("(" + ",".join(_quote_record_field(v) for v in inner) + ")").encode()
        if kind in (RANGE, MULTIRANGE):
            return self._range(entity, type_oid, fmt, None, depth)
        stand_in = (_NULL_BINARY if fmt else _NULL_TEXT).get(kind)
        if stand_in is None:
            return self._token(entity, b"")
        return self.value(entity, type_oid, fmt, stand_in, depth + 1)

    def _one_field(self, entity: str, fmt: int, raw: bytes) -> bytes:
        """An anonymous record derived from PII, as it reaches the client: one text
        field holding the whole value's token, whatever fields the server gave it —
        they may have been chosen by the value. Every driver decodes it as a record."""
        token = self._token(entity, raw)
        if fmt:
            return _I32.pack(1) + _U32.pack(25) + _I32.pack(len(token)) + token
        return ("(" + _quote_record_field(token.decode()) + ")").encode()

    def _one_element(
        self, entity: str, type_oid: int, fmt: int, depth: int, raw: bytes | None = None
    ) -> bytes:
        elem = self.types.elems[type_oid]
        first = None if raw is None else self._first_element(raw, fmt, type_oid)
        if first is None:
            new = self.null(entity, elem, fmt, depth + 1)
        else:
            # the array's first element, replaced: an anonymous record's fields (and
            # those of records and arrays inside it) are told only by its value
            new = self.value(entity, elem, fmt, first, depth + 1)
        if fmt:
            return struct.pack("!iiIii", 1, 0, elem, 1, 1) + _I32.pack(len(new)) + new
        from dbgate.pii.text_arrays import quote_element

        delim = self.types.delims.get(type_oid, ",")
        return ("{" + quote_element(new.decode(), delim) + "}").encode()

    def _first_element(self, raw: bytes, fmt: int, type_oid: int) -> bytes | None:
        """The first non-NULL element of an array's wire value, or None."""
        if not fmt:
            from dbgate.pii.text_arrays import elements

            _, items = elements(raw.decode(), self.types.delims.get(type_oid, ","))
            return next((v.encode() for _, _, v in items if v is not None), None)
        ndim = _I32.unpack_from(raw, 0)[0]
        if not 0 < ndim <= 6:
            return None
        count = 1
        for i in range(ndim):
            count *= _I32.unpack_from(raw, 12 + 8 * i)[0]
        pos = 12 + 8 * ndim
        for _ in range(count):
            n = _I32.unpack_from(raw, pos)[0]
            pos += 4
            if n >= 0:
                if pos + n > len(raw):
                    raise ValueError("array element runs past the value")
                return raw[pos : pos + n]
        return None

    def _range(self, entity: str, type_oid: int, fmt: int, raw: bytes | None, depth: int) -> bytes:
        """A range (or multirange) of the same type, as every driver decodes it: one
        range ``[a, b]`` whose bounds are the pseudonyms of the value's bounds, in
        their order (a missing or infinite one: a stand-in of the subtype). Whether
        it was empty, which bounds it includes, and how many ranges a multirange
        held may be what an expression of PII chose (``CASE … THEN 'empty'``): every
        replacement has the same shape."""
        types = self.types
        multi = type_oid in types.multiranges
        rng = types.multiranges[type_oid] if multi else type_oid
        sub = types.ranges[rng]
        bounds: list[bytes] = []
        if raw is not None:
            if multi:
                raw = _first_range(raw, fmt)
            if raw is not None:
                bounds = _range_bounds(raw, fmt)
        new = [
            self.value(entity, sub, fmt, bounds[i], depth + 1)
            if i < len(bounds)
            else self.null(entity, sub, fmt, depth + 1)
            for i in range(2)
        ]
        if fmt:
            one = b"\x06" + b"".join(_I32.pack(len(b)) + b for b in new)
            return _I32.pack(1) + _I32.pack(len(one)) + one if multi else one
        text = "[" + ",".join(_quote_bound(b.decode()) for b in new) + "]"
        return ("{" + text + "}" if multi else text).encode()

    def _seed(self, kind: str, entity: str, canonical: bytes) -> bytes:
        return self.tokenizer.digest(f"{kind}:{entity}".encode(), canonical)

    # ---------------------------------------------------------------- text format
    def _t_token(self, entity: str, raw: bytes, kind: str) -> bytes:
        return self._token(entity, raw)

    def _t_json(self, entity: str, raw: bytes, kind: str) -> bytes:
        return b'"' + self._token(entity, raw) + b'"'

    def _t_hstore(self, entity: str, raw: bytes, kind: str) -> bytes:
        # one pair whatever the value held: its keys (``hstore(c)`` of a row: the
        # column names, or values a key was made of) and how many there were may be
        # what an expression of PII chose
        return b'"pii"=>"' + self._token(entity, raw) + b'"'

    def _t_cube(self, entity: str, raw: bytes, kind: str) -> bytes:
        return f"({self._cube(entity, raw)})".encode()

    def _t_vector(self, entity: str, raw: bytes, kind: str) -> bytes:
        return f"[{self._vector(entity, raw)}]".encode()

    def _vector(self, entity: str, canonical: bytes) -> int:
        """A pgvector ``vector``'s pseudonym: one element of seven digits (a float4's;
        how many a value had may be what an expression of PII chose)."""
        return self._number(entity, self._seed("vector", entity, canonical), FLOAT4)

    def _cube(self, entity: str, canonical: bytes) -> int:
        """A cube's pseudonym: one point of one ten-digit coordinate (how many
        dimensions a value had, and whether it was a point, may be what an
        expression of PII chose)."""
        return self._number(entity, self._seed("cube", entity, canonical), FLOAT8)

    def _enum(self, entity: str, type_oid: int, raw: bytes) -> bytes:
        """One of the type's labels, by a keyed pick of the value: a driver that maps
        the labels to its own enum (psycopg's ``register_enum``) decodes it."""
        labels = self.types.labels.get(type_oid) or ("",)
        pick = int.from_bytes(self._seed("enum", entity, raw)[:8], "big")
        return labels[pick % len(labels)].encode()

    def _t_bytea(self, entity: str, raw: bytes, kind: str) -> bytes:
        return b"\\x" + self._token(entity, raw).hex().encode()

    def _number(self, entity: str, canonical: bytes, kind: str) -> int:
        d = int.from_bytes(self._seed("number", entity, canonical)[:8], "big")
        if kind == INT2:
            return 1 + d % 32_766
        if kind in (INT4, OID):
            return 1 + d % 2_147_483_646
        if kind == FLOAT4:
            return 1 + d % 9_999_999
        return 1_000_000_000 + d % 9_000_000_000  # ten digits

    def _t_int(self, entity: str, raw: bytes, kind: str) -> bytes:
        return str(self._number(entity, raw.strip(), kind)).encode() + (
            b".00" if kind == MONEY else b""
        )

    def _t_bool(self, entity: str, raw: bytes, kind: str) -> bytes:
        return b"t" if self._seed("bool", entity, raw[:1])[0] & 1 else b"f"

    def _pseudo_date(self, entity: str, iso: bytes) -> int:
        d = int.from_bytes(self._seed("date", entity, iso)[:8], "big")
        return _DATE_LO + d % _DATE_SPAN

    def _t_date(self, entity: str, raw: bytes, kind: str) -> bytes:
        days = self._pseudo_date(entity, raw.strip())
        return (_EPOCH + timedelta(days=days)).isoformat().encode()

    def _t_time(self, entity: str, raw: bytes, kind: str) -> bytes:
        us = int.from_bytes(self._seed("time", entity, raw)[:8], "big") % _DAY_US
        s = us // 1_000_000
        text = f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        return (text + "+00").encode() if kind == TIMETZ else text.encode()

    def _pseudo_ts(self, entity: str, canonical: bytes) -> int:
        d = int.from_bytes(self._seed("timestamp", entity, canonical)[:8], "big")
        return _TS_LO + (d % (_TS_SPAN // 1_000_000)) * 1_000_000

    def _t_ts(self, entity: str, raw: bytes, kind: str) -> bytes:
        us = self._pseudo_ts(entity, raw)
        days, rem = divmod(us, _DAY_US)
        s = rem // 1_000_000
        text = f"{(_EPOCH + timedelta(days=days)).isoformat()} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
        return (text + "+00").encode() if kind == TIMESTAMPTZ else text.encode()

    def _pseudo_uuid(self, entity: str, canonical: bytes) -> uuid.UUID:
        b = bytearray(self._seed("uuid", entity, canonical)[:16])
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        return uuid.UUID(bytes=bytes(b))

    def _t_uuid(self, entity: str, raw: bytes, kind: str) -> bytes:
        canonical = str(uuid.UUID(raw.decode().strip())).encode()
        return str(self._pseudo_uuid(entity, canonical)).encode()

    def _pseudo_ip(self, entity: str, raw: bytes, v6: bool) -> bytes:
        d = self._seed("ip", entity, raw)
        if v6:
            return b"\xfd" + d[:15]
        return b"\x0a" + d[:3]

    def _t_inet(self, entity: str, raw: bytes, kind: str) -> bytes:
        import ipaddress

        # A stored address keeps its family (docs/pii.md); a derived one does not: its
        # family would be a bit the expression chose (``CASE WHEN ascii(…) & 4 <> 0
        # THEN '::1'::inet ELSE '1.2.3.4'::inet END``), one per column.
        v6 = b":" in raw and not self.shapeless
        addr = ipaddress.ip_address(self._pseudo_ip(entity, raw, v6))
        text = str(addr)
        if kind == CIDR:
            text += "/128" if v6 else "/32"
        return text.encode()

    def _t_mac(self, entity: str, raw: bytes, kind: str) -> bytes:
        n = 8 if kind == MACADDR8 else 6
        b = bytearray(self._seed("mac", entity, raw)[:n])
        b[0] = (b[0] | 0x02) & 0xFE
        return ":".join(f"{x:02x}" for x in b).encode()

    def _pseudo_bits(self, entity: str, canonical: bytes) -> bytes:
        return self._seed("bits", entity, canonical)[: _BITS // 8]

    def _t_bits(self, entity: str, raw: bytes, kind: str) -> bytes:
        bits = self._pseudo_bits(entity, raw.strip())
        return "".join(f"{b:08b}" for b in bits).encode()

    def _geometry(self, entity: str, raw: bytes, kind: str) -> list[int]:
        seed = self._seed("geometry", entity, raw)
        return [
            self._number(entity, seed + bytes((i,)), FLOAT8) for i in range(_GEOMETRY_FLOATS[kind])
        ]

    def _t_geometry(self, entity: str, raw: bytes, kind: str) -> bytes:
        f = self._geometry(entity, raw.strip(), kind)
        pts = [f"({f[i]},{f[i + 1]})" for i in range(0, len(f) - 1, 2)]
        if kind == POINT:
            text = pts[0]
        elif kind == LSEG:
            text = f"[{pts[0]},{pts[1]}]"
        elif kind == BOX:
            text = f"{pts[0]},{pts[1]}"
        elif kind == LINE:
            text = "{" + ",".join(map(str, f)) + "}"
        elif kind == CIRCLE:
            text = f"<({f[0]},{f[1]}),{f[2]}>"
        else:  # a closed path, a polygon
            text = "(" + ",".join(pts) + ")"
        return text.encode()

    # ---------------------------------------------------------------- binary format
    def _binary(self, entity: str, kind: str, raw: bytes) -> bytes:
        if kind == TEXT:
            return self._token(entity, raw)
        if kind in (JSON, JSONPATH):
            body = b'"' + self._token(entity, raw) + b'"'
            return body if kind == JSON else b"\x01" + body
        if kind == JSONB:
            return b'\x01"' + self._token(entity, raw[1:]) + b'"'
        if kind == BYTEA:
            return self._token(entity, raw)
        if kind in (INT2, INT4, INT8, OID):
            size = len(raw)
            canonical = str(int.from_bytes(raw, "big", signed=kind != OID)).encode()
            n = self._number(entity, canonical, kind)
            return n.to_bytes(size, "big", signed=kind != OID)
        if kind in (FLOAT4, FLOAT8):
            n = float(self._number(entity, raw, kind))
            return struct.pack("!f" if kind == FLOAT4 else "!d", n)
        if kind == MONEY:
            return _I64.pack(self._number(entity, raw, INT8) * 100)
        if kind == NUMERIC:
            return self._numeric_binary(self._number(entity, raw, NUMERIC))
        if kind == BOOL:
            return b"\x01" if self._seed("bool", entity, raw[:1])[0] & 1 else b"\x00"
        if kind == DATE:
            days = _I32.unpack(raw)[0]
            iso = (
                (_EPOCH + timedelta(days=days)).isoformat().encode()
                if -700_000 < days < 2_900_000
                else raw
            )
            return _I32.pack(self._pseudo_date(entity, iso))
        if kind in (TIMESTAMP, TIMESTAMPTZ):
            if len(raw) != 8:
                raise ValueError("timestamp must be 8 bytes")
            return _I64.pack(self._pseudo_ts(entity, raw))
        if kind in (TIME, TIMETZ, INTERVAL):
            us = int.from_bytes(self._seed("time", entity, raw)[:8], "big") % _DAY_US
            if kind == TIME:
                return _I64.pack(us)
            if kind == TIMETZ:
                return _I64.pack(us) + _I32.pack(0)
            return _I64.pack(us) + _I32.pack(0) + _I32.pack(0)
        if kind == UUID:
            if len(raw) != 16:
                raise ValueError("uuid must be 16 bytes")
            canonical = str(uuid.UUID(bytes=raw)).encode()
            return self._pseudo_uuid(entity, canonical).bytes
        if kind in (INET, CIDR):
            family, _bits, _is_cidr, nb = raw[0], raw[1], raw[2], raw[3]
            v6 = family == 3
            if nb != (16 if v6 else 4) or len(raw) != 4 + nb:
                raise ValueError("bad inet")
            v6 = v6 and not self.shapeless  # a derived address's family: see _t_inet
            addr = self._pseudo_ip(entity, raw, v6)
            head = (
                (3, 128, 1 if kind == CIDR else 0, 16)
                if v6
                else (2, 32, 1 if kind == CIDR else 0, 4)
            )
            return bytes(head) + addr
        if kind in _GEOMETRY_FLOATS:
            f = self._geometry(entity, raw, kind)
            body = struct.pack(f"!{len(f)}d", *f)
            if kind == PATH:
                return b"\x01" + _I32.pack(2) + body
            if kind == POLYGON:
                return _I32.pack(3) + body
            return body
        if kind == BITS:
            n = _I32.unpack_from(raw, 0)[0]
            if not 0 <= n <= 8 * (len(raw) - 4):
                raise ValueError("bad bit string")
            canonical = "".join(f"{b:08b}" for b in raw[4:])[:n].encode()
            return _I32.pack(_BITS) + self._pseudo_bits(entity, canonical)
        if kind in (MACADDR, MACADDR8):
            b = bytearray(self._seed("mac", entity, raw)[: len(raw)])
            b[0] = (b[0] | 0x02) & 0xFE
            return bytes(b)
        if kind == HSTORE:  # a count of pairs, then each key and value with its length
            pair = [b"pii", self._token(entity, raw)]
            return _I32.pack(1) + b"".join(_I32.pack(len(x)) + x for x in pair)
        if kind == LTREE:  # a version byte, then the text
            return b"\x01" + self._token(entity, raw)
        if kind == CUBE:
            return _U32.pack(_CUBE_POINT | 1) + struct.pack("!d", self._cube(entity, raw))
        if kind == VECTOR:  # dimensions, an unused int16, then float4 elements
            return _I16.pack(1) + _I16.pack(0) + struct.pack("!f", self._vector(entity, raw))
        return self._token(entity, raw)

    @staticmethod
    def _numeric_binary(n: int) -> bytes:
        digits = []
        while n:
            n, d = divmod(n, 10_000)
            digits.append(d)
        digits.reverse()
        header = struct.pack("!hhHH", len(digits), len(digits) - 1, 0, 0)
        return header + b"".join(_I16.pack(d) for d in digits)

    # ---------------------------------------------------------------- containers
    def _text_array(self, entity: str, elem: int, raw: bytes, delim: str, depth: int) -> bytes:
        return map_elements(
            raw.decode(),
            delim,
            lambda value: self.value(entity, elem, 0, value.encode(), depth + 1).decode(),
        ).encode()

    def _binary_array(self, entity: str, raw: bytes, depth: int) -> bytes:
        ndim, _flags, elem = struct.unpack_from("!iiI", raw, 0)
        if not 0 <= ndim <= 6:
            raise ValueError("bad array dimensions")
        pos = 12 + 8 * ndim
        count = 1
        for i in range(ndim):
            count *= _I32.unpack_from(raw, 12 + 8 * i)[0]
        if ndim == 0:
            count = 0
        parts = [raw[:pos]]
        for _ in range(count):
            n = _I32.unpack_from(raw, pos)[0]
            pos += 4
            if n < 0:
                parts.append(b"\xff\xff\xff\xff")
                continue
            new = self.value(entity, elem, 1, raw[pos : pos + n], depth + 1)
            parts.append(_I32.pack(len(new)))
            parts.append(new)
            pos += n
        if pos != len(raw):
            raise ValueError("trailing bytes in array")
        return b"".join(parts)

    def _text_record(self, entity: str, type_oid: int, raw: bytes, depth: int) -> bytes:
        fields = _record_fields(raw.decode())
        types = self.types.fields.get(type_oid, ())
        out = []
        for i, value in enumerate(fields):
            oid = types[i] if i < len(types) else 25
            if value is None:
                out.append(
                    self.null(entity, oid, 0, depth + 1).decode() if self.shapeless else None
                )
                continue
            out.append(self.value(entity, oid, 0, value.encode(), depth + 1).decode())
        return ("(" + ",".join(_quote_record_field(v) for v in out) + ")").encode()

    def _binary_record(self, entity: str, raw: bytes, depth: int) -> bytes:
        n = _I32.unpack_from(raw, 0)[0]
        pos = 4
        parts = [raw[:4]]
        for _ in range(n):
            oid, length = struct.unpack_from("!Ii", raw, pos)
            pos += 8
            if length < 0:
                if self.shapeless:
                    new = self.null(entity, oid, 1, depth + 1)
                    parts.append(_U32.pack(oid) + _I32.pack(len(new)) + new)
                else:
                    parts.append(raw[pos - 8 : pos])
                continue
            new = self.value(entity, oid, 1, raw[pos : pos + length], depth + 1)
            parts.append(_U32.pack(oid) + _I32.pack(len(new)) + new)
            pos += length
        if pos != len(raw):
            raise ValueError("trailing bytes in record")
        return b"".join(parts)


# ------------------------------------------------------------------ ranges
_RANGE_EMPTY, _LB_INF, _UB_INF, _LB_NULL, _UB_NULL = 0x01, 0x08, 0x10, 0x20, 0x40


def _quote_bound(value: str) -> str:
    """A range bound as PostgreSQL's ``range_out`` writes it: quoted only when it
    must be (drivers such as pg8000 split an unquoted range at its comma)."""
    if value and not any(ch in '"\\,()[]' or ch.isspace() for ch in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _range_bounds(raw: bytes, fmt: int) -> list[bytes]:
    """The finite bounds of a range's wire value, lower first."""
    if fmt:
        flags = raw[0]
        if flags & _RANGE_EMPTY:
            return []
        out: list[bytes] = []
        pos = 1
        for absent in (_LB_INF | _LB_NULL, _UB_INF | _UB_NULL):
            if flags & absent:
                continue
            n = _I32.unpack_from(raw, pos)[0]
            if n < 0 or pos + 4 + n > len(raw):
                raise ValueError("range bound runs past the value")
            out.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return out
    text = raw.decode()
    if text.strip().lower() == "empty":
        return []
    if len(text) < 3 or text[0] not in "[(" or text[-1] not in "])":
        raise ValueError("not a range")
    parts: list[str] = []
    cur: list[str] = []
    given = quoted = escaped = False
    for ch in text[1:-1]:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = given = True
        elif ch == '"':
            quoted = not quoted
            given = True
        elif ch == "," and not quoted:
            parts.append("".join(cur) if given else "")
            if not given:
                parts[-1] = "\0"  # an infinite bound
            cur, given = [], False
        else:
            cur.append(ch)
            given = True
    parts.append("".join(cur) if given else "\0")
    if len(parts) != 2:
        raise ValueError("not a range")
    return [p.encode() for p in parts if p != "\0"]


def _first_range(raw: bytes, fmt: int) -> bytes | None:
    """The first range of a multirange's wire value (None: it holds none)."""
    if fmt:
        if _I32.unpack_from(raw, 0)[0] < 1:
            return None
        n = _I32.unpack_from(raw, 4)[0]
        if n < 1 or 8 + n > len(raw):
            raise ValueError("range runs past the multirange")
        return raw[8 : 8 + n]
    text = raw.decode().strip()
    if len(text) < 2 or text[0] != "{" or text[-1] != "}":
        raise ValueError("not a multirange")
    quoted = escaped = False
    start = -1
    for i, ch in enumerate(text[1:-1], 1):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif start < 0 and ch in "[(eE":
            start = i
            if ch in "eE":
                return b"empty"
        elif start >= 0 and ch in "])":
            return text[start : i + 1].encode()
    return None
