"""The approvers' pages: sign in, the live queue, one request, history.

Server-rendered with Jinja2 (autoescaped); the only script is ``static/live.js``,
which refreshes the queue when the state database announces a change. Every page
but sign-in needs a session (:mod:`dbgate.web.sessions`); every form carries the
session's CSRF token, and a POST without a live session or the right token decides
nothing.

HTTP codes say what happened, for people and for tests alike: 303 after a form that
worked (post/redirect/get), 400 a form that is incomplete, 401 no live session, 403
a missing or wrong CSRF token or a decision this approver may not take, 404 no such
request, 409 the request was decided meanwhile (the page shows by whom), 429 sign-in
locked after repeated failures, 503 the state database is unreachable.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from dbgate.approvals.errors import (
    ApprovalError,
    BadRequest,
    NotFound,
    StateUnavailable,
    Unauthorized,
)
from dbgate.approvals.service import PgApprovalService
from dbgate.approvals.store import STATUSES, clean_reason
from dbgate.web import queries
from dbgate.web.api import may_decide
from dbgate.web.keys import (
    DELIVERIES,
    LIVE,
    PASSWORD_SLOTS,
    SERVICE,
    SESSIONS,
    SETTINGS,
    THROTTLE,
)
from dbgate.web.sessions import LOGIN_COOKIE, SESSION_COOKIE, WebSession, new_secret

log = logging.getLogger("dbgate.web")

_MAX_ID = 2**63 - 1
HISTORY_PAGE = 200
#: Why a visitor is on the sign-in page (``?why=``), in plain words.
WHY = {
    "unknown": "Your sign-in was not recognised. Sign in again.",
    "signed_out": "You signed out of that session. Sign in again.",
    "expired": "Your session reached its time limit. Sign in again.",
    "idle": "Your session ended after a period without use. Sign in again.",
    "disabled": "Your approver account is disabled.",
    "bye": "You signed out.",
    "needed": "Sign in to see this page.",
}
DONE = {
    "approve": "Your approval was recorded.",
    "reject": "You rejected the request; the agent is told your reason.",
    "approve-shape": "The shape approval was recorded.",
}


# -- helpers ------------------------------------------------------------------------------


def _svc(request: web.Request) -> PgApprovalService:
    return request.app[SERVICE]


def _client_addr(request: web.Request) -> str:
    return request.remote or ""


def _cookie_args(request: web.Request, max_age: int | None) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "Strict",
        "secure": request.app[SETTINGS].secure_cookies or request.secure,
        "path": "/",
        "max_age": max_age,
    }


def _safe_next(value: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme): no open redirect. A
    browser drops tabs and line breaks from a URL and reads ``\\`` as ``/``, so
    ``/<TAB>/host`` would be ``//host``: a path with either, or any other white space
    or control character, is refused too."""
    if (
        value
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
        and not any(c.isspace() for c in value)
    ):
        return value
    return "/approvals"


def _render(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    session: WebSession | None = None,
) -> web.Response:
    context.setdefault("session", session)
    context.setdefault("csrf", session.csrf if session else "")
    context.setdefault("me", session.approver if session else None)
    context.setdefault("path", request.path)
    return aiohttp_jinja2.render_template(template, request, context, status=status)


async def _session(request: web.Request) -> tuple[WebSession | None, str]:
    session, why = await request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))
    return session, why


async def page_session(request: web.Request) -> WebSession:
    """The session of a GET page; otherwise a redirect to sign in, saying why."""
    session, why = await _session(request)
    if session is None:
        query = {"why": why or "needed", "next": request.path_qs}
        raise web.HTTPSeeOther("/?" + urlencode(query))
    return session


def _same_origin(request: web.Request) -> bool:
    """A browser's Origin header, when it sends one, must be this site (a second
    line of defence behind the CSRF token and SameSite=Strict)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    # Behind a proxy that ends TLS the scheme seen here is http while the browser's is
    # https: compare the host, or the configured public URL's origin.
    parts = urlsplit(origin)
    public = urlsplit(_svc(request).public_url)
    return parts.netloc == request.host or (
        (parts.scheme, parts.netloc) == (public.scheme, public.netloc)
    )


async def form_session(request: web.Request) -> tuple[WebSession, MultiDictProxy[Any]]:
    """The session of a form POST, with its CSRF token checked; a page explaining
    the refusal (401 or 403, nothing decided) otherwise."""
    form = await request.post()
    session, why = await _session(request)
    if session is None:
        log.info(
            "web: %s %s from %s refused: no live session (%s); nothing submitted",
            request.method,
            request.path,
            _client_addr(request),
            why or "none",
        )
        response = _login_page(
            request,
            message=(
                WHY.get(why or "needed", WHY["needed"])
                + " Nothing was submitted: your session had ended."
            ),
            status=401,
            next_path=request.headers.get("Referer", "") and _referer_path(request),
        )
        raise _as_exception(response)
    sent = form.get("csrf")
    if not _same_origin(request) or not session.csrf_ok(sent if isinstance(sent, str) else None):
        missing = not sent
        log.warning(
            "web: %s %s by %s refused: %s CSRF token",
            request.method,
            request.path,
            session.approver.name,
            "missing" if missing else "wrong",
        )
        text = (
            "This form arrived without its security token"
            if missing
            else "This form's security token does not match your session"
        )
        response = _render(
            request,
            "error.html",
            {
                "status": 403,
                "title": "Form refused",
                "message": (
                    f"{text} (it may come from another site, or from a page opened "
                    "before you last signed in). Nothing was decided. Reload the page "
                    "and try again."
                ),
            },
            status=403,
            session=session,
        )
        raise _as_exception(response)
    return session, form


def _referer_path(request: web.Request) -> str:
    ref = urlsplit(request.headers.get("Referer", ""))
    if ref.netloc and ref.netloc != request.host:
        return "/approvals"
    return _safe_next(ref.path + (f"?{ref.query}" if ref.query else ""))


class PageRefusal(Exception):
    """Carries an already rendered refusal page out of a helper; the error
    middleware (dbgate.web.app) sends it as is."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _as_exception(response: web.Response) -> PageRefusal:
    return PageRefusal(response)


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) > _MAX_ID:
        raise NotFound(f"approval request {raw!r} does not exist")
    return int(raw)


# -- sign in and out ------------------------------------------------------------------------


def _login_page(
    request: web.Request,
    *,
    message: str = "",
    status: int = 200,
    name: str = "",
    next_path: str = "",
    info: str = "",
) -> web.Response:
    token = new_secret()
    response = _render(
        request,
        "login.html",
        {
            "login_token": token,
            "message": message,
            "info": info,
            "name": name,
            "next": _safe_next(next_path or request.query.get("next")),
        },
        status=status,
    )
    response.set_cookie(LOGIN_COOKIE, token, **_cookie_args(request, 3600))
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /``: the sign-in page (or the queue, when already signed in)."""
    session, _ = await _session(request)
    if session is not None:
        raise web.HTTPSeeOther(_safe_next(request.query.get("next")))
    why = request.query.get("why", "")
    return _login_page(request, info=WHY.get(why, ""))


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /login``: check the form token, the lockout, then the password."""
    form = await request.post()
    name = str(form.get("name") or "").strip()
    password = str(form.get("password") or "")
    next_path = _safe_next(str(form.get("next") or ""))
    sent = str(form.get("login_token") or "")
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not cookie or sent != cookie:
        return _login_page(
            request,
            message=(
                "The sign-in form expired or was not sent from this page (its security "
                "token is missing or wrong). Please sign in again."
            ),
            status=403,
            name=name,
            next_path=next_path,
        )
    if not name or not password:
        return _login_page(
            request, message="Enter your approver name and password.", status=400, name=name
        )
    throttle = request.app[THROTTLE]
    keys = throttle.keys(name, _client_addr(request))
    locked = await throttle.locked_until(keys)
    if locked is not None:
        return _locked_page(request, name, locked, next_path)
    try:
        async with request.app[PASSWORD_SLOTS]:
            approver = await _svc(request).accounts.check_password(name, password)
    except Unauthorized as e:
        until = await throttle.failed(keys)
        log.warning(
            "web: failed sign-in for %r from %s (%s)", name[:64], _client_addr(request), e.message
        )
        if until is not None:
            return _locked_page(request, name, until, next_path)
        message = (
            "Wrong name or password."
            if "disabled" not in e.message
            else "This approver account is disabled."
        )
        return _login_page(request, message=message, status=401, name=name, next_path=next_path)
    await throttle.succeeded(name)
    await request.app[SESSIONS].purge()  # forget long-ended sessions now and then
    token, _session_obj = await request.app[SESSIONS].create(
        approver, _client_addr(request), request.headers.get("User-Agent", "")
    )
    log.info("web: %s signed in from %s", approver.name, _client_addr(request))
    response = web.HTTPSeeOther(next_path)
    settings = request.app[SETTINGS]
    response.set_cookie(
        SESSION_COOKIE, token, **_cookie_args(request, int(settings.session_max.total_seconds()))
    )
    response.del_cookie(LOGIN_COOKIE, path="/")
    raise response


def _locked_page(request: web.Request, name: str, until: datetime, next_path: str) -> web.Response:
    seconds = max(1, int((until - datetime.now(UTC)).total_seconds()))
    minutes = (seconds + 59) // 60
    response = _login_page(
        request,
        message=(
            "Too many failed sign-ins for this name or from this address. Sign-in is "
            f"locked for about {minutes} minute{'s' if minutes != 1 else ''}; the password "
            "was not checked."
        ),
        status=429,
        name=name,
        next_path=next_path,
    )
    response.headers["Retry-After"] = str(seconds)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    session, _form = await form_session(request)
    await request.app[SESSIONS].end(session)
    log.info("web: %s signed out", session.approver.name)
    response = web.HTTPSeeOther("/?why=bye")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# -- the queue ------------------------------------------------------------------------------


async def queue(request: web.Request) -> web.StreamResponse:
    """``GET /approvals``: pending requests, newest first (``?fragment=rows``: the
    table body only, for the live refresh)."""
    fragment = request.query.get("fragment") == "rows"
    if fragment:
        session, _ = await _session(request)
        if session is None:
            return web.Response(status=401, text="sign in again")
    else:
        session = await page_session(request)
    settings = request.app[SETTINGS]
    rows, total = await queries.pending(_svc(request).store.db, settings.queue_limit)
    context: dict[str, Any] = {"rows": rows, "total": total, "limit": settings.queue_limit}
    if fragment:
        return _render(request, "_queue_rows.html", context, session=session)
    context["failures"] = await request.app[DELIVERIES].recent_failures(3600)
    return _render(request, "queue.html", context, session=session)


async def events(request: web.Request) -> web.StreamResponse:
    """``GET /events``: server-sent announcements for open pages."""
    session, _ = await _session(request)
    if session is None:
        return web.Response(status=401, text="sign in again")
    return await request.app[LIVE].stream(request)


# -- one request ----------------------------------------------------------------------------


async def _detail_context(
    request: web.Request, session: WebSession, request_id: int
) -> dict[str, Any]:
    svc = _svc(request)
    rec = await svc.store.get(request_id)
    history = await svc.store.history(rec.fingerprint, exclude=rec.id, limit=20)
    shapes = (
        await svc.store.list_shapes(active=True, identity=rec.identity, fingerprint=rec.fingerprint)
        if rec.fingerprint
        else []
    )
    deliveries = await request.app[DELIVERIES].for_request(rec.id)
    audit = await queries.audit_records(svc.store.db, rec.id)
    return {
        "audit": audit,
        "audit_limit": queries.AUDIT_LIMIT,
        "rec": rec,
        "url": svc.url_for(rec.id),
        "cannot": may_decide(svc, session.approver, rec),
        "history": history,
        "shapes": shapes,
        "deliveries": deliveries,
        "max_shape_minutes": svc.store.max_shape_minutes,
        "owners": sorted(set(rec.owners) | set(svc.owners.get(rec.identity, ()))),
    }


async def detail(request: web.Request) -> web.StreamResponse:
    session = await page_session(request)
    context = await _detail_context(request, session, _id(request))
    context["done"] = DONE.get(request.query.get("done", ""), "")
    return _render(request, "detail.html", context, session=session)


async def _decide(request: web.Request, action: str) -> web.StreamResponse:
    session, form = await form_session(request)
    rid = _id(request)
    svc = _svc(request)
    approver = session.approver
    reason_raw = form.get("reason", "")
    try:
        if action == "approve":
            reason = clean_reason(reason_raw, required=False)
            rec = await svc.store.decide(rid, approver, approve=True, reason=reason, via="web")
        elif action == "reject":
            reason = clean_reason(reason_raw, required=True)
            rec = await svc.store.decide(rid, approver, approve=False, reason=reason, via="web")
        else:
            reason = clean_reason(reason_raw, required=False)
            minutes_raw = str(form.get("minutes") or "").strip()
            if not minutes_raw.isdigit():
                raise BadRequest("enter how many minutes the shape approval lasts (a whole number)")
            params = form.get("params", "fixed")
            if params not in ("fixed", "free"):
                raise BadRequest("choose whether the parameter values are fixed or free")
            _shape, rec = await svc.store.approve_shape(
                rid,
                approver,
                minutes=int(minutes_raw),
                params_fixed=params == "fixed",
                reason=reason,
                via="web",
            )
    except (NotFound, StateUnavailable):
        raise
    except ApprovalError as e:
        log.info("web: %s of request %d by %s refused: %s", action, rid, approver.name, e.message)
        context = await _detail_context(request, session, rid)
        context.update(
            {
                "error": _decision_error(action, e),
                "form_action": action,
                "form_reason": reason_raw if isinstance(reason_raw, str) else "",
            }
        )
        return _render(request, "detail.html", context, status=e.status, session=session)
    log.info("web: request %d %s by %s (now %s)", rid, action, approver.name, rec.status)
    raise web.HTTPSeeOther(f"/approvals/{rid}?done={quote(action)}")


def _decision_error(action: str, e: ApprovalError) -> str:
    verb = {"approve": "approve", "reject": "reject", "approve-shape": "approve the shape"}[action]
    prefix = "Nothing was decided" if e.status != 409 else "Your decision was not recorded"
    message = e.message[0].upper() + e.message[1:] if e.message else e.code
    return f"{prefix}: you could not {verb} this request. {message}."


async def approve(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "approve")


async def reject(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "reject")


async def approve_shape(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "approve-shape")


# -- history --------------------------------------------------------------------------------


def _parse_time(raw: str, name: str) -> datetime | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a date and time like 2026-01-31T14:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def history(request: web.Request) -> web.StreamResponse:
    session = await page_session(request)
    q = request.query
    status = q.get("status", "")
    error = ""
    try:
        if status and status not in STATUSES:
            raise BadRequest(f"unknown status {status!r}")
        before_raw = q.get("before", "")
        if before_raw and (not before_raw.isdigit() or int(before_raw) > _MAX_ID):
            raise BadRequest("'before' must be a request id")
        f = queries.HistoryFilter(
            identity=q.get("identity", "").strip() or None,
            statuses=[status] if status else [],
            category=q.get("category", "").strip() or None,
            since=_parse_time(q.get("since", ""), "from"),
            until=_parse_time(q.get("until", ""), "until"),
            before=int(before_raw) if before_raw else None,
        )
        rows = await queries.history(_svc(request).store.db, f, HISTORY_PAGE)
    except BadRequest as e:
        error, rows = e.message, []
    identities, categories = await queries.known_values(_svc(request).store.db)
    next_query = ""
    if len(rows) == HISTORY_PAGE:
        params = {k: v for k, v in q.items() if k != "before" and v}
        params["before"] = str(rows[-1].id)
        next_query = urlencode(params)
    return _render(
        request,
        "history.html",
        {
            "rows": rows,
            "error": error,
            "f": {k: q.get(k, "") for k in ("identity", "status", "category", "since", "until")},
            "statuses": STATUSES,
            "identities": identities,
            "categories": categories,
            "next_query": next_query,
        },
        status=400 if error else 200,
        session=session,
    )


#: (method, path, handler) of the pages; the API's routes are in dbgate.web.api.
PAGE_ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/", login_page),
    ("POST", "/login", login),
    ("POST", "/logout", logout),
    ("GET", "/approvals", queue),
    ("GET", "/events", events),
    ("GET", "/approvals/{id}", detail),
    ("POST", "/approvals/{id}/approve", approve),
    ("POST", "/approvals/{id}/reject", reject),
    ("POST", "/approvals/{id}/approve-shape", approve_shape),
    ("GET", "/history", history),
)

__all__ = ["PAGE_ROUTES", "PageRefusal", "page_session"]
