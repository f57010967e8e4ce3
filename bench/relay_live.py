"""CPU cost of dbgate per pgbench transaction, as configured, without sockets.

``relay_replay`` measures the relay with the rule pack alone; a running dbgate also
plans PII per statement, proves keys narrow, counts rows and tells its observers.
This starts a real :class:`~dbgate.app.App` from a dbgate config file (schema, keys
and PII catalog loaded from the live upstream, as ``dbgate serve`` does), then
drives one :class:`~dbgate.proxy.session.Session` with pgbench's transactions —
new random literals or parameters each time, like pgbench — through in-memory
channels. The upstream is a small scripted server that answers whatever the session
forwards (its own CPU is measured apart and subtracted), so the number is the
process CPU dbgate spends per transaction apart from the kernel's socket calls.

Run (the upstream in the config must be up and hold pgbench's tables)::

    python -m bench.relay_live -c dbgate.yaml --database bench --script tpcb --mode simple
    python -m bench.relay_live -c dbgate.yaml --database bench --profile 30 --runs 1

The best of several runs is reported: background load only ever makes a run slower.

It is a developer's tool: the scripted server is not PostgreSQL, only enough of one
for pgbench's statements.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import time
from typing import Any

from dbgate.proxy.session import Session
from dbgate.proxy.session_info import SessionInfo
from dbgate.wire import messages as m

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
TPCB = (
    "BEGIN",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "END",
)


class _Sink:
    """A channel whose writes are kept (upstream) or dropped (client)."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.out: list[bytes] = []
        self.closed = False
        self.transport = self
        self.on_close: Any = None
        self.on_pause_writing: Any = None
        self.on_resume_writing: Any = None

    def write(self, data: bytes) -> None:
        if self.keep:
            self.out.append(bytes(data))

    def writelines(self, pieces: list[bytes]) -> None:
        if self.keep:
            self.out.extend(bytes(p) for p in pieces)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def relay_to(self, sink: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


class ScriptedServer:
    """Answers pgbench's statements (and dbgate's own savepoints) like PostgreSQL
    would: one row for a SELECT, a tag for everything else."""

    def __init__(self, account_field: m.FieldDescription) -> None:
        self.row_description = m.RowDescription(fields=(account_field,)).encode()
        self.status = "I"
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}

    def _tag(self, sql: str) -> bytes:
        word = sql.lstrip().split(None, 1)[0].upper().rstrip(";")
        if word == "SELECT":
            return self.row_description + m.data_row([b"0"]) + m.command_complete("SELECT 1")
        if word in ("BEGIN", "START"):
            self.status = "T"
            return m.command_complete("BEGIN")
        if word in ("END", "COMMIT"):
            self.status = "I"
            return m.command_complete("COMMIT")
        if word == "INSERT":
            return m.command_complete("INSERT 0 1")
        if word in ("UPDATE", "DELETE"):
            return m.command_complete(f"{word} 1")
        return m.command_complete(word)

    def answer(self, data: bytes) -> bytes:
        out: list[bytes] = []
        view = memoryview(data)
        i = 0
        while i < len(data):
            kind = chr(data[i])
            length = int.from_bytes(data[i + 1 : i + 5], "big")
            body = bytes(view[i + 5 : i + 1 + length])
            i += 1 + length
            if kind == "Q":
                for sql in body[:-1].decode().split(";"):
                    if sql.strip():
                        out.append(self._tag(sql))
                out.append(m.ready_for_query(self.status))
            elif kind == "P":
                name, _, rest = body.partition(b"\0")
                self.statements[name.decode()] = rest.partition(b"\0")[0].decode()
                out.append(m.PARSE_COMPLETE)
            elif kind == "B":
                portal, _, rest = body.partition(b"\0")
                self.portals[portal.decode()] = self.statements[rest.partition(b"\0")[0].decode()]
                out.append(m.BIND_COMPLETE)
            elif kind == "D":
                which, name = body[:1], body[1:-1].decode()
                sql = (self.statements if which == b"S" else self.portals)[name]
                is_select = sql.lstrip().upper().startswith("SELECT")
                out.append(self.row_description if is_select else m.NO_DATA)
            elif kind == "E":
                sql = self.portals[body.partition(b"\0")[0].decode()]
                tag = self._tag(sql)
                if tag.startswith(self.row_description):
                    tag = tag[len(self.row_description) :]
                out.append(tag)
            elif kind == "C":
                out.append(m.CLOSE_COMPLETE)
            elif kind == "S":
                out.append(m.ready_for_query(self.status))
        return b"".join(out)


def _simple(sql: str, params: list[int]) -> bytes:
    for n, value in reversed(list(enumerate(params, 1))):
        sql = sql.replace(f"${n}", str(value))
    return m.query(sql)


def _params(sql: str, rng: random.Random) -> list[int]:
    count = sql.count("$")
    return [rng.randint(1, 1_000_000) if n else rng.randint(-5000, 5000) for n in range(count)]


def transactions(
    script: str, mode: str, n: int, seed: int = 7
) -> tuple[list[bytes], list[list[bytes]]]:
    """(setup messages, per transaction: the client's messages, one per statement)."""
    rng = random.Random(seed)
    statements = [SELECT] if script == "select" else list(TPCB)
    setup: list[bytes] = []
    if mode == "prepared":
        for k, sql in enumerate(statements):
            setup.append(m.Parse(f"P0_{k}", sql).encode() + m.SYNC)
    out = []
    for _ in range(n):
        txn = []
        for k, sql in enumerate(statements):
            params = _params(sql, rng)
            if mode == "simple":
                txn.append(_simple(sql, params))
                continue
            values = tuple(str(p).encode() for p in params)
            parts = [] if mode == "prepared" else [m.Parse("", sql).encode()]
            name = f"P0_{k}" if mode == "prepared" else ""
            parts += [
                m.Bind("", name, params=values).encode(),
                m.Describe("P", "").encode(),
                m.Execute("", 0).encode(),
                m.SYNC,
            ]
            txn.append(b"".join(parts))
        out.append(txn)
    return setup, out


async def _field(config: Any, database: str) -> m.FieldDescription:
    import asyncpg

    from dbgate.gate.schema_loads import upstream_dsn

    conn = await asyncpg.connect(**upstream_dsn(config, database))
    try:
        oid, attnum = await conn.fetchrow(
            "SELECT a.attrelid::int, a.attnum::int FROM pg_attribute a "
            "WHERE a.attrelid = 'pgbench_accounts'::regclass AND a.attname = 'abalance'"
        )
    finally:
        await conn.close()
    return m.FieldDescription("abalance", oid, attnum, 23, 4, -1, 0)


async def run(args: argparse.Namespace) -> None:
    from dbgate.app import App
    from dbgate.config import load_config

    config = load_config(args.config)
    app = App(config, check_upstream=False)
    await app.start()
    try:
        if app.pii is not None:
            await app.pii.ensure(args.database)
        if app.keys is not None:
            await app.keys.ensure(args.database)
        field = await _field(config, args.database)
        setup, txns = transactions(args.script, args.mode, args.transactions * (args.runs + 1))
        upstream = _Sink(keep=True)
        server = ScriptedServer(field)
        info = SessionInfo(
            session_id=1,
            identity=config.identities[0].name,
            database=args.database,
            application_name="pgbench",
            client_addr="127.0.0.1:1",
            server_params={
                "standard_conforming_strings": "on",
                "client_encoding": "UTF8",
                "search_path": '"$user", public',
                "session_authorization": config.upstream.user or "",
                "server_version": "18.0",
            },
        )
        session = Session(
            info=info,
            client=_Sink(keep=False),  # type: ignore[arg-type]
            upstream=upstream,  # type: ignore[arg-type]
            inspector=app.gate,
            observer=app.observer,
            message_filter=app.pii.filter if app.pii is not None else None,
            max_message_size=config.limits.max_message_size,
            on_closed=lambda s: None,
        )
        session.start()
        serving = [0.0]

        async def exchange(data: bytes) -> None:
            session.on_client_data(data)
            for _ in range(100):  # an awaited verdict (a cold plan) answers on a later turn
                if upstream.out:
                    break
                await asyncio.sleep(0)
            t0 = time.process_time()
            sent, upstream.out[:] = b"".join(upstream.out), []
            answer = server.answer(sent)
            serving[0] += time.process_time() - t0
            session.on_server_data(answer)

        for msg in setup:
            await exchange(msg)
        n = args.transactions
        for txn in txns[:n]:  # warm-up: caches, plans, the interpreter's own
            for msg in txn:
                await exchange(msg)
        profiler = cProfile.Profile() if args.profile else None
        best = float("inf")
        for run in range(1, args.runs + 1):
            serving[0] = 0.0
            started = time.process_time()
            if profiler:
                profiler.enable()
            for txn in txns[run * n : (run + 1) * n]:
                for msg in txn:
                    await exchange(msg)
            if profiler:
                profiler.disable()
            best = min(best, (time.process_time() - started - serving[0]) / n)
        print(
            f"{args.script} -M {args.mode}: {best * 1e6:.1f} us of dbgate CPU per "
            f"transaction (best of {args.runs} runs of {n}{', under cProfile' if profiler else ''})"
        )
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(args.profile)
            stats.sort_stats("cumtime").print_stats("dbgate/", args.profile)
    finally:
        await app.stop(grace=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="dbgate config file")
    parser.add_argument("--database", default="bench")
    parser.add_argument("--script", choices=("select", "tpcb"), default="tpcb")
    parser.add_argument("--mode", choices=("simple", "extended", "prepared"), default="simple")
    parser.add_argument("--transactions", type=int, default=1000, help="per run")
    parser.add_argument("--runs", type=int, default=5, help="best of this many runs")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
