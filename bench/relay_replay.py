"""CPU cost of the relay per transaction, without sockets or a server: a replay.

pgbench ratios on a shared 2-core machine swing by ±10 % between runs, which hides
the difference a few microseconds of relay work make. This replays one pgbench
transaction's messages (select-only, or with ``--script tpcb`` the TPC-B-like one, a
statement and its answer at a time; in simple, extended and prepared mode) through a
real :class:`~dbgate.proxy.session.Session` with the real policy inspector and the
default rule pack, with in-memory channels in place of sockets, and reports the
microseconds of relay CPU per transaction (best of several runs, so background load
only ever makes it look slower). Compare two trees by running it in each.

Run as ``python -m bench.relay_replay [--observer | --audit]``; ``--observer``
attaches a no-op observer; ``--audit`` runs what the ``dbgate-audit`` target adds to
the relay's process: the benchmark's rules with their rows-per-window limits (over a
local count, no state database), the window charges, and the audit trail with the
writer's per-record work (build, hash, COPY row; the COPY itself is not sent). For
numbers that do not move with the machine's load, count instructions instead:
``python -m bench.relay_instructions`` runs this under valgrind's callgrind.
"""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

from dbgate.proxy.session import Session
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Channel:
    """Enough of proxy.channel.Channel for a Session: writes go nowhere."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.closed = False
        self.on_close: Any = None
        self.on_pause_writing: Any = None
        self.on_resume_writing: Any = None
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, pieces: list[bytes]) -> None:
        self.written += sum(map(len, pieces))

    def relay_to(self, sink: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _NoopObserver:
    ignores: frozenset[str] = frozenset()  # hears every event

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class _ReplayWriter:
    """An AuditWriter's side in the relay's process, without a state database: each
    record is built, chained, hashed and encoded as it comes (what the writer's task
    does with it), then dropped."""

    available = True
    on_available: Any = None

    def __init__(self) -> None:
        from dbgate.audit.canonical import GENESIS
        from dbgate.audit.rows import RowBuilder

        self._builder = RowBuilder("replay", b"replay-key")
        self._head = GENESIS
        self._seq = 0

    def admit(self) -> None:
        return None

    def admits_now(self) -> bool:
        return True

    def record(self, event: object) -> None:
        self._seq += 1
        now = round(time.time() * 1e6)
        _, self._head, _ = self._builder.sealed(
            event, now, "replay.chain", self._seq, now, self._head
        )


def _audited() -> tuple[Any, Any]:
    """(inspector, observer) of a dbgate with a state database: the bench's rules
    (their windows counted locally, read as empty), window charges, the audit trail."""
    import tempfile
    from pathlib import Path

    from bench.dbgate_target import write_rules
    from dbgate.gate import Gate
    from dbgate.gate.audit import AuditTrail
    from dbgate.gate.observers import FanOut
    from dbgate.gate.row_window import RowWindows
    from dbgate.gate.windows import WindowCharges
    from dbgate.policy.rules import load_rules

    with tempfile.TemporaryDirectory() as tmp:
        rules = load_rules(write_rules(Path(tmp) / "rules"))
    windows = RowWindows(None, "replay", monotonic=lambda: 0.0)  # type: ignore[arg-type]
    windows.ledger.read_totals({}, [3600])  # a read of the shared totals: nobody read
    windows._read_ok_at = 0.0  # ... just now, as far as its clock goes (never stale)
    trail = AuditTrail(_ReplayWriter())  # type: ignore[arg-type]
    gate = Gate(rules, keys=_keys(), windows=windows, audit=trail)
    return gate, FanOut([WindowCharges(windows), trail])


def _row_description() -> bytes:
    return m.RowDescription(
        fields=(m.FieldDescription("abalance", 16384, 3, 23, 4, -1, 0),)
    ).encode()


def _server_answer(extended: bool) -> bytes:
    parts = [m.PARSE_COMPLETE, m.BIND_COMPLETE] if extended else []
    parts += [
        _row_description(),
        m.data_row([b"0"]),
        m.command_complete("SELECT 1"),
        m.ready_for_query("I"),
    ]
    return b"".join(parts)


#: pgbench's TPC-B-like transaction: (statement, its answer's rows and tag, status after).
_TPCB = (
    ("BEGIN", None, "BEGIN", "T"),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", None, "UPDATE 1", "T"),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", b"0", "SELECT 1", "T"),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", None, "UPDATE 1", "T"),
    ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2", None, "UPDATE 1", "T"),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        None,
        "INSERT 0 1",
        "T",
    ),
    ("END", None, "COMMIT", "I"),
)


def _tpcb_values(sql: str, k: int) -> tuple[bytes, ...]:
    return tuple(str(k * 7 + j + 1).encode() for j in range(sql.count("$")))


def _tpcb_workload(mode: str) -> tuple[bytes, bytes, list[list[tuple[bytes, bytes]]]]:
    """(setup client bytes, their answer, transactions): each transaction is its
    statements, each sent and answered in turn, as pgbench runs them."""
    setup = b""
    if mode == "prepared":
        setup = b"".join(m.Parse(f"P0_{i}", sql).encode() for i, (sql, *_) in enumerate(_TPCB))
    txns = []
    for k in range(50):
        steps = []
        for i, (sql, row, tag, status) in enumerate(_TPCB):
            values = _tpcb_values(sql, k)
            answer: list[bytes] = []
            if mode == "simple":
                text = sql
                for j in range(len(values), 0, -1):
                    text = text.replace(f"${j}", values[j - 1].decode())
                client = m.query(text)
            else:
                parse = m.Parse("", sql).encode() if mode == "extended" else b""
                name = "" if mode == "extended" else f"P0_{i}"
                client = b"".join(
                    (
                        parse,
                        m.Bind("", name, params=values).encode(),
                        m.Describe("P", "").encode(),
                        m.Execute("", 0).encode(),
                        m.SYNC,
                    )
                )
                answer += [m.PARSE_COMPLETE] if parse else []
                answer += [m.BIND_COMPLETE] + ([] if row is not None else [m.NO_DATA])
            if row is not None:
                answer += [_row_description(), m.data_row([row])]
            answer += [m.command_complete(tag), m.ready_for_query(status)]
            steps.append((client, b"".join(answer)))
        txns.append(steps)
    setup_answer = m.PARSE_COMPLETE * len(_TPCB) + m.ready_for_query("I") if setup else b""
    return setup + (m.SYNC if setup else b""), setup_answer, txns


def _workloads() -> dict[str, tuple[list[bytes], list[bytes], bytes]]:
    """mode -> (setup client messages, per-transaction client bytes (one per txn
    variant), per-transaction server bytes)."""
    simple = [m.query(SELECT.replace("$1", str(aid))) for aid in range(1, 1001)]
    extended = [
        b"".join(
            (
                m.Parse("", SELECT).encode(),
                m.Bind("", "", params=(str(aid).encode(),)).encode(),
                m.Describe("P", "").encode(),
                m.Execute("", 0).encode(),
                m.SYNC,
            )
        )
        for aid in range(1, 101)
    ]
    prepared = [
        b"".join(
            (
                m.Bind("", "P0_1", params=(str(aid).encode(),)).encode(),
                m.Describe("P", "").encode(),
                m.Execute("", 0).encode(),
                m.SYNC,
            )
        )
        for aid in range(1, 101)
    ]
    setup = [m.Parse("P0_1", SELECT).encode() + m.SYNC]
    setup_answer = m.PARSE_COMPLETE + m.ready_for_query("I")
    answer_simple = _server_answer(False)
    answer_ext = _server_answer(True)
    answer_prepared = m.BIND_COMPLETE + b"".join(
        (
            _row_description(),
            m.data_row([b"0"]),
            m.command_complete("SELECT 1"),
            m.ready_for_query("I"),
        )
    )
    return {
        "simple": ([], simple, answer_simple),
        "extended": ([], extended, answer_ext),
        "prepared": ([setup_answer, *setup], prepared, answer_prepared),
    }


def _keys() -> Any:
    """pgbench_accounts' primary key, as the gate would have loaded it from the
    server: with it the replayed SELECT is proven narrow (one row by ``aid``), as it
    is through a running dbgate, and runs without a row limit."""
    from dbgate.gate.keys import KeyCatalogs
    from dbgate.gate.schema_loads import SchemaLoads
    from dbgate.policy.keys import KeyCatalog, Relation

    async def never(database: str) -> KeyCatalog:  # pragma: no cover - preloaded
        raise RuntimeError("the replay's keys are preloaded")

    catalog = KeyCatalog(
        {
            "public.pgbench_accounts": Relation(
                (frozenset({"aid"}),), False, frozenset({"aid", "bid", "abalance", "filler"})
            ),
            "public.pgbench_tellers": Relation(
                (frozenset({"tid"}),), False, frozenset({"tid", "bid", "tbalance", "filler"})
            ),
            "public.pgbench_branches": Relation(
                (frozenset({"bid"}),), False, frozenset({"bid", "bbalance", "filler"})
            ),
            "public.pgbench_history": Relation(
                (), False, frozenset({"tid", "bid", "aid", "delta", "mtime", "filler"})
            ),
        },
        ("public",),
        "replay",
    )
    keys = object.__new__(KeyCatalogs)
    keys.loads = SchemaLoads("the unique keys", never)
    keys.loads.loaded["bench"] = catalog
    return keys


def _session(observer: bool, audit: bool = False) -> Session:
    from dbgate.gate import Gate
    from dbgate.policy.rules import load_rules

    info = SessionInfo(
        session_id=1,
        identity="bench" if audit else "agent",
        database="bench",
        application_name="pgbench",
        client_addr="127.0.0.1:1",
        server_params={"standard_conforming_strings": "on", "client_encoding": "UTF8"},
    )
    kwargs: dict[str, Any] = {
        "info": info,
        "client": _Channel(),
        "upstream": _Channel(),
        "inspector": Gate(load_rules(), keys=_keys()),
        "max_message_size": 1 << 26,
        "on_closed": lambda s: None,
    }
    params = inspect.signature(Session).parameters
    if "transformer" in params:
        kwargs["transformer"] = None
    if observer and "observer" in params:
        kwargs["observer"] = _NoopObserver()
    if audit:
        kwargs["inspector"], kwargs["observer"] = _audited()
    session = Session(**kwargs)
    session.start()
    return session


def measure(
    mode: str,
    observer: bool,
    transactions: int = 20_000,
    runs: int = 5,
    audit: bool = False,
    script: str = "select",
) -> float:
    """Microseconds of relay CPU per transaction (best of ``runs``)."""
    if script == "tpcb":
        return _measure_steps(mode, observer, transactions, runs, audit)
    setup_msgs, txns, answer = _workloads()[mode]
    best = float("inf")
    for _ in range(runs):
        session = _session(observer, audit)
        if setup_msgs:
            session.on_client_data(setup_msgs[1])
            session.on_server_data(setup_msgs[0])
        n = len(txns)
        client = session.on_client_data
        server = session.on_server_data
        started = time.process_time()
        for i in range(transactions):
            client(txns[i % n])
            server(answer)
        elapsed = time.process_time() - started
        best = min(best, elapsed / transactions * 1e6)
    return best


def _measure_steps(mode: str, observer: bool, transactions: int, runs: int, audit: bool) -> float:
    setup, setup_answer, txns = _tpcb_workload(mode)
    best = float("inf")
    for _ in range(runs):
        session = _session(observer, audit)
        if setup:
            session.on_client_data(setup)
            session.on_server_data(setup_answer)
        n = len(txns)
        client = session.on_client_data
        server = session.on_server_data
        started = time.process_time()
        for i in range(transactions):
            for sent, answer in txns[i % n]:
                client(sent)
                server(answer)
        elapsed = time.process_time() - started
        best = min(best, elapsed / transactions * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observer", action="store_true", help="attach a no-op observer")
    parser.add_argument(
        "--audit", action="store_true", help="windows, window charges and the audit trail"
    )
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs")
    parser.add_argument("--mode", action="append", choices=("simple", "extended", "prepared"))
    parser.add_argument("--script", choices=("select", "tpcb"), default="select")
    args = parser.parse_args()
    for mode in args.mode or ("simple", "extended", "prepared"):
        us = measure(mode, args.observer, args.transactions, args.runs, args.audit, args.script)
        print(f"{mode:9s} {us:6.2f} us/txn")


if __name__ == "__main__":
    main()
