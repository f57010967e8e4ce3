"""The verifier: records fed in ``(chain, seq)`` order, each chain recomputed and
the first edited, deleted, inserted or reordered record named (what each finding
means: :mod:`dbgate.audit.verify`). Pure: the sources that feed it are
:mod:`~dbgate.audit.verify.database` and :mod:`~dbgate.audit.verify.files`."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dbgate.audit.canonical import FORMAT, GENESIS, digest, link, parse_canonical
from dbgate.audit.times import iso

_sha256 = hashlib.sha256

try:  # sha256(prev || sha256(content)) in one call (dbgate/audit/_seal.c)
    from dbgate.audit._seal import chain_hash as _chain_hash
except ImportError:  # pragma: no cover - depends on the build

    def _chain_hash(prev: bytes, content: bytes) -> bytes:
        return link(prev, digest(content))


_unhex = bytes.fromhex
_DIAGNOSE_OFFSETS = (-1, 1, -2, 2, -3, 3)


@dataclass(slots=True)
class Finding:
    """One thing wrong with one chain (only the first per chain is reported)."""

    chain: str
    problem: str  # edited | deleted | inserted | reordered
    message: str
    seq: int | None = None
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "problem": self.problem,
            "seq": self.seq,
            "id": self.id,
            "message": self.message,
        }


@dataclass(slots=True)
class ChainSummary:
    first_seq: int
    last_seq: int
    records: int
    last_hash: bytes
    closed: bool


@dataclass
class Report:
    """What verification found; ``ok`` when nothing is wrong."""

    source: str
    records: int = 0
    chains: dict[str, ChainSummary] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "records": self.records,
            "chains": {
                name: {
                    "first_seq": c.first_seq,
                    "last_seq": c.last_seq,
                    "records": c.records,
                    "head": c.last_hash.hex(),
                    "closed": c.closed,
                }
                for name, c in sorted(self.chains.items())
            },
            "findings": [f.as_dict() for f in self.findings],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        closed = sum(1 for c in self.chains.values() if c.closed)
        head = (
            f"audit verify ({self.source}): {self.records:,} records in {len(self.chains)} "
            f"chains ({closed} closed, {len(self.chains) - closed} still open or ended by a crash)"
        )
        lines = [head]
        if self.ok:
            lines.append("intact: every chain recomputes and links")
        else:
            lines.append(f"TAMPERED: {len(self.findings)} chain(s) fail verification")
            for f in self.findings:
                lines.append(f"  {f.problem}: {f.message}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


class _Chain:
    __slots__ = (
        "broken",
        "closed",
        "first_seq",
        "last_hash",
        "last_seq",
        "missing",
        "recent",
        "records",
        "renumbered",
    )

    def __init__(self) -> None:
        self.first_seq = 0
        self.last_seq = 0
        self.last_hash = GENESIS
        self.records = 0
        self.closed = False
        self.broken = False
        self.recent: deque[tuple[int, bytes, int | None]] = deque(maxlen=16)
        # A record found renumbered to an earlier seq whose predecessor has not been
        # seen: if the predecessor comes later, records were reordered; if it never
        # comes, it was deleted. Decided when it shows up, or at the end.
        self.missing: bytes | None = None
        self.renumbered: Finding | None = None


def _where(chain: str, seq: int, record_id: int | None) -> str:
    return f"chain {chain} seq {seq}" + (f" (id {record_id})" if record_id is not None else "")


def _with_seq(content: bytes, seq: int) -> bytes | None:
    """The canonical bytes with another ``seq`` (the second number)."""
    prefix = f"[[{FORMAT},".encode()
    if not content.startswith(prefix):
        return None
    end = content.find(b",", len(prefix))
    if end < 0:
        return None
    return prefix + str(seq).encode() + content[end:]


class Verifier:
    """Feed records of each chain in ``seq`` order (chains may interleave)."""

    def __init__(
        self,
        source: str,
        anchors: dict[tuple[str, int], bytes] | None = None,
        heads: Iterable[tuple[Any, ...]] = (),
        segments_allowed: bool = False,
        anchor_ends: dict[tuple[str, int], int] | None = None,
    ) -> None:
        self.report = Report(source)
        self._chains: dict[str, _Chain] = {}
        self._anchors = anchors or {}
        # the end of each anchor's archived month (µs since the epoch): every record
        # the anchor accounts for was logged before it, every record after it at or after
        self._anchor_ends = anchor_ends or {}
        self._heads: dict[tuple[str, int], bytes] = {}
        # (chain, seq) -> logged_at (µs) of the anchored head, when its line says
        self._head_times: dict[tuple[str, int], int] = {}
        for head in heads:
            chain, seq, h = head[0], head[1], head[2]
            self._heads[(chain, seq)] = h
            if len(head) > 3 and head[3] is not None:
                self._head_times[(chain, seq)] = head[3]
        # chains whose archive anchor no archive can have written (reject_anchor)
        self._rejected: set[str] = set()
        self._heads_seen: set[tuple[str, int]] = set()
        self._segments_allowed = segments_allowed  # a file may start a chain mid-way
        self._started = time.perf_counter()

    # ------------------------------------------------------------------ feeding

    def feed(
        self,
        chain: str,
        seq: int,
        record_id: int | None,
        prev: bytes,
        hash_: bytes,
        content: bytes | None,
        content_digest: bytes | None = None,
        chain_end: bool = False,
    ) -> None:
        """One record. ``content`` is its canonical bytes; for a link (an export that
        left the record out) ``content`` is None and ``content_digest`` is given."""
        if chain is None or seq is None:
            self.report.records += 1
            self.report.findings.append(
                Finding(
                    chain or "(none)",
                    "inserted",
                    f"a record with no {'chain' if chain is None else 'seq'}"
                    + (f" (id {record_id})" if record_id is not None else "")
                    + " is in the trail: no writer writes one (the table's NOT NULL "
                    "constraints were dropped), it was inserted",
                    seq,
                    record_id,
                )
            )
            return
        st = self._chains.get(chain)
        if st is None:
            st = self._chains[chain] = _Chain()
            st.broken = chain in self._rejected
        self.report.records += 1
        st.records += 1
        if st.broken:
            if st.missing is not None and st.missing == hash_:
                st.missing = None  # the predecessor is here, later: a reorder
            return
        d = _sha256(content).digest() if content is not None else content_digest
        if d is None or _sha256(prev + d).digest() != hash_:
            self._self_mismatch(chain, st, seq, record_id, prev, hash_, content)
            return
        if (chain, seq) in self._heads:
            self._heads_seen.add((chain, seq))
            if self._heads[(chain, seq)] != hash_:
                self._fail(
                    chain,
                    st,
                    "edited",
                    seq,
                    record_id,
                    f"{_where(chain, seq, record_id)} differs from the head anchored outside "
                    "the database: the chain was rewritten from here on",
                )
                return
        if st.first_seq == 0:
            if not self._start(chain, st, seq, record_id, prev, content):
                return
        elif seq == st.last_seq + 1 and prev == st.last_hash:
            pass
        elif seq <= st.last_seq:
            self._fail(
                chain,
                st,
                "inserted",
                seq,
                record_id,
                f"{_where(chain, seq, record_id)}: a second record claims seq {seq}; "
                "a record was inserted (or copied)",
            )
            return
        elif seq > st.last_seq + 1:
            if prev == st.last_hash:
                message = (
                    f"{_where(chain, seq, record_id)} follows seq {st.last_seq} but claims "
                    f"seq {seq}: it was inserted with a forged hash"
                )
                self._fail(chain, st, "inserted", seq, record_id, message)
            else:
                missing = (
                    f"seq {st.last_seq + 1}"
                    if seq == st.last_seq + 2
                    else f"seq {st.last_seq + 1} to {seq - 1}"
                )
                self._fail(
                    chain,
                    st,
                    "deleted",
                    st.last_seq + 1,
                    None,
                    f"chain {chain}: {missing} missing (deleted) before "
                    f"{_where(chain, seq, record_id)}",
                )
            return
        else:
            self._link_mismatch(chain, st, seq, record_id, prev)
            return
        if st.closed:
            self._fail(
                chain,
                st,
                "inserted",
                seq,
                record_id,
                f"{_where(chain, seq, record_id)} comes after the chain's chain_end record: "
                "its writer never wrote it",
            )
            return
        st.last_seq = seq
        st.last_hash = hash_
        st.recent.append((seq, hash_, record_id))
        if chain_end:
            st.closed = True

    def feed_rows(self, rows: Iterable[Any]) -> None:
        """Rows of ``(chain, seq, id, prev, hash, content, chain_end)``, the hashes in hex.

        The common case — the next record of an intact chain — is checked inline;
        anything else goes through :meth:`feed`, which finds and names the problem.
        """
        chains, heads, feed, link, unhex = self._chains, self._heads, self.feed, _chain_hash, _unhex
        fast = 0
        for chain, seq, record_id, prev_hex, hash_hex, content, end in rows:
            prev, hash_ = unhex(prev_hex), unhex(hash_hex)
            st = chains.get(chain)
            if (
                st is None
                or st.broken
                or st.closed
                or end
                or st.first_seq == 0
                or seq != st.last_seq + 1
                or prev != st.last_hash
                or (heads and (chain, seq) in heads)
                or link(prev, content) != hash_
            ):
                feed(chain, seq, record_id, prev, hash_, content, None, end)
                continue
            st.last_seq = seq
            st.last_hash = hash_
            st.records += 1
            st.recent.append((seq, hash_, record_id))
            fast += 1
        self.report.records += fast

    def _start(
        self,
        chain: str,
        st: _Chain,
        seq: int,
        record_id: int | None,
        prev: bytes,
        content: bytes | None = None,
    ) -> bool:
        if seq == 1:
            if prev != GENESIS:
                self._fail(
                    chain,
                    st,
                    "inserted",
                    seq,
                    record_id,
                    f"{_where(chain, seq, record_id)} claims to start the chain but does "
                    "not link to its beginning",
                )
                return False
        elif self._anchors.get((chain, seq - 1)) == prev:
            end = self._anchor_ends.get((chain, seq - 1))
            if end is not None and content is not None:
                logged = parse_canonical(content)["logged_at"]
                if isinstance(logged, int) and logged < end:
                    self._fail(
                        chain,
                        st,
                        "deleted",
                        1,
                        None,
                        f"{_where(chain, seq, record_id)} was logged before the end of the "
                        f"month its archive anchor (seq {seq - 1}) says was archived: no "
                        "archive wrote that anchor, and the records it accounts for were "
                        "deleted",
                    )
                    return False
            self.report.notes.append(
                f"chain {chain} continues from archive anchor seq {seq - 1} "
                "(earlier months were archived)"
            )
        elif self._segments_allowed:
            self.report.notes.append(
                f"chain {chain} starts at seq {seq} in this file (earlier records are not in it)"
            )
        else:
            self._fail(
                chain,
                st,
                "deleted",
                1,
                None,
                f"chain {chain}: seq 1 to {seq - 1} missing (deleted) before "
                f"{_where(chain, seq, record_id)}, and no archive anchor accounts for them",
            )
            return False
        st.first_seq = seq
        return True

    def _self_mismatch(
        self,
        chain: str,
        st: _Chain,
        seq: int,
        record_id: int | None,
        prev: bytes,
        hash_: bytes,
        content: bytes | None,
    ) -> None:
        where = _where(chain, seq, record_id)
        if content is not None:
            for delta in _DIAGNOSE_OFFSETS:
                other = _with_seq(content, seq + delta)
                if other is None or _sha256(prev + _sha256(other).digest()).digest() != hash_:
                    continue
                original = seq + delta
                seen = {h: s for s, h, _ in st.recent}
                if prev in seen and original == seen[prev] + 1 and seq > original:
                    first = next((r for r in st.recent if r[0] == original), None)
                    first_where = (
                        _where(chain, original, first[2])
                        if first is not None
                        else f"seq {original}"
                    )
                    message = (
                        f"{first_where} was inserted: the record that followed seq "
                        f"{seen[prev]} (now {where}) was renumbered from seq {original}"
                    )
                    self._fail(chain, st, "inserted", original, None, message)
                elif seq < original and prev not in seen:
                    message = (
                        f"{where} was reordered: it was written as seq {original}, "
                        "after a record that now comes later"
                    )
                    self._fail(chain, st, "reordered", seq, record_id, message)
                    st.missing = prev
                    st.renumbered = self.report.findings[-1]
                else:
                    message = (
                        f"{where} was renumbered from seq {original}: records were "
                        "deleted, inserted or reordered before it"
                    )
                    self._fail(chain, st, "reordered", seq, record_id, message)
                return
        self._fail(
            chain,
            st,
            "edited",
            seq,
            record_id,
            f"{where} was edited: its content no longer matches its hash",
        )

    def _link_mismatch(
        self, chain: str, st: _Chain, seq: int, record_id: int | None, prev: bytes
    ) -> None:
        for s, h, _ in st.recent:
            if h == prev and s < st.last_seq:
                message = (
                    f"{_where(chain, s + 1, next((r[2] for r in st.recent if r[0] == s + 1), None))}"
                    f" was inserted: {_where(chain, seq, record_id)} links to seq {s}"
                )
                self._fail(chain, st, "inserted", s + 1, None, message)
                return
        last_id = st.recent[-1][2] if st.recent else None
        self._fail(
            chain,
            st,
            "edited",
            st.last_seq,
            last_id,
            f"{_where(chain, st.last_seq, last_id)} was edited and its hash recomputed "
            f"(or replaced): {_where(chain, seq, record_id)} does not link to it",
        )

    def reject_anchor(self, chain: str, seq: int, message: str) -> None:
        """An archive anchor of ``chain`` that no archive can have written (before any
        record is fed): it accounts for nothing, and the chain is reported as deleted."""
        if chain in self._rejected:
            return
        self._rejected.add(chain)
        # the first record it accounts for: after the chain's anchor before it, if any
        first = 1 + max((s for c, s in self._anchors if c == chain and s < seq), default=0)
        self._anchors = {k: v for k, v in self._anchors.items() if k[0] != chain}
        self.report.findings.append(Finding(chain, "deleted", message, first))

    def _note_unanchored(self) -> None:
        """Say what no anchored head vouches for: whole chains without one (a chain
        forged with its registration looks just like them) and the records after each
        chain's last one (they could be deleted unseen)."""
        last: dict[str, int] = {}
        for chain, seq in self._heads:
            last[chain] = max(seq, last.get(chain, 0))
        bare = sorted(c for c, st in self._chains.items() if c not in last and not st.broken)
        after = sum(
            st.last_seq - last[c]
            for c, st in self._chains.items()
            if c in last and not st.broken and st.last_seq > last[c]
        )
        if bare:
            records = sum(self._chains[c].records for c in bare)
            shown = ", ".join(bare[:5]) + (f" and {len(bare) - 5} more" if len(bare) > 5 else "")
            self.report.notes.append(
                f"{len(bare)} chain(s) ({records:,} records) have no head in the anchored "
                f"heads, so nothing outside the database vouches for them: {shown}"
            )
        if after:
            self.report.notes.append(
                f"{after:,} record(s) come after their chain's last anchored head: "
                "records deleted from there on would not show"
            )

    def _fail(
        self, chain: str, st: _Chain, problem: str, seq: int, record_id: int | None, message: str
    ) -> None:
        st.broken = True
        self.report.findings.append(Finding(chain, problem, message, seq, record_id))

    # ------------------------------------------------------------------ the end

    def finish(
        self, registered: Iterable[str] | None = None, archived_chains: Iterable[str] = ()
    ) -> Report:
        report = self.report
        for st in self._chains.values():
            f = st.renumbered
            if f is not None and st.missing is not None:  # the predecessor never came
                f.problem = "deleted"
                f.message = (
                    f"{_where(f.chain, f.seq or 0, f.id)} was renumbered from a later seq: "
                    "the record before it was deleted and the rest renumbered to hide it"
                )
        for name, st in self._chains.items():
            report.chains[name] = ChainSummary(
                st.first_seq, st.last_seq, st.records, st.last_hash, st.closed
            )
        archived_to: dict[str, int] = {}
        for chain, seq in self._anchors:
            archived_to[chain] = max(seq, archived_to.get(chain, 0))
        for (chain, seq), h in sorted(self._heads.items()):
            if (chain, seq) in self._heads_seen or chain in self._rejected:
                continue
            st = self._chains.get(chain)
            if st is not None and st.broken:
                continue
            if seq <= archived_to.get(chain, 0):
                # in a month archived since (its file holds the proof), if the head was
                # logged before that month ended: else the anchor is forged
                anchor = min(s for c, s in self._anchors if c == chain and s >= seq)
                end = self._anchor_ends.get((chain, anchor))
                logged = self._head_times.get((chain, seq))
                if end is None or logged is None or logged < end:
                    continue
                report.findings.append(
                    Finding(
                        chain,
                        "deleted",
                        f"chain {chain}: seq {seq}, anchored outside the database with hash "
                        f"{h.hex()[:16]}... and logged at {iso(logged)}, is missing, and the "
                        f"archive anchor at seq {anchor} says it left with a month that ended "
                        "before it was logged: no archive wrote that anchor, and the records "
                        "it accounts for were deleted",
                        seq,
                    )
                )
                self._rejected.add(chain)
                continue
            if st is not None and st.first_seq and seq < st.first_seq and self._segments_allowed:
                continue  # before the part of the chain this file holds
            have = f"it ends at seq {st.last_seq}" if st is not None else "it has no records"
            report.findings.append(
                Finding(
                    chain,
                    "deleted",
                    f"chain {chain}: seq {seq}, anchored outside the database with hash "
                    f"{h.hex()[:16]}..., is missing ({have}): records were deleted from "
                    "the end of the chain",
                    seq,
                )
            )
        if registered is not None:
            registered = set(registered)
            archived = set(archived_chains) | self._rejected
            for chain in sorted(registered - set(self._chains) - archived):
                report.findings.append(
                    Finding(
                        chain,
                        "deleted",
                        f"chain {chain} is registered in dbgate.audit_writers but has no "
                        "records and no archive anchor: all its records were deleted",
                    )
                )
            for chain in sorted(set(self._chains) - registered):
                report.findings.append(
                    Finding(
                        chain,
                        "inserted",
                        f"chain {chain} has records but no writer registered it: it was inserted",
                    )
                )
        if self._heads:
            self._note_unanchored()
        report.findings.sort(key=lambda f: (f.chain, f.seq or 0))
        report.seconds = time.perf_counter() - self._started
        return report


def print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text())
        print(
            f"  {report.records:,} records in {report.seconds:.2f}s ({report.rate:,.0f}/s)",
            file=sys.stderr,
        )
