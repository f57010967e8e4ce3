"""CPU cost of the relay per transaction, without sockets or a server: a replay.

pgbench ratios on a shared 2-core machine swing by ±10 % between runs, which hides
the difference a few microseconds of relay work make. This replays one pgbench
transaction's messages (select-only, in simple, extended and prepared mode) through a
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

    columns = frozenset({"aid", "bid", "abalance", "filler"})
    catalog = KeyCatalog(
        {"public.pgbench_accounts": Relation((frozenset({"aid"}),), False, columns)},
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
    mode: str, observer: bool, transactions: int = 20_000, runs: int = 5, audit: bool = False
) -> float:
    """Microseconds of relay CPU per transaction (best of ``runs``)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observer", action="store_true", help="attach a no-op observer")
    parser.add_argument(
        "--audit", action="store_true", help="windows, window charges and the audit trail"
    )
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs")
    parser.add_argument("--mode", action="append", choices=("simple", "extended", "prepared"))
    args = parser.parse_args()
    for mode in args.mode or ("simple", "extended", "prepared"):
        us = measure(mode, args.observer, args.transactions, args.runs, args.audit)
        print(f"{mode:9s} {us:6.2f} us/txn")


if __name__ == "__main__":
    main()
