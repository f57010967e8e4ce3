"""The last line of defence: no value that looks like PII reaches the audit table.

Callers mask statement text and parameters before they record them (the PII room
knows which literals touch PII columns). This module runs on every free-text value
just before it is hashed and written, and replaces whatever still *looks* like an
email address, a payment card number (Luhn-valid), a US social security number, a
phone number, a UK National Insurance number or an IBAN (mod-97-valid) with a marker
(``<email>``, ``<card>``, ``<ssn>``, ``<phone>``, ``<national_id>``, ``<iban>``), so
that a bug in a caller cannot put raw PII into an append-only, tamper-evident log
where it could never be removed. The record counts what was replaced (``scrubbed``):
anything above zero is a caller bug worth a look.

It errs towards scrubbing: a 16-digit id that passes the Luhn check is replaced too.
Every pattern is anchored at the start of a token (a look-behind) and uses bounded
repetitions, so hostile input (a megabyte of digits or of ``a``) is scanned in
linear time.
"""

from __future__ import annotations

import re

EMAIL_MARK = "<email>"
CARD_MARK = "<card>"
SSN_MARK = "<ssn>"
PHONE_MARK = "<phone>"
NATIONAL_ID_MARK = "<national_id>"
IBAN_MARK = "<iban>"

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w.%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){1,8}"
)
# 13-19 digits, optionally grouped by single spaces or dashes (4111 1111 1111 1111).
_CARD = re.compile(r"(?<![\d])\d(?:[ \-]?\d){12,18}(?![\d])")
# 123-45-6789 or 123 45 6789 (same separator), with the ranges the SSA never issues
# left alone (000, 666 and 9xx areas; 00 group; 0000 serial).
_SSN = re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}([ \-])(?!00)\d{2}\1(?!0000)\d{4}(?![\d\-])")
# North American numbers written the usual ways, and international +CC numbers.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-])\d{3}[ .\-]\d{4}(?:\s?x\d{1,6})?(?![\d])"
    r"|(?<![\w+])\+\d(?:[ .\-]?\d){7,14}(?![\d])"
)


# A UK National Insurance number, spaced or not (AB 12 34 56 C).
_NINO = re.compile(
    r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
)
# An IBAN, compact or in groups of four; checked with its mod-97 checksum.
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_ID_HINT = re.compile(r"[A-Z]{2} ?\d{2}")


def iban_valid(text: str) -> bool:
    """The mod-97 checksum of an IBAN (spaces ignored)."""
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class _Counter:
    """Replacement callbacks that count what they replaced (re.subn cannot skip)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def card(self, m: re.Match[str]) -> str:
        text = m.group(0)
        digits = text.replace(" ", "").replace("-", "")
        if not luhn_valid(digits):
            return text
        self.count += 1
        return CARD_MARK

    def iban(self, m: re.Match[str]) -> str:
        """The longest prefix of the match that ends at a group boundary and passes
        the checksum (the pattern may run on into a word that follows: ``… 32 AND``)."""
        text = m.group(0)
        ends = [len(text)] + [i for i in range(len(text) - 1, 0, -1) if text[i] == " "]
        for end in ends:
            if iban_valid(text[:end]):
                self.count += 1
                return IBAN_MARK + text[end:]
        return text


def scrub(text: str) -> tuple[str, int]:
    """``text`` with PII-looking values replaced, and how many were replaced."""
    if not text:
        return text, 0
    n = 0
    if "@" in text:
        text, k = _EMAIL.subn(EMAIL_MARK, text)
        n += k
    counter = _Counter()
    if _ID_HINT.search(text) is not None:  # two capitals and two digits
        text = _IBAN.sub(counter.iban, text)
        text, k = _NINO.subn(NATIONAL_ID_MARK, text)
        n += k
    n += counter.count
    counter.count = 0
    if not _has_digit_run(text):
        return text, n
    text = _CARD.sub(counter.card, text)
    n += counter.count
    text, k = _SSN.subn(SSN_MARK, text)
    n += k
    text, k = _PHONE.subn(PHONE_MARK, text)
    return text, n + k


_DIGITS3 = re.compile(r"\d\d\d")


def _has_digit_run(text: str) -> bool:
    """Every pattern but email needs three digits in a row somewhere (cheap pre-check)."""
    return _DIGITS3.search(text) is not None
