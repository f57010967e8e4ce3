"""What an AI agent sees through dbgate: the three paths, with asyncpg.

Run it against ``make demo`` (or ``dbgate demo --info-file demo.json``)::

    .venv/bin/python examples/agent.py                      # reads ./demo.json
    .venv/bin/python examples/agent.py --info /tmp/demo.json

1. **allowed, PII tokenized** — a bounded read of a customer: the row arrives at
   once, with every PII column replaced by a token (``tok_email_h...``) before a
   byte of it reached the agent.
2. **held for approval** — a read of a whole table is a dump: dbgate sends a
   NOTICE naming the approval request and where to decide it, and the statement
   waits. An agent would just wait (or tell its human); this script plays the
   human too, and approves the request through the approvals API with the demo's
   approver token (from the info file, as a person would with the web page or
   ``dbgate approvals approve``). The statement then runs, tokenized like any other.
3. **denied** — ``COPY ... TO PROGRAM`` runs a program on the database server:
   refused at once with SQLSTATE 42501, the reason in the message and the rule
   in the HINT. Nothing reached PostgreSQL.

Nothing here is special to dbgate: an ordinary asyncpg connection, an ordinary
notice listener, ordinary exceptions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ALLOWED = "select id, full_name, email, phone from customers where id = 42"
HELD = "select id, email from customers"
DENIED = "copy customers to program 'cat > /tmp/customers.csv'"

REQUEST_ID = re.compile(r"\(request (\d+)\)")


def heading(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def allowed(conn: asyncpg.Connection) -> None:
    heading(f"1. allowed, PII tokenized:  {ALLOWED}")
    row = await conn.fetchrow(ALLOWED)
    for column, value in row.items():
        print(f"   {column:10} {value}")


async def approve(info: dict[str, Any], request_id: int) -> None:
    """What the approver does in the web page, done through the API."""
    url = f"{info['web_url']}/api/approvals/{request_id}/approve"
    headers = {"Authorization": f"Bearer {info['approver_token']}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, headers=headers, json={"reason": "demo: looks fine"}) as resp,
    ):
        body = await resp.json()
        if resp.status != 200:
            raise SystemExit(f"approval failed: HTTP {resp.status} {body}")
    print(f"   [approver {info['approver_user']}] approved request {request_id} ({url})")


async def held(conn: asyncpg.Connection, info: dict[str, Any]) -> None:
    heading(f"2. held for approval:  {HELD}")
    requests: asyncio.Queue[int] = asyncio.Queue()

    def on_notice(_conn: Any, message: asyncpg.PostgresLogMessage) -> None:
        print(f"   NOTICE:  {message.message}")
        if message.detail:
            print(f"   DETAIL:  {message.detail}")
        found = REQUEST_ID.search(message.message)
        if found:
            requests.put_nowait(int(found.group(1)))

    conn.add_log_listener(on_notice)
    try:
        query = asyncio.ensure_future(conn.fetch(HELD))
        waiting = asyncio.ensure_future(requests.get())
        done, _ = await asyncio.wait({query, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if query in done:  # approved earlier (a shape approval) or refused
            waiting.cancel()
        else:
            print("   ... the statement waits in dbgate; nothing has reached PostgreSQL")
            await approve(info, waiting.result())
        rows = await query
    finally:
        conn.remove_log_listener(on_notice)
    print(f"   ran after approval: {len(rows)} rows, e.g.")
    for row in rows[:3]:
        print(f"   {row['id']:>6}  {row['email']}")


async def denied(conn: asyncpg.Connection) -> None:
    heading(f"3. denied:  {DENIED}")
    try:
        await conn.execute(DENIED)
    except asyncpg.PostgresError as e:
        print(f"   ERROR {e.sqlstate}:  {e.args[0] if e.args else e}")
        if getattr(e, "hint", None):
            print(f"   HINT:  {e.hint}")
    else:
        raise SystemExit("the COPY TO PROGRAM was not refused")


async def main(info_path: Path) -> None:
    info = json.loads(info_path.read_text())
    print(f"agent connects to {info['agent_dsn'].split('@')[-1]} as an ordinary client")
    conn = await asyncpg.connect(info["agent_dsn"])
    try:
        await allowed(conn)
        await held(conn, info)
        await denied(conn)
        # The session is still fine after all three.
        assert await conn.fetchval("select count(*) from orders") > 0
    finally:
        await conn.close()
    print('\nEvery step is in the audit trail: psql "$(jq -r .auditor_dsn demo.json)"')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--info", type=Path, default=Path("demo.json"), help="the demo's --info-file"
    )
    args = parser.parse_args()
    if not args.info.exists():
        sys.exit(f"{args.info} not found: start the demo with `make demo` first")
    asyncio.run(main(args.info))
