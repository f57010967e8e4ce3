"""The approvers' page in a real browser, deciding a real agent's held statement.

The whole dbgate runs as ``dbgate serve`` does (the App: proxy, gate, approval
service, audit trail and the web page). An asyncpg client sends a whole-table UPDATE
through dbgate; it is held; an approver signed in to the page sees it arrive in the
live queue, opens it and approves — and the client's statement completes. A second
run rejects, and the client gets 42501.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.browser import CHROMIUM_ARGS, chromium_path
from tests.integration.holds.clients import AsyncpgNotices
from tests.integration.holds.harness import HoldsEnv, admin_execute, start_env
from tests.integration.web_helpers import add_person

APPROVER = "carol"
PASSWORD = "a long approver password"
TABLE = "tickets"


@pytest.fixture(scope="module")
def env(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldsEnv]:
    for running in start_env(pg_server, "web_browser_app", tmp_path_factory.mktemp("web_app")):
        admin_execute(
            running.admin_dsn,
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)",
            f"INSERT INTO {TABLE} VALUES (1, 'a'), (2, 'b')",
            f"GRANT ALL ON {TABLE} TO PUBLIC",
        )
        service = running.app.app.approvals
        assert service is not None
        running.app.call(add_person(service, APPROVER, PASSWORD, "dba"))
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def _signed_in(browser: Browser, url: str) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(url + "/")
    await page.get_by_label("Approver name").fill(APPROVER)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Password").press("Enter")
    await page.wait_for_url(url + "/approvals")
    await page.wait_for_selector("body[data-connected=yes]")
    await page.evaluate("window.__noReload = 1")
    return page


async def _open_when_it_arrives(page: Page, url: str, rid: int) -> None:
    """The request appears in the queue without a reload; open it."""
    await page.wait_for_selector(f'#queue-rows tr[data-id="{rid}"]', timeout=30_000)
    assert await page.evaluate("window.__noReload") == 1
    await page.locator(f'#queue-rows tr[data-id="{rid}"] a').first.click()
    await page.wait_for_url(f"{url}/approvals/{rid}")


@asynccontextmanager
async def _announced(env: HoldsEnv, payload: str) -> AsyncIterator[asyncio.Event]:
    """An event set when the state database announces ``payload`` on channel
    ``dbgate_approvals`` (listening from the start of the block)."""
    heard = asyncio.Event()
    conn = await asyncpg.connect(env.pg_server.dsn(env.state_db))

    def on_notify(_conn: object, _pid: int, _channel: str, text: str) -> None:
        if text == payload:
            heard.set()

    try:
        await conn.add_listener("dbgate_approvals", on_notify)
        yield heard
    finally:
        await conn.close()


async def test_an_agents_held_update_is_approved_on_the_page_and_completes(
    env: HoldsEnv, browser: Browser
) -> None:
    url = env.app.web_url
    page = await _signed_in(browser, url)
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"UPDATE {TABLE} SET note = 'approved'"))
        rid = await notices.held()
        # dbgate records that the approved statement ran just after the client's
        # answer; the state database announces it (LISTEN before the decision, so the
        # announcement cannot be missed), and the page shows it from then on.
        async with _announced(env, f"request:{rid}:executed") as executed:
            await _open_when_it_arrives(page, url, rid)
            await expect(page.locator("pre.sql").first).to_contain_text(f"UPDATE {TABLE}")
            await page.get_by_label("Reason for approving (optional)").fill("checked")
            await page.get_by_role("button", name="Approve", exact=True).click()
            # the page the approval's POST answers with has loaded: a reload now cannot
            # land in the middle of that navigation
            await expect(page.get_by_text("Your approval was recorded.")).to_be_visible()
            assert await asyncio.wait_for(running, 30) == "UPDATE 2"
            await asyncio.wait_for(executed.wait(), 30)
        await page.reload()
        await expect(page.locator("h1 .status")).to_have_text("approved and executed")
        assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE note = $1", "approved") == 2
    finally:
        await conn.close()
        await page.context.close()


async def test_an_agents_held_update_rejected_on_the_page_fails_with_42501(
    env: HoldsEnv, browser: Browser
) -> None:
    url = env.app.web_url
    page = await _signed_in(browser, url)
    conn = await asyncpg.connect(env.dsn)
    notices = AsyncpgNotices(conn)
    try:
        running = asyncio.create_task(conn.execute(f"UPDATE {TABLE} SET note = 'rejected'"))
        rid = await notices.held()
        await _open_when_it_arrives(page, url, rid)
        await page.get_by_label("Reason for rejecting").fill("not today")
        await page.get_by_role("button", name="Reject").click()
        await expect(page.locator("h1 .status")).to_have_text("rejected")
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
            await asyncio.wait_for(running, 30)
        assert "rejected" in str(refused.value) and "not today" in str(refused.value)
        assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE note = $1", "rejected") == 0
    finally:
        await conn.close()
        await page.context.close()


async def test_markup_an_agent_puts_in_what_approvers_read_stays_text(
    env: HoldsEnv, browser: Browser
) -> None:
    """Every field of a request the agent writes — statement, values, application name,
    purpose, model, a quoted table name in the reasons and tables — carries markup
    that would run script in the approver's browser (and could approve the request
    from there); the queue and the request's page show it as text, and nothing runs."""
    pwn = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    url = env.app.web_url
    page = await _signed_in(browser, url)
    table = "t<img src=x onerror=\"document.title='pwned'\">"  # within 63 bytes
    quoted = table.replace('"', '""')
    admin_execute(
        env.admin_dsn,
        f'CREATE TABLE IF NOT EXISTS "{quoted}" (id int PRIMARY KEY, note text)',
        f'GRANT ALL ON "{quoted}" TO PUBLIC',
    )
    conn = await asyncpg.connect(
        env.dsn,
        server_settings={"application_name": pwn[:60], "dbgate.model": pwn},
    )
    notices = AsyncpgNotices(conn)
    try:
        literal = pwn.replace("'", "''")
        running = asyncio.create_task(
            conn.execute(
                f"/* dbgate: purpose='{pwn.replace(chr(39), '')}' */ "
                f"UPDATE \"{quoted}\" SET note = '{literal}' || $1",
                pwn,
            )
        )
        rid = await notices.held()
        await _open_when_it_arrives(page, url, rid)
        await expect(page.locator("pre.sql").first).to_contain_text("onerror")
        shown = await page.locator("main").inner_text()
        assert shown.count("<script>") >= 3, shown  # as text: statement, value, model
        assert table in shown  # the reasons and tables name it
        assert await page.title() != "pwned"
        assert await page.locator("main img, main script").count() == 0
        await page.goto(url + "/approvals")
        await page.wait_for_selector(f'#queue-rows tr[data-id="{rid}"]')
        assert await page.locator("#queue-rows img, #queue-rows script").count() == 0
        assert await page.title() != "pwned"
        await env.app.areject(rid, "no")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncio.wait_for(running, 30)
    finally:
        await conn.close()
        await page.context.close()
