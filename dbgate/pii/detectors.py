"""Content detectors: the backstop for text whose provenance lineage cannot give.

They find e-mail addresses, phone numbers, payment card numbers (Luhn-checked), US
social security numbers and IBANs (mod-97-checked) inside free text, and replace each
finding by its token. They run where no column tells what a value is: values of
unknown provenance when ``pii.unknown: detect``, free-text columns when
``pii.detect_clean_text`` is on, the messages of RAISE in user functions, and NOTIFY
payloads when ``pii.notification_payloads: detect``.

Detectors are a backstop, not a catalog: they do not find names, addresses or birth
dates, and a number written with unusual separators may slip through. Where that
matters, prefer ``tokenize`` (the whole value).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["DETECTORS", "detect", "luhn_ok", "replace_detected"]

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])"
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_IBAN = re.compile(
    r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Z0-9])"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?:\s*(?:x|ext\.?)\s*\d{1,6})?(?![\w])"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", m.group(0))
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _iban(m: re.Match[str]) -> bool:
    text = m.group(0).replace(" ", "")
    if not 15 <= len(text) <= 34:
        return False
    moved = text[4:] + text[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


#: A time's seconds with their fraction (``14.025648`` of ``09:16:14.025648+00``), as
#: every timestamp with microseconds prints in a ``Failing row contains`` or ``Key``
#: detail: two digits, a dot and up to six, right after ``H:MM:``.
_SECONDS = re.compile(r"\d\d\.\d{1,6}\Z")
_CLOCK = re.compile(r"\d:\d\d:\Z")


def _phone(m: re.Match[str]) -> bool:
    text = m.group(0)
    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15:
        return False
    start = m.start()
    return not (_SECONDS.match(text) and _CLOCK.search(m.string, max(0, start - 5), start))


#: (entity, pattern, extra check) in the order they are tried; earlier ones win overlaps
DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None], ...] = (
    ("email", _EMAIL, None),
    ("iban", _IBAN, _iban),
    ("card", _CARD, _card),
    ("ssn", _SSN, None),
    ("phone", _PHONE, _phone),
)


def detect(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping findings ``(start, end, entity)`` in ``text``, in order."""
    found: list[tuple[int, int, str]] = []
    for entity, pattern, check in DETECTORS:
        for m in pattern.finditer(text):
            if check is not None and not check(m):
                continue
            s, e = m.span()
            if any(s < fe and fs < e for fs, fe, _ in found):
                continue
            found.append((s, e, entity))
    found.sort()
    return found


def replace_detected(text: str, token: Callable[[str, bytes], str]) -> str:
    """``text`` with every finding replaced by ``token(entity, value bytes)``."""
    found = detect(text)
    if not found:
        return text
    out = []
    pos = 0
    for s, e, entity in found:
        out.append(text[pos:s])
        out.append(token(entity, text[s:e].encode()))
        pos = e
    out.append(text[pos:])
    return "".join(out)
