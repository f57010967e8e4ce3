"""Helpers for the approvers' page tests: accounts with passwords, a cookie-keeping
client that signs in and reads forms the way a browser does.

Passwords are hashed with a lower scrypt cost than production (2^12 instead of
2^17; :func:`verify_password` reads the cost from the stored hash) so that signing in
takes milliseconds in tests; the code path is the same.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from dbgate.approvals.passwords import hash_password
from dbgate.approvals.service import PgApprovalService

CSRF = re.compile(r'name="csrf" value="([^"]*)"')
LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]*)"')


async def add_person(svc: PgApprovalService, name: str, password: str, *groups: str) -> None:
    """An approver who signs in with a password (cheap hash, see the module docstring)."""
    async with svc.store.db.connection() as conn:
        await conn.execute(
            "INSERT INTO dbgate.approvers (name, groups, password_hash) VALUES ($1, $2, $3)",
            name,
            sorted(groups),
            hash_password(password, log_n=12),
        )


@dataclass
class Page:
    status: int
    text: str
    url: str
    headers: Any

    @property
    def plain(self) -> str:
        """The text with HTML entities decoded (what a reader sees)."""
        return html.unescape(self.text)

    def csrf(self) -> str:
        m = CSRF.search(self.text)
        assert m, "no CSRF field on the page"
        return m.group(1)


@dataclass
class Browser:
    """An aiohttp client with its own cookie jar: one browser profile."""

    base: str
    http: aiohttp.ClientSession = field(init=False)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kw: Any) -> Page:
        async with self.http.get(self.base + path, **kw) as r:
            text = await r.text()
            self.seen.append(text)
            return Page(r.status, text, str(r.url), r.headers)

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> Page:
        async with self.http.post(self.base + path, data=data, **kw) as r:
            text = await r.text()
            self.seen.append(text)
            return Page(r.status, text, str(r.url), r.headers)

    async def sign_in(self, name: str, password: str) -> Page:
        page = await self.get("/")
        m = LOGIN_TOKEN.search(page.text)
        assert m, page.text
        return await self.post(
            "/login", {"name": name, "password": password, "login_token": m.group(1), "next": ""}
        )

    def cookie(self, name: str) -> str | None:
        for c in self.http.cookie_jar:
            if c.key == name:
                return c.value
        return None
