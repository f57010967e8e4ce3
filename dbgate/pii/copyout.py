"""Rewriting the CopyData of ``COPY … TO STDOUT`` in text, CSV and binary formats.

PostgreSQL sends one row per CopyData message, but nothing in the protocol promises
it, so each rewriter is a small stream parser: bytes that do not yet make a whole row
wait in a buffer until the next message (the relay then sends an empty CopyData,
which is legal). The column layout comes from the plan (the COPY statement's lineage
and options); the CopyOutResponse only gives the overall and per-column formats.

* text: fields split on the delimiter (tab unless ``DELIMITER``), backslash escapes
  decoded and re-encoded, ``\\N`` (or the ``NULL`` option) kept;
* CSV: quote-aware (a quoted field may hold delimiters and newlines), ``HEADER`` line
  passed, the NULL marker (an unquoted empty field unless ``NULL``) kept, replacements
  quoted when they need it;
* binary: the 19-byte header, then tuples of length-prefixed fields, then the -1
  trailer; fields replaced by the binary rule for their type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = [
    "BinaryCopyRewriter",
    "CsvCopyRewriter",
    "LineCopyRewriter",
    "TextCopyRewriter",
    "embeds_ascii",
]

#: (column index) -> replacement of the field's *decoded* bytes, for PII columns
Replace = Callable[[int, bytes], bytes]

_SIGNATURE = b"PGCOPY\n\xff\r\n\0"
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")

_TEXT_ESCAPES = {
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("v"): b"\v",
}


#: PostgreSQL's client-only encodings, as its encoding names and aliases read once
#: cleaned (letters and digits, lower case): a byte of their multibyte characters may
#: be ASCII — a backslash, a delimiter, a quote — which COPY writes unescaped.
_EMBEDS_ASCII = frozenset(
    {
        "sjis",
        "shiftjis",
        "mskanji",
        "win932",
        "windows932",
        "shiftjis2004",
        "big5",
        "win950",
        "windows950",
        "gbk",
        "win936",
        "windows936",
        "uhc",
        "win949",
        "windows949",
        "gb18030",
        "johab",
    }
)


def embeds_ascii(encoding: str) -> bool:
    """Whether COPY output in ``encoding`` (its ``ENCODING`` option) may have ASCII
    bytes inside characters, so that its fields cannot be split by their bytes."""
    return "".join(c for c in encoding.lower() if c.isascii() and c.isalnum()) in _EMBEDS_ASCII


def _whole_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of ``data`` (without their newlines) and what follows them."""
    last = data.rfind(b"\n")
    if last < 0:
        return [], data
    return data[:last].split(b"\n"), data[last + 1 :]


def _unescape_text(field: bytes) -> bytes:
    if b"\\" not in field:
        return field
    out = bytearray()
    i, n = 0, len(field)
    while i < n:
        ch = field[i]
        if ch != 0x5C or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = field[i + 1]
        if nxt in _TEXT_ESCAPES:
            out += _TEXT_ESCAPES[nxt]
            i += 2
        elif 0x30 <= nxt <= 0x37:
            j = i + 1
            while j < n and j < i + 4 and 0x30 <= field[j] <= 0x37:
                j += 1
            out.append(int(field[i + 1 : j], 8) & 0xFF)
            i = j
        elif nxt == ord("x") and i + 2 < n and chr(field[i + 2]) in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and chr(field[j]) in "0123456789abcdefABCDEF":
                j += 1
            out.append(int(field[i + 2 : j], 16))
            i = j
        else:
            out.append(nxt)
            i += 2
    return bytes(out)


def _escape_text(value: bytes, delim: int) -> bytes:
    out = value.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    out = out.replace(b"\t", b"\\t")
    if delim not in (0x09,):
        d = bytes((delim,))
        out = out.replace(d, b"\\" + d)
    return out


class TextCopyRewriter:
    """COPY TO STDOUT in text format."""

    def __init__(
        self,
        pii: dict[int, Replace],
        delimiter: str = "\t",
        null: str = "\\N",
        header: bool = False,
    ) -> None:
        self.pii = pii
        self.delim = delimiter.encode()[0]
        self.null = null.encode()
        self.header = header  # HEADER (PostgreSQL 15+): the column names come first
        self.pending = b""

    def copy_data(self, body: bytes) -> bytes:
        lines, self.pending = _whole_lines(self.pending + body)
        if not lines:
            return b""
        out = []
        for line in lines:
            if self.header:
                self.header = False
                out.append(line)
            else:
                out.append(self.row(line))
        return b"\n".join(out) + b"\n"

    def row(self, line: bytes) -> bytes:
        if line == b"\\.":
            return line
        fields = self._split(line)
        for i, raw in enumerate(fields):
            replace = self.pii.get(i)
            if replace is None:
                continue
            if raw == self.null:
                null = getattr(replace, "null", None)
                if null is not None:  # a derived value's NULL: a fresh stand-in
                    fields[i] = _escape_text(null(), self.delim)
                continue
            fields[i] = _escape_text(replace(i, _unescape_text(raw)), self.delim)
        return bytes((self.delim,)).join(fields)

    def _split(self, line: bytes) -> list[bytes]:
        if b"\\" not in line:
            return line.split(bytes((self.delim,)))
        fields = []
        start = i = 0
        n = len(line)
        while i < n:
            ch = line[i]
            if ch == 0x5C:
                i += 2
                continue
            if ch == self.delim:
                fields.append(line[start:i])
                start = i + 1
            i += 1
        fields.append(line[start:])
        return fields

    def data_row(self, body: bytes) -> bytes:
        return body


class LineCopyRewriter:
    """COPY TO STDOUT in text or CSV format in an encoding that hides ASCII bytes in
    its characters (:func:`embeds_ascii`): the second byte of a character can be a
    backslash, a delimiter or a quote that the server did not escape, so the fields of
    a row cannot be told apart (a parser would shift a PII value into a clean column).
    Every line is replaced whole (its columns are lost; a newline is never inside a
    character in these encodings)."""

    def __init__(self, replace: Callable[[bytes], bytes]) -> None:
        self.replace = replace
        self.pending = b""

    def copy_data(self, body: bytes) -> bytes:
        lines, self.pending = _whole_lines(self.pending + body)
        return b"".join(self.replace(line) + b"\n" for line in lines)

    def data_row(self, body: bytes) -> bytes:
        return body


class CsvCopyRewriter:
    """COPY TO STDOUT in CSV format (quote-aware, multi-line fields)."""

    def __init__(
        self,
        pii: dict[int, Replace],
        delimiter: str = ",",
        quote: str = '"',
        escape: str | None = None,
        null: str = "",
        header: bool = False,
    ) -> None:
        self.pii = pii
        self.delim = delimiter.encode()
        self.quote = quote.encode()
        self.escape = (escape or quote).encode()
        self.null = null.encode()
        self.header = header
        self.pending = b""

    def copy_data(self, body: bytes) -> bytes:
        data = self.pending + body
        out = []
        pos = 0
        while True:
            row_end = self._row_end(data, pos)
            if row_end < 0:
                break
            line = data[pos:row_end]
            if self.header:
                self.header = False
                out.append(line + b"\n")
            else:
                out.append(self.row(line) + b"\n")
            pos = row_end + 1
        self.pending = data[pos:]
        return b"".join(out)

    def _row_end(self, data: bytes, pos: int) -> int:
        """Index of the newline that ends the row starting at ``pos``, or -1."""
        quoted = False
        q, e = self.quote[0], self.escape[0]
        i, n = pos, len(data)
        while i < n:
            ch = data[i]
            if quoted:
                if ch == e and e != q and i + 1 < n and data[i + 1] in (q, e):
                    i += 2
                    continue
                if ch == q:
                    if q == e and i + 1 < n and data[i + 1] == q:
                        i += 2
                        continue
                    quoted = False
            elif ch == q:
                quoted = True
            elif ch == 0x0A:
                return i
            i += 1
        return -1

    def _fields(self, line: bytes) -> list[tuple[bytes, bool]]:
        """``(decoded value, was quoted)`` per field."""
        q, e, d = self.quote[0], self.escape[0], self.delim[0]
        fields: list[tuple[bytes, bool]] = []
        buf = bytearray()
        quoted = in_quotes = False
        i, n = 0, len(line)
        while i <= n:
            if i == n or (not in_quotes and line[i] == d):
                value = bytes(buf)
                if not quoted and value.endswith(b"\r") and i == n:
                    value = value[:-1]
                fields.append((value, quoted))
                buf = bytearray()
                quoted = in_quotes = False
                i += 1
                continue
            ch = line[i]
            if in_quotes:
                if ch == e and i + 1 < n and line[i + 1] in (q, e) and (e != q or line[i + 1] == q):
                    buf.append(line[i + 1])
                    i += 2
                    continue
                if ch == q:
                    in_quotes = False
                    i += 1
                    continue
                buf.append(ch)
            elif ch == q:
                in_quotes = quoted = True
            else:
                buf.append(ch)
            i += 1
        return fields

    def _quote(self, value: bytes) -> bytes:
        q, e = self.quote, self.escape
        if (
            value
            and not any(c in value for c in (self.delim, q, b"\n", b"\r", e))
            and value != self.null
        ):
            return value
        body = value.replace(e, e + e) if e != q else value
        return q + body.replace(q, e + q) + q

    def row(self, line: bytes) -> bytes:
        fields = self._fields(line)
        out = []
        for i, (value, quoted) in enumerate(fields):
            replace = self.pii.get(i)
            if replace is not None and not quoted and value == self.null:
                null = getattr(replace, "null", None)
                if null is not None:  # a derived value's NULL: a fresh stand-in
                    out.append(self._quote(null()))
                    continue
            if replace is None or (not quoted and value == self.null):
                out.append(self._quote(value) if quoted else value)
                continue
            out.append(self._quote(replace(i, value)))
        return self.delim.join(out)

    def data_row(self, body: bytes) -> bytes:
        return body


class BinaryCopyRewriter:
    """COPY TO STDOUT in binary format."""

    def __init__(self, pii: dict[int, Replace]) -> None:
        self.pii = pii
        self.pending = b""
        self.header_done = False
        self.finished = False

    def copy_data(self, body: bytes) -> bytes:
        data = self.pending + body
        out = []
        pos = 0
        if not self.header_done:
            if len(data) < 19:
                self.pending = data
                return b""
            if data[:11] != _SIGNATURE:
                raise ValueError("binary COPY data without its signature")
            ext = _I32.unpack_from(data, 15)[0]
            if len(data) < 19 + ext:
                self.pending = data
                return b""
            out.append(data[: 19 + ext])
            pos = 19 + ext
            self.header_done = True
        n = len(data)
        while pos + 2 <= n and not self.finished:
            count = _I16.unpack_from(data, pos)[0]
            if count == -1:
                out.append(data[pos : pos + 2])
                pos += 2
                self.finished = True
                break
            # find the end of this tuple
            p = pos + 2
            spans = []
            complete = True
            for _ in range(count):
                if p + 4 > n:
                    complete = False
                    break
                length = _I32.unpack_from(data, p)[0]
                if length >= 0 and p + 4 + length > n:
                    complete = False
                    break
                spans.append((p, length))
                p += 4 + max(length, 0)
            if not complete:
                break
            parts = [data[pos : pos + 2]]
            for i, (start, length) in enumerate(spans):
                replace = self.pii.get(i)
                null = getattr(replace, "null", None) if length < 0 else None
                if null is not None:  # a derived value's NULL: a fresh stand-in
                    new = null()
                    parts.append(_I32.pack(len(new)) + new)
                    continue
                if replace is None or length < 0:
                    parts.append(data[start : start + 4 + max(length, 0)])
                    continue
                new = replace(i, data[start + 4 : start + 4 + length])
                parts.append(_I32.pack(len(new)) + new)
            out.append(b"".join(parts))
            pos = p
        self.pending = data[pos:]
        return b"".join(out)

    def data_row(self, body: bytes) -> bytes:
        return body
