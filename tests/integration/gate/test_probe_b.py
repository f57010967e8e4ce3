"""probe"""
from __future__ import annotations
import asyncio
from pathlib import Path
import pytest
from dbgate.wire import messages as wire
from tests.integration.gate.test_audit_fidelity import logged, records, session, ended  # noqa
from tests.integration.holds.harness import request_id
from tests.integration.server_log import server_ran, session_over, show
from tests.integration.rawclient import names, errors


def dump(env, app):
    env.app.call(env.app.app.audit.flush())
    for r in env.app.rows("SELECT kind, event, decision, statement, outcome, rows, reason, approval_id FROM dbgate.audit_log WHERE application_name = $1 AND kind='statement' ORDER BY seq", app):
        print(tuple(r.values()))


async def test_denied_in_pipeline(env, logged):
    app = "b1"
    c, pid = await session(env, app)
    c.send(
        wire.Parse("", "SELECT 1"), wire.Bind("", ""), wire.Execute("", 0),
        wire.Parse("", "ALTER SYSTEM SET work_mem = '8MB'"), wire.Bind("", ""), wire.Execute("", 0),
        wire.Parse("", "SELECT 2"), wire.Bind("", ""), wire.Execute("", 0),
        wire.Sync(),
        wire.Query("SELECT 3; ALTER SYSTEM SET work_mem = '8MB'; SELECT 4"),
    )
    print(names(await c.until_ready()))
    print(names(await c.until_ready()))
    c.abort()
    await session_over(env, app, pid)
    print(await asyncio.to_thread(server_ran, logged, pid))
    dump(env, app)
    assert 0


async def test_held_parse_describe_only(env, logged):
    app = "b2"
    c, pid = await session(env, app)
    c.send(wire.Parse("h", "UPDATE fid_items SET note = 'held'"), wire.Describe("S", "h"), wire.Sync())
    msgs = await c.until(wire.NoticeResponse)
    print(names(msgs), msgs[-1])
    rid = request_id(msgs[-1].fields.get("M", "") + " " + str(msgs[-1].fields))
    await env.app.aapprove(rid, "ok")
    print(names(await c.until_ready()))
    c.send(wire.Bind("", "h"), wire.Execute("", 0), wire.Bind("", "h"), wire.Execute("", 0), wire.Sync())
    print(names(await c.until_ready()))
    c.abort()
    await session_over(env, app, pid)
    print(await asyncio.to_thread(server_ran, logged, pid))
    dump(env, app)
    assert 0
