"""The approvers' page in a real browser (Debian's Chromium, driven by Playwright).

Three runs, as an approver would do them: approve a held statement seen arriving in
the live queue, reject one, and check that no raw PII from the statement reaches
the page. Statements are held on one replica by calling ``service.hold`` in a task
(as the gate does); the page is served by another, so each decision reaches its
hold through LISTEN/NOTIFY. Screenshots of the queue and of a request are saved as
test artifacts (``test-artifacts/web``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from dbgate.approvals.model import HoldStatus
from dbgate.approvals.service import PgApprovalService
from dbgate.audit import AuditWriter
from dbgate.audit.approval_steps import recorder
from dbgate.config import AuditConfig
from dbgate.web import WebServer, build_web_app
from tests.e2e.browser import CHROMIUM_ARGS, chromium_path, save_screenshot
from tests.integration.approvals_helpers import (
    PII_SQL,
    PII_VALUES,
    Notices,
    drop_database,
    fresh_database,
    make_request,
    running_service,
)
from tests.integration.web_helpers import add_person

DB = "dbgate_web_browser_test"
PASSWORD = "a long approver password"


@dataclass
class World:
    url: str
    holder: PgApprovalService
    web: PgApprovalService
    browser: Browser
    audit: AuditWriter

    async def hold(self, **kw: Any) -> tuple[int, asyncio.Task[Any]]:
        keys = ("tables", "columns", "categories", "reasons", "rule", "rule_message")
        fixed = {k: kw.pop(k) for k in keys if k in kw}
        notices = Notices()
        req = dataclasses.replace(make_request(**kw), **fixed)
        task = asyncio.create_task(self.holder.hold(req, notices))
        return await notices.request_id(), task

    async def signed_in_page(self, name: str = "alice", **context: Any) -> Page:
        ctx = await self.browser.new_context(**context)
        page = await ctx.new_page()
        await page.goto(self.url + "/")
        await expect(
            page.get_by_role("heading", name="Sign in to decide held statements")
        ).to_be_visible()
        await page.get_by_label("Approver name").fill(name)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_label("Password").press("Enter")  # the keyboard is enough
        await page.wait_for_url(self.url + "/approvals")
        await expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()
        # The live feed is connected once the page has heard its first event.
        await page.wait_for_selector("body[data-connected=yes]")
        return page


@pytest.fixture(scope="module")
async def world(pg_server) -> AsyncIterator[World]:
    executable = chromium_path()
    dsn = await fresh_database(pg_server, DB)
    try:
        async with (
            running_service(dsn, replica="holder") as holder,
            running_service(dsn, replica="web") as web_svc,
            async_playwright() as pw,
        ):
            await add_person(web_svc, "alice", PASSWORD, "dba")
            audit = AuditWriter(dsn, AuditConfig(), replica="e2e")
            await audit.start()
            holder.store.on_event = web_svc.store.on_event = recorder(audit)
            server = WebServer(build_web_app(web_svc), "127.0.0.1", 0)
            await server.start()
            browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            try:
                yield World(server.url, holder, web_svc, browser, audit)
            finally:
                await browser.close()
                await server.stop()
                await audit.stop()
    finally:
        await drop_database(pg_server, DB)


#: True when the page's content fits the viewport's width (no horizontal scrolling).
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"


async def _wait_for_row(page: Page, rid: int) -> None:
    """The row appears by itself: the page is never reloaded (a marker set on the
    window before the hold survives)."""
    await page.wait_for_selector(f'#queue-rows tr[data-id="{rid}"]', timeout=30_000)
    assert await page.evaluate("window.__noReload") == 1


async def test_approve_a_request_that_appears_in_the_live_queue(world: World) -> None:
    page = await world.signed_in_page()
    await page.evaluate("window.__noReload = 1")
    others = [
        await world.hold(
            identity="report-bot",
            purpose="monthly revenue export",
            categories=("export",),
            tables=("orders", "payments"),
        ),
        await world.hold(identity="support-agent", purpose="fix a customer's duplicate order"),
    ]
    rid, task = await world.hold(
        sql=PII_SQL,
        identity="ops-agent",
        purpose="correct a customer's contact details (ticket 4711)",
        tables=("customers",),
        columns=("customers.email", "customers.phone", "customers.ssn"),
        categories=("write", "pii"),
        reasons=(("pii_write", "UPDATE changes personal data (email, phone) of customers"),),
        rule="hold-pii-writes",
        rule_message="writes to PII columns need a second pair of eyes",
        approver_groups=("dba",),
        fingerprint="fp-contact-update",
        wait=300,
    )
    await world.web.store.set_estimate(rid, 1, "")
    await world.web.store.set_estimate(int(others[0][0]), 48213, "")
    await _wait_for_row(page, rid)
    row = page.locator(f'#queue-rows tr[data-id="{rid}"]')
    await expect(row).to_contain_text("ops-agent")
    await expect(row).to_contain_text("correct a customer's contact details")
    await expect(row.locator('td[data-label="Est. rows"]')).to_have_text("1", timeout=30_000)
    save_screenshot("web-queue.png", await page.screenshot(full_page=True))

    await world.audit.flush()  # the request's own audit record is on its page
    await row.get_by_role("link", name=f"#{rid}").click()
    await page.wait_for_url(f"{world.url}/approvals/{rid}")
    await expect(page.get_by_role("heading", name=f"Request #{rid}")).to_be_visible()
    await expect(page.locator('#audit ~ table td[data-label="Record"]')).to_have_text(
        ["approval requested"]
    )
    await expect(page.locator("pre.sql").first).to_contain_text("'<email>'")
    save_screenshot("web-detail.png", await page.screenshot(full_page=True))

    await page.get_by_label("Reason for approving (optional)").fill("ticket 4711 checked")
    await page.get_by_role("button", name="Approve", exact=True).click()
    await expect(page.get_by_text("Your approval was recorded.")).to_be_visible()
    outcome = await asyncio.wait_for(task, 30)
    assert outcome.status is HoldStatus.APPROVED
    assert outcome.decided_by == ("alice",) and outcome.reason == "ticket 4711 checked"
    await expect(page.locator("h1 .status")).to_have_text("approved")

    phone = await world.signed_in_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    save_screenshot("web-queue-phone.png", await phone.screenshot(full_page=True))
    # Readable on a phone: nothing wider than the screen, so nothing to scroll sideways.
    assert await phone.evaluate(NO_SIDEWAYS_SCROLL), "the queue is wider than a phone"
    await phone.goto(f"{world.url}/approvals/{rid}")
    assert await phone.evaluate(NO_SIDEWAYS_SCROLL), "a request is wider than a phone"
    await expect(phone.get_by_role("heading", name="Audit trail")).to_be_visible()
    await phone.context.close()
    for orid, otask in others:
        await world.web.store.decide(
            orid, await world.web.accounts.get("alice"), approve=False, reason="demo over"
        )
        await otask
    await page.context.close()


async def _tab_to(page: Page, selector: str, limit: int = 60) -> None:
    """Press Tab until the focused element matches ``selector`` (as a keyboard user
    moves through the page); fails when it is not reachable that way."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
    raise AssertionError(f"{selector} cannot be reached with the Tab key")


async def test_reject_a_request_with_a_reason_using_only_the_keyboard(world: World) -> None:
    page = await world.signed_in_page()
    await page.evaluate("window.__noReload = 1")
    rid, task = await world.hold(identity="cleanup-agent")
    await _wait_for_row(page, rid)
    await _tab_to(page, f'#queue-rows tr[data-id="{rid}"] a')
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{world.url}/approvals/{rid}")
    await _tab_to(page, "#reject-reason")
    await page.keyboard.type("use the archive job instead")
    await _tab_to(page, "#reject-button")
    await page.keyboard.press("Enter")
    await expect(page.locator("h1 .status")).to_have_text("rejected")
    outcome = await asyncio.wait_for(task, 30)
    assert outcome.status is HoldStatus.REJECTED
    assert outcome.reason == "use the archive job instead"
    await page.context.close()


async def test_the_page_shows_no_raw_pii_from_the_statement(world: World) -> None:
    page = await world.signed_in_page()
    await page.evaluate("window.__noReload = 1")
    rid, task = await world.hold(
        sql=PII_SQL + " AND card_number = $1",
        params=("4111111111111111",),
        purpose="update ann.lee@example.com's phone",
    )
    await _wait_for_row(page, rid)
    seen = [await page.content(), await page.inner_text("body")]
    await page.goto(f"{world.url}/approvals/{rid}")
    await page.get_by_text("As sent (masked, not reformatted)").click()  # open the raw view too
    seen += [await page.content(), await page.inner_text("body")]
    await page.goto(f"{world.url}/history")
    seen += [await page.content()]
    for text in seen:
        for value in PII_VALUES:
            assert value not in text, value
    assert "&lt;email&gt;" in seen[2] and "<card_number>" in seen[3]  # masked, and shown
    await world.web.store.decide(
        rid, await world.web.accounts.get("alice"), approve=False, reason="checked"
    )
    await task
    await page.context.close()
