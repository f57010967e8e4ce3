"""Shared pieces of the PII tests: the demo dataset in a test database, a PII room over
it, the raw PII values read directly, and "run a query on the real server, then put
its messages through the room" (what the relay will do with them).

Everything here talks to the session's real PostgreSQL; nothing is mocked. The raw
protocol client (rawclient.py) fetches the server's own bytes, so the rewriters are
tested on exactly what a relay would see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dbgate.pii.catalog_load import load_catalog
from dbgate.pii.plans import StatementPlan
from dbgate.pii.room import PiiRoom, PiiSettings
from dbgate.pii.tokens import Key, Keyring, Tokenizer
from dbgate.proxy.row_limit import rewrite_run
from dbgate.wire import messages as m
from dbgate.wire.framing import split_frames
from tests.integration.rawclient import RawClient

DEMO_CUSTOMERS = 400
TEST_KEY = Key("test", b"dbgate-pii-test-key-0123456789abcdef")

PII_QUERY = """
SELECT full_name, email, phone, ssn, address FROM customers
UNION ALL SELECT card_number, NULL, NULL, NULL, NULL FROM payments
"""


def make_room(settings: PiiSettings | None = None, mode: str = "reversible") -> PiiRoom:
    tokenizer = Tokenizer(Keyring([TEST_KEY]), mode)
    return PiiRoom(load_catalog(), tokenizer, settings)


async def load_demo(admin_dsn: str, dbname: str) -> str:
    """Create ``dbname`` with the demo dataset (small); return its superuser DSN."""
    from dbgate.demo_data import _with_dbname, ensure_database, load_demo_dataset

    await ensure_database(admin_dsn, dbname)
    dsn = _with_dbname(admin_dsn, dbname)
    await load_demo_dataset(dsn, customers=DEMO_CUSTOMERS)
    return dsn


async def birth_dates(dsn: str) -> set[bytes]:
    """Birth dates (ISO text): checked per row, since a pseudonym date may equal
    another customer's real one."""
    conn = await asyncpg.connect(dsn)
    try:
        return {r[0].encode() for r in await conn.fetch("SELECT birth_date::text FROM customers")}
    finally:
        await conn.close()


async def raw_pii_values(dsn: str) -> set[bytes]:
    """Every PII value of the demo dataset, as the text the server would send."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(PII_QUERY)
    finally:
        await conn.close()
    values: set[bytes] = set()
    for row in rows:
        for v in row:
            if v:
                values.add(v.encode())
    return values


@dataclass
class Result:
    """What a client would receive for one query, after the room rewrote it."""

    original: list[Any] = field(default_factory=list)  # decoded backend messages, as sent
    rewritten: list[bytes] = field(default_factory=list)  # bodies after the room
    rows_before: list[tuple[bytes | None, ...]] = field(default_factory=list)
    rows_after: list[tuple[bytes | None, ...]] = field(default_factory=list)
    #: per result set: (rows as sent, rows after the room)
    sets: list[tuple[list[tuple[bytes | None, ...]], list[tuple[bytes | None, ...]]]] = field(
        default_factory=list
    )
    copies: list[tuple[bytes, bytes]] = field(default_factory=list)  # CopyData before/after
    #: per result set described: the columns the room replaces
    replaced: list[set[int]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    notifications: list[bytes] = field(default_factory=list)

    @property
    def output_bytes(self) -> bytes:
        return b"".join(self.rewritten)


def _body(msg: Any) -> bytes:
    return msg.encode()[5:]


def _rows_as_the_relay_does(rewriter: Any, rows: list[Any]) -> list[bytes]:
    """The bodies of a run of DataRows after ``rewriter``, the way the relay hands them
    over (one ``rewrite_run`` call for the run, see dbgate/proxy/row_limit.py) — and
    checked against the same rows rewritten one by one."""
    framed = b"".join(r.encode() for r in rows)
    out = rewrite_run(rewriter, framed, 0, len(framed))
    run = framed if out is None else out
    bodies = [run[s:e] for _t, s, e in split_frames(run)]
    one_by_one = [rewriter.data_row(_body(r)) for r in rows]
    fresh = {a.index for a in getattr(rewriter, "actions", ()) if a.mode in ("fresh", "detect")}
    if not fresh:
        assert bodies == one_by_one
    else:  # derived values get new tokens each time: the rest is the same
        for run_body, single in zip(bodies, one_by_one, strict=True):
            a, b = m.parse_data_row(run_body), m.parse_data_row(single)
            assert len(a) == len(b)
            assert [v for i, v in enumerate(a) if i not in fresh] == [
                v for i, v in enumerate(b) if i not in fresh
            ]
    return bodies


def apply_plan(plan: StatementPlan, messages: list[Any], formats: tuple[int, ...] = ()) -> Result:
    """Put one query's backend messages through the plan and the session filter."""
    result = Result(original=messages)
    rewriter: Any = None
    copier: Any = None
    flt = plan.room.message_filter
    pending: list[bytes] = []  # rewritten bodies of the run of DataRows being read
    for i, msg in enumerate(messages):
        body = _body(msg)
        if isinstance(msg, m.RowDescription):
            fmts = formats or tuple(f.format for f in msg.fields)
            rewriter = plan.rows(body, fmts)
            result.replaced.append(
                {a.index for a in getattr(rewriter, "actions", ())}
                if rewriter is not None
                else set()
            )
            result.sets.append(([], []))
            result.rewritten.append(body)
        elif isinstance(msg, m.DataRow):
            if rewriter is None:
                new = body
            else:
                if not pending:
                    end = i
                    while end < len(messages) and isinstance(messages[end], m.DataRow):
                        end += 1
                    pending = _rows_as_the_relay_does(rewriter, messages[i:end])
                new = pending.pop(0)
            after = m.parse_data_row(new)
            result.rows_before.append(msg.columns)
            result.rows_after.append(after)
            if not result.sets:  # rows of a portal described earlier
                result.sets.append(([], []))
            result.sets[-1][0].append(msg.columns)
            result.sets[-1][1].append(after)
            result.rewritten.append(new)
        elif isinstance(msg, m.CopyOutResponse):
            copier = plan.copy_out(body)
            result.rewritten.append(body)
        elif isinstance(msg, m.CopyData):
            new = copier.copy_data(body) if copier is not None else body
            result.copies.append((body, new))
            result.rewritten.append(new)
        elif isinstance(msg, m.ErrorResponse):
            new = flt.error(body)
            result.errors.append(m.parse_error_fields(new))
            result.rewritten.append(new)
        elif isinstance(msg, m.NoticeResponse):
            result.rewritten.append(flt.notice(body))
        elif isinstance(msg, m.NotificationResponse):
            new = flt.notification(body)
            result.notifications.append(new)
            result.rewritten.append(new)
        elif isinstance(msg, (m.CommandComplete, m.ReadyForQuery)):
            rewriter = None if isinstance(msg, m.CommandComplete) else rewriter
            result.rewritten.append(body)
        else:
            result.rewritten.append(body)
    return result


async def connect(pg_server: Any, dbname: str) -> RawClient:
    return await RawClient.connect(
        pg_server.host,
        pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        database=dbname,
    )


async def run_simple(client: RawClient, sql: str) -> list[Any]:
    return await client.query(sql)


async def run_extended(
    client: RawClient,
    sql: str,
    result_format: int = 1,
    params: tuple[bytes | None, ...] = (),
    max_rows: int = 0,
) -> list[Any]:
    """Parse/Bind (results in ``result_format``)/Describe/Execute/Sync."""
    client.send(
        m.Parse("", sql).encode(),
        m.Bind("", "", params=params, result_formats=(result_format,)).encode(),
        m.Describe("P", "").encode(),
        m.Execute("", max_rows).encode(),
        m.SYNC,
    )
    return await client.until_ready()


def leaked(output: bytes, values: set[bytes]) -> list[bytes]:
    """Raw PII values found in ``output`` (also base64 and hex spellings of the long ones)."""
    found = [v for v in values if v in output]
    return sorted(found)[:5]
