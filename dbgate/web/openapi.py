"""The OpenAPI 3.1 document served at ``/api/openapi.json``.

Written out by hand, not generated from the routes: it is the contract, and a test
(``tests/integration/test_approvals_api.py``) checks it against the routes the app
really serves — every route documented, every documented route served, methods equal.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_STRS = {"type": "array", "items": _STR}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATUS = {
    "type": "string",
    "enum": ["pending", "approved", "rejected", "expired", "withdrawn", "abandoned", "executed"],
}

_SUMMARY_PROPS: dict[str, Any] = {
    "id": {**_STR, "description": "Request id (digits)."},
    "status": _STATUS,
    "mode": {
        "type": "string",
        "enum": ["wait", "retry", "shape"],
        "description": "wait: a session waits; retry: approve-then-retry; shape: ran under a shape approval.",
    },
    "url": {**_STR, "description": "Where the request is decided."},
    "created_at": _TIME,
    "deadline": {**_TIME, "description": "A pending request expires at this time."},
    "waited_seconds": {"type": "number"},
    "identity": _STR,
    "database": {**_STR, "description": "The database the statement was sent to."},
    "application_name": {**_STR, "description": "PII-shaped values masked."},
    "client_addr": _STR,
    "purpose": {**_STR, "description": "The agent's declared purpose (masked)."},
    "model": _STR,
    "statement": {**_STR, "description": "The SQL text with PII masked."},
    "categories": _STRS,
    "tables": _STRS,
    "rule": _STR,
    "approver_groups": {**_STRS, "description": "Empty: any approver."},
    "approvals_needed": {"type": "integer", "minimum": 1},
    "approvals": {"type": "integer", "description": "Distinct approvals so far."},
    "estimated_rows": {"type": ["integer", "null"], "description": "Planner's estimate."},
    "decided_by": _STRS,
    "reason": _STR,
}

_DETAIL_PROPS: dict[str, Any] = {
    **_SUMMARY_PROPS,
    "params": {"type": "array", "items": {"type": ["string", "null"]}, "description": "Masked."},
    "reasons": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"code": _STR, "text": _STR},
            "required": ["code", "text"],
        },
    },
    "rule_message": _STR,
    "columns": _STRS,
    "fingerprint": _STR,
    "identity_groups": _STRS,
    "owners": _STRS,
    "session_id": {"type": "integer"},
    "replica": _STR,
    "wait_seconds": {"type": "number"},
    "estimate_note": _STR,
    "decided_at": _TIME,
    "finished_at": _TIME,
    "valid_until": _TIME,
    "claimed": {"type": "boolean"},
    "executed_at": _TIME,
    "shape_id": {"type": ["string", "null"]},
    "decisions": {"type": "array", "items": {"$ref": "#/components/schemas/Decision"}},
    "can_decide": {"type": "boolean", "description": "The caller may decide it now."},
    "cannot_decide_reason": _STR,
    "history": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryItem"}},
    "shapes": {"type": "array", "items": {"$ref": "#/components/schemas/Shape"}},
}

_SHAPE_PROPS: dict[str, Any] = {
    "id": _STR,
    "identity": _STR,
    "database": _STR,
    "fingerprint": _STR,
    "params": {"type": "string", "enum": ["free", "fixed"]},
    "statement": _STR,
    "source_request": {"type": ["string", "null"]},
    "created_by": _STR,
    "reason": _STR,
    "created_at": _TIME,
    "expires_at": _TIME,
    "revoked_at": _TIME,
    "revoked_by": {"type": ["string", "null"]},
    "revoke_reason": _STR,
    "uses": {"type": "integer"},
    "active": {"type": "boolean"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_TEXT = {
    400: "Malformed request (bad JSON, unknown key, bad query value).",
    401: "No valid Bearer token (missing, forged, revoked, expired).",
    403: "The caller may not do this (own request, outside the rule's groups).",
    404: "No such request or shape approval.",
    409: "No longer possible (already decided, expired, revoked).",
    413: "The body is too large.",
    503: "The state database is unavailable.",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_REASON_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"reason": {"type": "string", "maxLength": 2000}},
                "additionalProperties": False,
            }
        }
    },
}
_AUTH = [{"bearer": []}]


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The API's OpenAPI 3.1 description."""
    error_responses = {f"E{c}": _json(_ref("Error"), t) for c, t in _ERROR_TEXT.items()}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "dbgate approvals API",
            "version": "1",
            "description": (
                "Decide statements that dbgate holds for approval. Every statement and "
                "value is shown with PII masked. See docs/approvals.md."
            ),
        },
        "security": _AUTH,
        "paths": {
            "/api/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
                }
            },
            "/api/health": {
                "get": {
                    "summary": "Is the state database reachable?",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"status": _STR, "listening": {"type": "boolean"}},
                            },
                            "Reachable.",
                        ),
                        **_errors(503),
                    },
                }
            },
            "/api/me": {
                "get": {
                    "summary": "The approver the token belongs to.",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"name": _STR, "groups": _STRS}},
                            "The approver.",
                        ),
                        **_errors(401, 503),
                    },
                }
            },
            "/api/approvals": {
                "get": {
                    "summary": "List approval requests, newest first.",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "default": "pending"},
                            "description": "A status, several separated by commas, or 'all'.",
                        },
                        {"name": "identity", "in": "query", "schema": _STR},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 500,
                                "default": 100,
                            },
                        },
                        {
                            "name": "before",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                            "description": "Only ids below this (paging; see next_before).",
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "approvals": {"type": "array", "items": _ref("Summary")},
                                    "next_before": {"type": ["string", "null"]},
                                },
                            },
                            "The requests.",
                        ),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/api/approvals/{id}": {
                "get": {
                    "summary": "Everything an approver is shown about one request.",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(_ref("Detail"), "The request."),
                        **_errors(401, 404, 503),
                    },
                }
            },
            "/api/approvals/{id}/approve": {
                "post": {
                    "summary": "Approve (one of N approvals when the rule needs several).",
                    "parameters": [_ID],
                    "requestBody": _REASON_BODY,
                    "responses": {
                        "200": _json(_ref("Detail"), "Recorded; the request as it is now."),
                        **_errors(400, 401, 403, 404, 409, 413, 503),
                    },
                }
            },
            "/api/approvals/{id}/reject": {
                "post": {
                    "summary": "Reject; the agent's statement fails with this reason (required).",
                    "parameters": [_ID],
                    "requestBody": {**_REASON_BODY, "required": True},
                    "responses": {
                        "200": _json(_ref("Detail"), "Rejected; the request as it is now."),
                        **_errors(400, 401, 403, 404, 409, 413, 503),
                    },
                }
            },
            "/api/approvals/{id}/approve-shape": {
                "post": {
                    "summary": (
                        "Allow this statement's fingerprint for its identity for N minutes "
                        "(and approve the request if pending). Rules needing one approval only."
                    ),
                    "parameters": [_ID],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "minutes": {"type": "integer", "minimum": 1},
                                        "params": {
                                            "type": "string",
                                            "enum": ["free", "fixed"],
                                            "default": "fixed",
                                        },
                                        "reason": {"type": "string", "maxLength": 2000},
                                    },
                                    "required": ["minutes"],
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {"shape": _ref("Shape"), "request": _ref("Detail")},
                            },
                            "The shape approval and the request.",
                        ),
                        **_errors(400, 401, 403, 404, 409, 413, 503),
                    },
                }
            },
            "/api/shapes": {
                "get": {
                    "summary": "Shape approvals, newest first.",
                    "parameters": [
                        {
                            "name": "active",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["true", "false", "all"],
                                "default": "true",
                            },
                        },
                        {"name": "identity", "in": "query", "schema": _STR},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 500,
                                "default": 100,
                            },
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"shapes": {"type": "array", "items": _ref("Shape")}},
                            },
                            "The shape approvals.",
                        ),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/api/shapes/{id}": {
                "get": {
                    "summary": "One shape approval.",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(_ref("Shape"), "The shape approval."),
                        **_errors(401, 404, 503),
                    },
                }
            },
            "/api/shapes/{id}/revoke": {
                "post": {
                    "summary": "Revoke a shape approval (any approver may).",
                    "parameters": [_ID],
                    "requestBody": _REASON_BODY,
                    "responses": {
                        "200": _json(_ref("Shape"), "Revoked."),
                        **_errors(400, 401, 404, 409, 413, 503),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `dbgate approvers token NAME`.",
                }
            },
            "responses": error_responses,
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {**_STR, "description": "Machine-readable code."},
                        "message": _STR,
                        "status": {"type": "integer"},
                    },
                    "required": ["error", "message", "status"],
                },
                "Summary": {"type": "object", "properties": _SUMMARY_PROPS},
                "Detail": {"type": "object", "properties": _DETAIL_PROPS},
                "Decision": {
                    "type": "object",
                    "properties": {
                        "approver": _STR,
                        "decision": {"type": "string", "enum": ["approve", "reject"]},
                        "reason": _STR,
                        "via": {"type": "string", "enum": ["api", "cli", "web", "slack", "shape"]},
                        "decided_at": _TIME,
                    },
                },
                "HistoryItem": {
                    "type": "object",
                    "properties": {
                        "id": _STR,
                        "url": _STR,
                        "status": _STATUS,
                        "identity": _STR,
                        "created_at": _TIME,
                        "decided_by": _STRS,
                        "reason": _STR,
                    },
                },
                "Shape": {"type": "object", "properties": _SHAPE_PROPS},
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
