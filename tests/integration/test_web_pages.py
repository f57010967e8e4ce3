"""The approvers' pages over real HTTP against a real state database.

Statements are held on one replica (``holder``) by calling ``service.hold`` in a
task, the way the gate does; the pages are served by another (``web``), so every
decision taken on a page crosses replicas through LISTEN/NOTIFY to reach its hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from dbgate.approvals.model import HoldStatus
from dbgate.approvals.service import PgApprovalService
from dbgate.web import WebServer, build_web_app
from dbgate.web.sessions import SESSION_COOKIE, WebSettings
from tests.integration.approvals_helpers import (
    PII_SQL,
    PII_VALUES,
    Notices,
    drop_database,
    fresh_database,
    make_request,
    running_service,
)
from tests.integration.web_helpers import Browser, add_person

DB = "dbgate_web_pages_test"
PASSWORD = "correct horse battery staple"


@dataclass
class Site:
    url: str
    holder: PgApprovalService
    web: PgApprovalService
    dsn: str
    browsers: list[Browser]

    def browser(self) -> Browser:
        b = Browser(self.url)
        self.browsers.append(b)
        return b

    async def signed_in(self, name: str = "alice") -> Browser:
        b = self.browser()
        page = await b.sign_in(name, PASSWORD)
        assert page.status == 200 and page.url.endswith("/approvals"), page.text
        return b

    async def held(self, **kw: Any) -> tuple[int, asyncio.Task[Any]]:
        """Hold a statement on the holding replica; (request id, the hold's task).
        ``tables``, ``columns`` and ``categories`` replace make_request's."""
        fixed = {k: kw.pop(k) for k in ("tables", "columns", "categories") if k in kw}
        notices = Notices()
        req = dataclasses.replace(make_request(**kw), **fixed)
        task = asyncio.create_task(self.holder.hold(req, notices))
        return await notices.request_id(), task

    async def status(self, rid: int) -> str:
        return (await self.web.store.get(rid)).status

    async def sql(self, query: str, *args: Any) -> Any:
        async with self.web.store.db.connection() as conn:
            return await conn.fetch(query, *args)


@pytest.fixture(scope="module")
async def state_dsn(pg_server) -> AsyncIterator[str]:
    dsn = await fresh_database(pg_server, DB)
    yield dsn
    await drop_database(pg_server, DB)


@pytest.fixture(scope="module")
async def site(state_dsn) -> AsyncIterator[Site]:
    async with (
        running_service(state_dsn, replica="holder", owners={"agent": ["olga"]}) as holder,
        running_service(state_dsn, replica="web", public_url="http://dbgate.test") as web_svc,
    ):
        for name, groups in {
            "alice": ["dba"],
            "bob": ["dba"],
            "carol": ["support"],
            "olga": ["dba"],
            "agent": ["dba"],
            "dave": ["dba"],
            "erin": ["dba"],
        }.items():
            await add_person(web_svc, name, PASSWORD, *groups)
        settings = WebSettings(login_max_failures=3, login_lockout_seconds=600)
        server = WebServer(build_web_app(web_svc, settings=settings), "127.0.0.1", 0)
        await server.start()
        s = Site(server.url, holder, web_svc, state_dsn, [])
        try:
            yield s
        finally:
            for b in s.browsers:
                await b.close()
            await server.stop()


# -- sign in ----------------------------------------------------------------------------------


async def test_the_root_is_the_sign_in_page(site: Site) -> None:
    page = await site.browser().get("/")
    assert page.status == 200
    assert '<label for="name">' in page.text and '<label for="password">' in page.text
    assert 'type="password"' in page.text and 'action="/login"' in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


async def test_signing_in_sets_a_strict_http_only_session_cookie(site: Site) -> None:
    b = site.browser()
    page = await b.get("/")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    async with b.http.post(
        site.url + "/login",
        data={"name": "alice", "password": PASSWORD, "login_token": token, "next": "/history"},
        allow_redirects=False,
    ) as r:
        assert r.status == 303 and r.headers["Location"] == "/history"
        cookies = [h for h in r.headers.getall("Set-Cookie") if h.startswith(SESSION_COOKIE)]
    assert len(cookies) == 1
    attrs = cookies[0].lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    assert "secure" not in attrs.replace("samesite", "")  # plain HTTP here: no Secure flag
    queue = await b.get("/approvals")
    assert queue.status == 200 and "Signed in as <strong>alice</strong>" in queue.text


async def test_an_open_redirect_after_sign_in_is_refused(site: Site) -> None:
    b = site.browser()
    page = await b.get("/")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    async with b.http.post(
        site.url + "/login",
        data={"name": "alice", "password": PASSWORD, "login_token": token, "next": "//evil.test/x"},
        allow_redirects=False,
    ) as r:
        assert r.status == 303 and r.headers["Location"] == "/approvals"


@pytest.mark.parametrize("target", ["/\t/evil.test/x", "/\n/evil.test/x", "/ /evil.test"])
async def test_a_next_path_a_browser_reads_as_another_host_is_refused(
    site: Site, target: str
) -> None:
    """A browser drops tabs and line breaks from a URL before it reads it: ``/<TAB>/host``
    is ``//host``, another site, to which a signed-in approver following a link was sent
    on from the sign-in page."""
    b = await site.signed_in()
    async with b.http.get(site.url + "/", params={"next": target}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/approvals"
    fresh = site.browser()
    page = await fresh.get("/")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    async with fresh.http.post(
        site.url + "/login",
        data={"name": "alice", "password": PASSWORD, "login_token": token, "next": target},
        allow_redirects=False,
    ) as r:
        assert r.status == 303 and r.headers["Location"] == "/approvals"


async def test_wrong_password_and_unknown_name_get_the_same_401(site: Site) -> None:
    for name, password in (("bob", "not his password"), ("nobody", PASSWORD)):
        b = site.browser()
        page = await b.sign_in(name, password)
        assert page.status == 401, page.text
        assert "Wrong name or password." in page.text
        assert b.cookie(SESSION_COOKIE) is None
    await site.sql("DELETE FROM dbgate.web_login_failures")


async def test_sign_in_without_the_form_token_is_refused(site: Site) -> None:
    b = site.browser()
    page = await b.post("/login", {"name": "alice", "password": PASSWORD})
    assert page.status == 403 and "security token" in page.text
    assert b.cookie(SESSION_COOKIE) is None
    await b.get("/")  # now the login cookie is set; a forged form value still fails
    page = await b.post("/login", {"name": "alice", "password": PASSWORD, "login_token": "x"})
    assert page.status == 403 and b.cookie(SESSION_COOKIE) is None


async def test_repeated_failures_lock_the_name_even_for_the_right_password(site: Site) -> None:
    b = site.browser()
    statuses = [(await b.sign_in("dave", f"guess {i}")).status for i in range(3)]
    assert statuses == [401, 401, 429]
    page = await b.sign_in("dave", PASSWORD)
    assert page.status == 429 and "password was not checked" in page.text
    assert int(page.headers["Retry-After"]) > 0
    assert b.cookie(SESSION_COOKIE) is None
    # Another approver from the same address is not locked out.
    await site.signed_in("erin")
    rows = await site.sql(
        "SELECT key, locked_until IS NOT NULL AS locked FROM dbgate.web_login_failures "
        "WHERE key = 'name:dave'"
    )
    assert rows[0]["locked"]
    await site.sql("DELETE FROM dbgate.web_login_failures")
    await site.signed_in("dave")  # the lock lapses (here: removed), and dave gets in


async def test_many_names_failing_from_one_address_lock_the_address(site: Site) -> None:
    """Four times the per-name limit from one address, spread over names that each stay
    under it, locks the address: even a right password from there is not checked. The
    lock lapses by itself."""
    b = site.browser()
    try:
        # Known names (their test hashes are cheap), two failures each: under the
        # per-name limit of three.
        names = ["bob", "carol", "olga", "agent", "dave", "erin"] * 2
        statuses = [(await b.sign_in(name, "wrong")).status for name in names]
        assert statuses == [401] * 11 + [429]
        page = await b.sign_in("alice", PASSWORD)
        assert page.status == 429 and "from this address" in page.text
        assert b.cookie(SESSION_COOKIE) is None
        [row] = await site.sql(
            "SELECT locked_until > now() AS locked FROM dbgate.web_login_failures "
            "WHERE key = 'addr:127.0.0.1'"
        )
        assert row["locked"]
        await site.sql(  # the lockout time passes
            "UPDATE dbgate.web_login_failures SET locked_until = now() - interval '1 second' "
            "WHERE key = 'addr:127.0.0.1'"
        )
        assert (await b.sign_in("alice", PASSWORD)).status == 200
    finally:
        await site.sql("DELETE FROM dbgate.web_login_failures")


async def test_pages_need_a_session(site: Site) -> None:
    b = site.browser()
    async with b.http.get(site.url + "/approvals", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/?why=needed")
    for path in ("/approvals?fragment=rows", "/events"):
        async with b.http.get(site.url + path, allow_redirects=False) as r:
            assert r.status == 401, path


# -- queue and detail ---------------------------------------------------------------------------


async def test_queue_and_detail_show_the_masked_request(site: Site) -> None:
    b = await site.signed_in("alice")
    earlier, t0 = await site.held(sql=PII_SQL, fingerprint="fp-pii", approver_groups=("dba",))
    await site.web.store.decide(
        earlier, (await site.web.accounts.get("bob")), approve=False, reason="not today"
    )
    assert (await t0).status is HoldStatus.REJECTED
    rid, task = await site.held(
        sql=PII_SQL,
        params=("4111111111111111",),
        fingerprint="fp-pii",
        approver_groups=("dba",),
        columns=("customers.email", "customers.phone", "customers.ssn", "customers.id"),
        tables=("customers",),
    )
    await site.web.store.set_estimate(rid, 1234, "")
    queue = await b.get("/approvals")
    row = re.search(rf'<tr data-id="{rid}">(.*?)</tr>', queue.text, re.S).group(1)
    assert "agent" in row and "clean up a test order" in row and "destructive" in row
    assert "customers" in row and "1,234" in row and " s<" in row
    # Newest first.
    ids = [int(i) for i in re.findall(r'<tr data-id="(\d+)">', queue.text)]
    assert ids == sorted(ids, reverse=True)

    page = await b.get(f"/approvals/{rid}")
    assert page.status == 200
    text = page.text
    assert "&lt;email&gt;" in text and "&lt;card&gt;" in text
    for value in PII_VALUES:
        assert value not in text
    assert "DELETE removes rows" in text and "hold-destructive" in text
    assert "test-model" in text and "127.0.0.1" in text and "pytest" in text
    assert "1 approval from dba" in text and "1,234" in text
    assert re.search(r"customers\.email <abbr[^>]*>PII</abbr>", text)
    assert not re.search(r"customers\.id <abbr", text)
    assert f'href="/approvals/{earlier}"' in text and "not today" in text  # same fingerprint
    assert 'class="sql-k"' in text  # highlighted
    await site.web.store.decide(
        rid, (await site.web.accounts.get("bob")), approve=False, reason="cleanup"
    )
    await task


async def test_approve_from_the_page_releases_the_hold(site: Site) -> None:
    b = await site.signed_in("alice")
    rid, task = await site.held()
    page = await b.get(f"/approvals/{rid}")
    done = await b.post(f"/approvals/{rid}/approve", {"csrf": page.csrf(), "reason": "looks right"})
    assert done.status == 200 and done.url.endswith(f"/approvals/{rid}?done=approve")
    assert "Your approval was recorded." in done.text
    outcome = await task
    assert outcome.status is HoldStatus.APPROVED and outcome.decided_by == ("alice",)
    assert outcome.reason == "looks right"
    rec = await site.web.store.get(rid)
    assert [d.via for d in rec.decisions] == ["web"]


async def test_reject_needs_a_reason_and_then_fails_the_hold(site: Site) -> None:
    b = await site.signed_in("alice")
    rid, task = await site.held()
    csrf = (await b.get(f"/approvals/{rid}")).csrf()
    page = await b.post(f"/approvals/{rid}/reject", {"csrf": csrf, "reason": "  "})
    assert page.status == 400 and "reason is required" in page.text
    assert await site.status(rid) == "pending"
    page = await b.post(f"/approvals/{rid}/reject", {"csrf": csrf, "reason": "wrong table"})
    assert page.status == 200 and "rejected" in page.text
    outcome = await task
    assert outcome.status is HoldStatus.REJECTED and outcome.reason == "wrong table"


async def test_approve_the_shape_for_some_minutes(site: Site) -> None:
    b = await site.signed_in("alice")
    rid, task = await site.held(fingerprint="fp-shape-web")
    csrf = (await b.get(f"/approvals/{rid}")).csrf()
    page = await b.post(
        f"/approvals/{rid}/approve-shape",
        {"csrf": csrf, "minutes": "abc", "params": "free", "reason": ""},
    )
    assert page.status == 400 and "minutes" in page.text
    assert await site.status(rid) == "pending"
    page = await b.post(
        f"/approvals/{rid}/approve-shape",
        {"csrf": csrf, "minutes": "45", "params": "free", "reason": "routine"},
    )
    assert page.status == 200 and "shape approval was recorded" in page.text
    assert (await task).status is HoldStatus.APPROVED
    shapes = await site.web.store.list_shapes(active=True, fingerprint="fp-shape-web")
    assert len(shapes) == 1 and not shapes[0].params_fixed and shapes[0].created_by == "alice"
    assert (
        timedelta(minutes=44) < shapes[0].expires_at - shapes[0].created_at <= timedelta(minutes=45)
    )


# -- bad input ----------------------------------------------------------------------------------


async def test_a_form_without_or_with_a_wrong_csrf_token_decides_nothing(site: Site) -> None:
    b = await site.signed_in("alice")
    rid, task = await site.held()
    page = await b.post(f"/approvals/{rid}/approve", {"reason": "no token"})
    assert page.status == 403 and "without its security token" in page.text
    page = await b.post(f"/approvals/{rid}/approve", {"csrf": "forged", "reason": "x"})
    assert page.status == 403 and "does not match" in page.text
    other = await site.signed_in("bob")  # bob's token is not alice's
    bobs = (await other.get(f"/approvals/{rid}")).csrf()
    page = await b.post(f"/approvals/{rid}/approve", {"csrf": bobs})
    assert page.status == 403
    page = await b.post(
        f"/approvals/{rid}/approve",
        {"csrf": (await b.get(f"/approvals/{rid}")).csrf()},
        headers={"Origin": "http://evil.test"},
    )
    assert page.status == 403
    assert await site.status(rid) == "pending"
    assert (await site.web.store.get(rid)).decisions == ()
    await site.web.store.decide(
        rid, (await site.web.accounts.get("bob")), approve=False, reason="cleanup"
    )
    await task


async def test_a_stale_session_cookie_decides_nothing(site: Site, caplog) -> None:
    caplog.set_level("INFO", logger="dbgate.web")
    b = await site.signed_in("alice")
    rid, task = await site.held()
    csrf = (await b.get(f"/approvals/{rid}")).csrf()
    old_cookie = b.cookie(SESSION_COOKIE)
    bye = await b.post("/logout", {"csrf": csrf})
    assert bye.status == 200 and "You signed out." in bye.text
    assert b.cookie(SESSION_COOKIE) is None
    # The copied cookie of the ended session no longer works, for pages or forms.
    replay = site.browser()
    replay.http.cookie_jar.update_cookies({SESSION_COOKIE: old_cookie})
    async with replay.http.get(site.url + "/approvals", allow_redirects=False) as r:
        assert r.status == 303 and "why=signed_out" in r.headers["Location"]
    page = await replay.post(f"/approvals/{rid}/approve", {"csrf": csrf})
    assert page.status == 401 and "Nothing was submitted" in page.text
    assert any(
        f"POST /approvals/{rid}/approve" in r.getMessage()
        and "no live session (signed_out)" in r.getMessage()
        for r in caplog.records
    )
    forged = site.browser()
    forged.http.cookie_jar.update_cookies({SESSION_COOKIE: "made-up"})
    page = await forged.post(f"/approvals/{rid}/approve", {"csrf": csrf})
    assert page.status == 401
    assert await site.status(rid) == "pending"
    # An idle session lapses.
    idle = await site.signed_in("bob")
    await site.sql("UPDATE dbgate.web_sessions SET last_seen_at = now() - interval '2 hours'")
    async with idle.http.get(site.url + "/approvals", allow_redirects=False) as r:
        assert r.status == 303 and "why=idle" in r.headers["Location"]
    await site.web.store.decide(
        rid, (await site.web.accounts.get("bob")), approve=False, reason="cleanup"
    )
    await task


async def test_nobody_decides_their_own_agents_request(site: Site) -> None:
    rid, task = await site.held()  # identity "agent", owned by olga
    for name, why in (("olga", "owns identity 'agent'"), ("agent", "the identity that asked")):
        b = await site.signed_in(name)
        page = await b.get(f"/approvals/{rid}")
        assert "You cannot decide this request" in page.plain and why in page.plain
        assert 'id="approve-button"' not in page.text
        forced = await b.post(f"/approvals/{rid}/approve", {"csrf": page.csrf()})
        assert (
            forced.status == 403 and "Nothing was decided" in forced.plain and why in forced.plain
        )
    b = await site.signed_in("carol")  # wrong group
    page = await b.get(f"/approvals/{rid}?x=1")
    assert page.status == 200
    assert await site.status(rid) == "pending"
    await site.web.store.decide(
        rid, (await site.web.accounts.get("bob")), approve=False, reason="cleanup"
    )
    await task


async def test_two_tabs_deciding_at_once_exactly_one_wins(site: Site) -> None:
    b = await site.signed_in("alice")
    rid, task = await site.held()
    csrf = (await b.get(f"/approvals/{rid}")).csrf()
    first, second = await asyncio.gather(
        b.post(f"/approvals/{rid}/approve", {"csrf": csrf, "reason": "tab one"}),
        b.post(f"/approvals/{rid}/reject", {"csrf": csrf, "reason": "tab two"}),
    )
    statuses = sorted([first.status, second.status])
    assert statuses == [200, 409], (first.status, second.status)
    loser = first if first.status == 409 else second
    assert "Your decision was not recorded" in loser.text
    assert "already approved" in loser.text or "already rejected" in loser.text
    rec = await site.web.store.get(rid)
    assert len(rec.decisions) == 1
    outcome = await task
    assert outcome.status.value == rec.status


async def test_two_approvers_at_once_exactly_one_wins(site: Site) -> None:
    a, b = await site.signed_in("alice"), await site.signed_in("bob")
    rid, task = await site.held()
    ca, cb = (await a.get(f"/approvals/{rid}")).csrf(), (await b.get(f"/approvals/{rid}")).csrf()
    pages = await asyncio.gather(
        a.post(f"/approvals/{rid}/approve", {"csrf": ca}),
        b.post(f"/approvals/{rid}/approve", {"csrf": cb}),
    )
    assert sorted(p.status for p in pages) == [200, 409]
    assert len((await site.web.store.get(rid)).decisions) == 1
    assert (await task).status is HoldStatus.APPROVED


async def test_unknown_requests_and_routes_are_html_404s(site: Site) -> None:
    b = await site.signed_in("alice")
    for path in ("/approvals/999999999", "/approvals/abc", "/nowhere"):
        page = await b.get(path)
        assert page.status == 404 and "<html" in page.text, path


# -- history and live updates -------------------------------------------------------------------


async def test_history_filters(site: Site) -> None:
    b = await site.signed_in("alice")
    rid, task = await site.held(identity="history-agent")
    await site.web.store.decide(
        rid, (await site.web.accounts.get("bob")), approve=False, reason="history check"
    )
    await task
    page = await b.get("/history?identity=history-agent&status=rejected&category=destructive")
    assert page.status == 200 and f'href="/approvals/{rid}"' in page.text
    assert "history check" in page.text
    page = await b.get("/history?identity=history-agent&status=approved")
    assert f'href="/approvals/{rid}"' not in page.text and "No request matches" in page.text
    page = await b.get("/history?identity=history-agent&category=export")
    assert f'href="/approvals/{rid}"' not in page.text
    page = await b.get("/history?identity=history-agent&since=2999-01-01T00:00")
    assert f'href="/approvals/{rid}"' not in page.text
    page = await b.get(
        "/history?identity=history-agent&since=2000-01-01T00:00&until=2999-01-01T00:00"
    )
    assert f'href="/approvals/{rid}"' in page.text
    page = await b.get("/history?since=yesterday")
    assert page.status == 400 and "must be a date and time" in page.text
    page = await b.get("/history?status=bogus")
    assert page.status == 400


async def test_a_request_links_to_its_audit_records(site: Site) -> None:
    from dbgate.audit import AuditWriter
    from dbgate.audit.approval_steps import recorder
    from dbgate.config import AuditConfig

    b = await site.signed_in("alice")
    rid, task = await site.held(identity="audited-agent", approver_groups=("dba",))
    page = await b.get(f"/approvals/{rid}")
    assert "No audit records of this request yet" in page.text
    writer = AuditWriter(site.dsn, AuditConfig(), replica="web-test")
    await writer.start()
    site.web.store.on_event = recorder(writer)
    try:
        carol = await site.signed_in("carol")  # outside the rule's groups: refused, recorded
        carol_csrf = (await carol.get(f"/approvals/{rid}")).csrf()
        forced = await carol.post(f"/approvals/{rid}/approve", {"csrf": carol_csrf})
        assert forced.status == 403
        done = await b.post(f"/approvals/{rid}/approve", {"csrf": page.csrf(), "reason": "ok"})
        assert done.status == 200
        assert (await task).status is HoldStatus.APPROVED
        await writer.flush()
    finally:
        site.web.store.on_event = None
        await writer.stop()
    page = await b.get(f"/approvals/{rid}")
    section = page.plain.split('<h2 id="audit">Audit trail</h2>', 1)[1].split("</section>")[0]
    records = re.findall(r'<td data-label="Record">(.*?)</td>', section)
    assert records == ["approval refused", "approval approved"], section
    who = re.findall(r'<td data-label="Who">(.*?)</td>', section)
    assert who == ["carol", "alice"]
    assert "approve via web refused: " in section and "<code>web-test." in section
    assert f"WHERE approval_id = '{rid}'" in section
    history = await b.get("/history?identity=audited-agent")
    assert f'href="/approvals/{rid}#audit"' in history.text


async def test_the_event_stream_announces_new_requests(site: Site) -> None:
    b = await site.signed_in("alice")
    async with b.http.get(site.url + "/events") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        assert (await r.content.readline()).strip() == b"data: ready"
        await r.content.readline()
        rid, task = await site.held()
        while True:
            line = (await asyncio.wait_for(r.content.readline(), 30)).strip()
            if line == f"data: request:{rid}:pending".encode():
                break
    await site.web.store.decide(
        rid, (await site.web.accounts.get("bob")), approve=False, reason="cleanup"
    )
    await task
    fragment = await b.get("/approvals?fragment=rows")
    assert fragment.status == 200 and "<html" not in fragment.text


async def test_no_page_shows_raw_pii(site: Site) -> None:
    for b in site.browsers:
        for text in b.seen:
            for value in PII_VALUES:
                assert value not in text


async def test_over_tls_the_session_cookie_is_secure(site: Site, tmp_path) -> None:
    import ssl

    import aiohttp

    from dbgate.config import TLSConfig
    from dbgate.web.app import server_ssl_context
    from tests.integration.certs import self_signed

    cert, key = self_signed(tmp_path)
    settings = WebSettings(secure_cookies=True)
    server = WebServer(
        build_web_app(site.web, settings=settings),
        "127.0.0.1",
        0,
        ssl_context=server_ssl_context(TLSConfig(cert_file=cert, key_file=key)),
    )
    await server.start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        assert server.url.startswith("https://")
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(
            cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=client_ctx)
        ) as http:
            async with http.get(server.url + "/") as r:
                page = await r.text()
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
            token = re.search(r'name="login_token" value="([^"]+)"', page).group(1)
            async with http.post(
                server.url + "/login",
                data={"name": "alice", "password": PASSWORD, "login_token": token},
                allow_redirects=False,
            ) as r:
                assert r.status == 303
                cookie = next(
                    h for h in r.headers.getall("Set-Cookie") if h.startswith(SESSION_COOKIE)
                )
        assert "; secure" in cookie.lower() and "httponly" in cookie.lower()
    finally:
        await server.stop()


async def test_stopping_the_server_ends_open_event_streams(site: Site) -> None:
    server = WebServer(build_web_app(site.web), "127.0.0.1", 0, shutdown_timeout=60)
    await server.start()
    b = Browser(server.url)
    try:
        assert (await b.sign_in("alice", PASSWORD)).status == 200
        async with b.http.get(server.url + "/events") as r:
            assert (await r.content.readline()).strip() == b"data: ready"
            stopping = asyncio.create_task(server.stop())
            # The stream ends (EOF) because the server closed it, not after a timeout.
            rest = await asyncio.wait_for(r.content.read(), 30)
            assert b"data:" not in rest
            await asyncio.wait_for(stopping, 30)
    finally:
        await b.close()
