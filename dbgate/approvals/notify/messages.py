"""What a notification says about one request, for each kind of receiver.

Everything comes from the stored :class:`~dbgate.approvals.store.RequestRecord`,
which is already masked (statement, parameters, purpose, reasons): a notification
never carries more than the approval page shows. Pure functions, so each format is
tested as input -> output.

Events: ``created`` (a request waits for a decision) and ``finished`` (it was
approved, rejected, expired, withdrawn or abandoned).
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from dbgate.approvals.store import RequestRecord

EVENTS = ("created", "finished")
#: Statuses that end a request; ``executed`` follows ``approved`` and is not announced.
FINISHED = frozenset({"approved", "rejected", "expired", "withdrawn", "abandoned"})
#: Longest statement quoted in a chat message (the page shows all of it).
CHAT_STATEMENT_CHARS = 1500

ACTION_APPROVE = "dbgate_approve"
ACTION_REJECT = "dbgate_reject"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Longest reasons, tables and parameter values a chat message quotes.
CHAT_REASONS_CHARS = 500
CHAT_TABLES_CHARS = 300
CHAT_VALUES_CHARS = 500


def _hidden(ch: str) -> bool:
    """A character that changes how the text around it is shown without being seen:
    bidirectional overrides and isolates (U+202E, U+2066 ...), zero-width and other
    format characters, line and paragraph separators, control characters other than
    tab and line ends."""
    cat = unicodedata.category(ch)
    return cat in ("Cf", "Zl", "Zp") or (cat == "Cc" and ch not in "\t\n\r")


def has_hidden(text: str) -> bool:
    """Whether ``text`` holds a character :func:`reveal_hidden` would show."""
    if text.isascii():
        return any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in text)
    return any(_hidden(c) for c in text)


def reveal_hidden(text: str) -> str:
    """``text`` with each invisible or reordering character shown as ``[U+202E]``.

    A right-to-left override in a string literal or quoted identifier reorders what
    follows it on screen ("Trojan Source"): an approver would read another statement
    than the one that runs. Shown as its code point, it reorders nothing."""
    if not has_hidden(text):
        return text
    return "".join(f"[U+{ord(c):04X}]" if _hidden(c) else c for c in text)


def values_text(rec: RequestRecord) -> str:
    """The (masked) parameter values, as ``$1 = '…'``."""
    return ", ".join(
        f"${i} = " + ("NULL" if v is None else "'" + v.replace("'", "''") + "'")
        for i, v in enumerate(rec.params, 1)
    )


def _reasons_text(rec: RequestRecord) -> str:
    return "; ".join(t for _, t in rec.reasons) or rec.rule_message or "held by the rules"


def whole_in_chat(rec: RequestRecord) -> bool:
    """Whether a chat message shows everything an approver decides on: the statement,
    its values, reasons and tables, none of them cut short, and a statement that
    cannot end Slack's code block early. Otherwise the message offers no Approve
    button (an approval of a statement whose end was cut off is an approval of what
    the approver did not see) and a click on an older one is refused."""
    return (
        len(rec.statement) <= CHAT_STATEMENT_CHARS
        and "`" not in rec.statement
        and not has_hidden(rec.statement)
        and not any(v is not None and has_hidden(v) for v in rec.params)
        and len(values_text(rec)) <= CHAT_VALUES_CHARS
        and len(_reasons_text(rec)) <= CHAT_REASONS_CHARS
        and len(", ".join(rec.tables)) <= CHAT_TABLES_CHARS
    )


def rows_text(rec: RequestRecord) -> str:
    if rec.estimated_rows is None:
        return "not estimated"
    return f"about {rec.estimated_rows:,} row" + ("" if rec.estimated_rows == 1 else "s")


def needs_text(rec: RequestRecord) -> str:
    groups = " or ".join(rec.approver_groups) or "any approver"
    n = rec.approvals_needed
    return f"{n} approval{'s' if n != 1 else ''} from {groups}"


def outcome_text(rec: RequestRecord) -> str:
    """One line saying how the request ended."""
    by = ", ".join(rec.decided_by)
    reason = f": {rec.reason}" if rec.reason else ""
    if rec.status in ("approved", "executed"):
        return f"approved by {by or 'an approver'}{reason}"
    if rec.status == "rejected":
        return f"rejected by {by or 'an approver'}{reason}"
    return f"{rec.status}{reason}"


def request_json(rec: RequestRecord, url: str) -> dict[str, Any]:
    """The request as a webhook receiver gets it (a subset of the API's detail)."""
    return {
        "id": str(rec.id),
        "url": url,
        "status": rec.status,
        "identity": rec.identity,
        "application_name": rec.application_name,
        "client_addr": rec.client_addr,
        "purpose": rec.purpose,
        "model": rec.model,
        "statement": rec.statement,
        "params": list(rec.params),
        "categories": list(rec.categories),
        "reasons": [{"code": c, "text": t} for c, t in rec.reasons],
        "rule": rec.rule,
        "tables": list(rec.tables),
        "estimated_rows": rec.estimated_rows,
        "approver_groups": list(rec.approver_groups),
        "approvals_needed": rec.approvals_needed,
        "created_at": rec.created_at.isoformat(),
        "deadline": rec.deadline.isoformat(),
        "decided_by": list(rec.decided_by),
        "reason": rec.reason,
    }


def webhook_body(event: str, rec: RequestRecord, url: str, delivery_id: str) -> bytes:
    """The generic webhook's JSON body (the same bytes on every retry)."""
    return json.dumps(
        {
            "event": f"approval.{event}",
            "delivery": delivery_id,
            "request": request_json(rec, url),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")


# -- Slack ------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Slack's three control characters; the masked statement's ``<email>`` needs it.
    Characters that reorder or hide text are shown as code points (:func:`reveal_hidden`)."""
    return reveal_hidden(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_fields(rec: RequestRecord) -> list[dict[str, str]]:
    pairs = [
        ("Identity", rec.identity),
        ("Purpose", rec.purpose or "not given"),
        ("Categories", ", ".join(rec.categories) or "none"),
        ("Tables", ", ".join(rec.tables) or "none"),
        ("Rows", rows_text(rec)),
        ("Needs", needs_text(rec)),
    ]
    return [
        {"type": "mrkdwn", "text": f"*{k}*\n{slack_escape(_clip(v, CHAT_TABLES_CHARS))}"}
        for k, v in pairs
    ]


def slack_request_blocks(
    rec: RequestRecord, url: str, *, buttons: bool, status_line: str = ""
) -> list[dict[str, Any]]:
    """The blocks of the message about ``rec`` (also used to replace it once decided)."""
    reasons = _reasons_text(rec)
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": (
                    f"*dbgate: statement held for approval* (request {rec.id})\n"
                    f"{slack_escape(_clip(reasons, CHAT_REASONS_CHARS))}"
                ),
            },
        },
        {"type": "section", "fields": _slack_fields(rec)},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "```"
                + slack_escape(_clip(reveal_hidden(rec.statement), CHAT_STATEMENT_CHARS))
                + "```",
            },
        },
    ]
    if rec.params:
        values = slack_escape(_clip(reveal_hidden(values_text(rec)), CHAT_VALUES_CHARS))
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Values*\n{values}"}}
        )
    whole = whole_in_chat(rec)
    if buttons and not whole and not status_line:
        status_line = "Too long to show here in full: open it in dbgate to approve it."
    elements: list[dict[str, Any]] = []
    if buttons and whole:
        elements.append(
            {
                "type": "button",
                "action_id": ACTION_APPROVE,
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": str(rec.id),
            }
        )
    if buttons:
        elements += [
            {
                "type": "button",
                "action_id": ACTION_REJECT,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Reject"},
                "value": str(rec.id),
            },
        ]
    elements.append(
        {
            "type": "button",
            "action_id": "dbgate_open",
            "text": {"type": "plain_text", "text": "Open in dbgate"},
            "url": url,
        }
    )
    blocks.append({"type": "actions", "block_id": f"dbgate_request_{rec.id}", "elements": elements})
    if status_line:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(status_line)}]}
        )
    return blocks


def slack_message(event: str, rec: RequestRecord, url: str, *, buttons: bool) -> dict[str, Any]:
    """The incoming-webhook message for ``event``."""
    if event == "created":
        return {
            "text": f"dbgate: request {rec.id} by {rec.identity} waits for approval: {url}",
            "blocks": slack_request_blocks(rec, url, buttons=buttons),
        }
    line = f"dbgate: request {rec.id} by {rec.identity} {outcome_text(rec)}"
    return {
        "text": line,
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"{slack_escape(_clip(line, 2500))}\n<{url}|Open in dbgate>",
                },
            }
        ],
    }


# -- Microsoft Teams ----------------------------------------------------------------------


def _plain(text: str, label: str = "", **run: Any) -> dict[str, Any]:
    """A block of text an agent wrote, for a Teams card: a ``RichTextBlock`` of
    ``TextRun`` inlines, which Adaptive Cards never read as Markdown. In a ``TextBlock``
    or a fact's value, ``[Approve here](https://…)`` in a statement's comment, a
    quoted table name or a purpose was a link beside the card's own button."""
    inlines: list[dict[str, Any]] = []
    if label:
        inlines.append({"type": "TextRun", "text": f"{label}: ", "weight": "Bolder"})
    inlines.append({"type": "TextRun", "text": reveal_hidden(text), **run})
    return {"type": "RichTextBlock", "inlines": inlines}


def teams_message(event: str, rec: RequestRecord, url: str) -> dict[str, Any]:
    """An Adaptive Card in the message envelope Teams' incoming webhooks accept.
    What the agent wrote (statement, reasons naming its tables, purpose) is shown as
    plain text runs (:func:`_plain`); the facts are dbgate's own words."""
    if event == "created":
        title = f"dbgate: statement held for approval (request {rec.id})"
        reasons = "; ".join(t for _, t in rec.reasons) or rec.rule_message or "held by the rules"
        body: list[dict[str, Any]] = [
            {
                "type": "TextBlock",
                "size": "Medium",
                "weight": "Bolder",
                "text": title,
                "wrap": True,
            },
            _plain(_clip(reasons, 500)),
            {
                "type": "FactSet",
                "facts": [
                    {"title": "Identity", "value": rec.identity},
                    {"title": "Categories", "value": ", ".join(rec.categories) or "none"},
                    {"title": "Rows", "value": rows_text(rec)},
                    {"title": "Needs", "value": needs_text(rec)},
                ],
            },
            _plain(_clip(rec.purpose or "not given", 300), "Purpose"),
            _plain(_clip(", ".join(rec.tables) or "none", CHAT_TABLES_CHARS), "Tables"),
            _plain(_clip(rec.statement, CHAT_STATEMENT_CHARS), fontType="Monospace"),
        ]
    else:
        title = f"dbgate: request {rec.id} by {rec.identity} {outcome_text(rec)}"
        body = [{"type": "TextBlock", "text": _clip(title, 2500), "wrap": True}]
    return {
        "type": "message",
        "summary": _clip(title, 200),
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                    "actions": [{"type": "Action.OpenUrl", "title": "Open in dbgate", "url": url}],
                },
            }
        ],
    }
