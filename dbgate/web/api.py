"""The approvals HTTP API: list, show, approve, reject, shape approvals.

Every route under ``/api/`` except ``/api/openapi.json`` and ``/api/health`` needs
``Authorization: Bearer TOKEN`` (``dbgate approvers token NAME``). Refusals are
JSON ``{"error": code, "message": text, "status": n}`` with the HTTP status that
says whose move it is: 400 malformed, 401 no valid token, 403 not yours to decide,
404 no such thing, 409 no longer decidable, 413 body too large, 503 state database
unavailable. Bodies are JSON objects; unknown keys are refused (a typo must not
silently drop a reason).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from dbgate.approvals.eligibility import Approver, refusal
from dbgate.approvals.errors import BadRequest, NotFound, PayloadTooLarge, Unauthorized
from dbgate.approvals.service import PgApprovalService
from dbgate.approvals.store import STATUSES, RequestRecord, clean_reason
from dbgate.approvals.store.decisions import storable_text
from dbgate.web.keys import MAX_BODY, SERVICE
from dbgate.web.serialize import history_item, request_detail, request_summary, shape_json

_MAX_ID = 2**63 - 1


def service(request: web.Request) -> PgApprovalService:
    return request.app[SERVICE]


async def authenticate(request: web.Request) -> Approver:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("send Authorization: Bearer TOKEN (dbgate approvers token NAME)")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer TOKEN'")
    return await service(request).accounts.authenticate_token(token.strip())


def _id(request: web.Request, what: str = "approval request") -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) > _MAX_ID:
        raise NotFound(f"{what} {raw!r} does not exist")
    return int(raw)


async def json_body(request: web.Request, allowed: Iterable[str]) -> dict[str, Any]:
    """The request's JSON object (empty body: {}); 400/413 for anything else."""
    limit = request.app[MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    return data


def _int_query(
    request: web.Request, name: str, default: int | None, lo: int, hi: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise BadRequest(f"'{name}' must be an integer from {lo} to {hi}")
    return int(raw)


def _identity_query(request: web.Request) -> str | None:
    identity = request.query.get("identity") or None
    if identity is not None and not storable_text(identity):
        raise BadRequest("'identity' must be text PostgreSQL can store (no NUL)")
    return identity


def may_decide(svc: PgApprovalService, approver: Approver, rec: RequestRecord) -> str | None:
    """None when ``approver`` may decide ``rec`` now, else why not (for the page's buttons)."""
    if rec.status != "pending":
        return f"the request is {rec.status}"
    owners = set(rec.owners) | set(svc.owners.get(rec.identity, ()))
    why = refusal(approver, rec.identity, rec.approver_groups, owners)
    if why is not None:
        return why
    if any(d.approver == approver.name for d in rec.decisions):
        return f"you already decided; it needs {rec.approvals_needed} different approvers"
    return None


async def _detail(request: web.Request, approver: Approver, rec: RequestRecord) -> dict[str, Any]:
    svc = service(request)
    history = await svc.store.history(rec.fingerprint, exclude=rec.id, limit=10)
    shapes = (
        await svc.store.list_shapes(active=True, identity=rec.identity, fingerprint=rec.fingerprint)
        if rec.fingerprint
        else []
    )
    return request_detail(
        rec,
        svc.url_for(rec.id),
        may_decide=may_decide(svc, approver, rec),
        history=[history_item(h, svc.url_for(h.id)) for h in history],
        shapes=shapes,
    )


# -- handlers ---------------------------------------------------------------------------


async def list_approvals(request: web.Request) -> web.Response:
    await authenticate(request)
    svc = service(request)
    raw = request.query.get("status", "pending")
    statuses = [] if raw == "all" else [s.strip() for s in raw.split(",") if s.strip()]
    for s in statuses:
        if s not in STATUSES:
            raise BadRequest(f"unknown status {s!r}; use one of {', '.join(STATUSES)} or all")
    limit = _int_query(request, "limit", 100, 1, 500) or 100
    before = _int_query(request, "before", None, 1, _MAX_ID)
    identity = _identity_query(request)
    records = await svc.store.list(statuses=statuses, identity=identity, before=before, limit=limit)
    return web.json_response(
        {
            "approvals": [request_summary(r, svc.url_for(r.id)) for r in records],
            "next_before": str(records[-1].id) if len(records) == limit else None,
        }
    )


async def get_approval(request: web.Request) -> web.Response:
    approver = await authenticate(request)
    rec = await service(request).store.get(_id(request))
    return web.json_response(await _detail(request, approver, rec))


async def _decide(request: web.Request, approve: bool) -> web.Response:
    approver = await authenticate(request)
    rid = _id(request)
    body = await json_body(request, {"reason"})
    reason = clean_reason(body.get("reason"), required=not approve)
    rec = await service(request).store.decide(rid, approver, approve=approve, reason=reason)
    return web.json_response(await _detail(request, approver, rec))


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def reject(request: web.Request) -> web.Response:
    return await _decide(request, False)


async def approve_shape(request: web.Request) -> web.Response:
    approver = await authenticate(request)
    svc = service(request)
    rid = _id(request)
    body = await json_body(request, {"reason", "minutes", "params"})
    minutes = body.get("minutes")
    if not isinstance(minutes, int) or isinstance(minutes, bool):
        raise BadRequest("'minutes' is required: an integer number of minutes")
    params = body.get("params", "fixed")
    if params not in ("free", "fixed"):
        raise BadRequest("'params' must be 'free' (any values) or 'fixed' (these values only)")
    reason = clean_reason(body.get("reason"), required=False)
    shape, rec = await svc.store.approve_shape(
        rid, approver, minutes=minutes, params_fixed=params == "fixed", reason=reason
    )
    return web.json_response(
        {"shape": shape_json(shape), "request": await _detail(request, approver, rec)}, status=201
    )


async def list_shapes(request: web.Request) -> web.Response:
    await authenticate(request)
    raw = request.query.get("active", "true")
    if raw not in ("true", "false", "all"):
        raise BadRequest("'active' must be true, false or all")
    active = None if raw == "all" else raw == "true"
    limit = _int_query(request, "limit", 100, 1, 500) or 100
    shapes = await service(request).store.list_shapes(
        active=active, identity=_identity_query(request), limit=limit
    )
    return web.json_response({"shapes": [shape_json(s) for s in shapes]})


async def get_shape(request: web.Request) -> web.Response:
    await authenticate(request)
    shape = await service(request).store.get_shape(_id(request, "shape approval"))
    return web.json_response(shape_json(shape))


async def revoke_shape(request: web.Request) -> web.Response:
    approver = await authenticate(request)
    sid = _id(request, "shape approval")
    body = await json_body(request, {"reason"})
    reason = clean_reason(body.get("reason"), required=False)
    shape = await service(request).store.revoke_shape(sid, approver, reason)
    return web.json_response(shape_json(shape))


async def me(request: web.Request) -> web.Response:
    approver = await authenticate(request)
    return web.json_response({"name": approver.name, "groups": sorted(approver.groups)})


async def health(request: web.Request) -> web.Response:
    svc = service(request)
    async with svc.store.db.connection() as conn:
        await conn.fetchval("SELECT 1")
    return web.json_response({"status": "ok", "listening": svc.waker.listening.is_set()})


async def openapi(request: web.Request) -> web.Response:
    from dbgate.web.openapi import openapi_document

    return web.json_response(openapi_document(service(request).public_url))


#: (method, path, handler): the routes build_web_app registers, and the only ones.
ROUTES: tuple[tuple[str, str, Any], ...] = (
    ("GET", "/api/openapi.json", openapi),
    ("GET", "/api/health", health),
    ("GET", "/api/me", me),
    ("GET", "/api/approvals", list_approvals),
    ("GET", "/api/approvals/{id}", get_approval),
    ("POST", "/api/approvals/{id}/approve", approve),
    ("POST", "/api/approvals/{id}/reject", reject),
    ("POST", "/api/approvals/{id}/approve-shape", approve_shape),
    ("GET", "/api/shapes", list_shapes),
    ("GET", "/api/shapes/{id}", get_shape),
    ("POST", "/api/shapes/{id}/revoke", revoke_shape),
)
