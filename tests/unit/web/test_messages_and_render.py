"""What notifications say and how the page words things: pure functions, tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from dbgate.approvals.notify.messages import (
    needs_text,
    outcome_text,
    slack_escape,
    slack_message,
    teams_message,
    webhook_body,
)
from dbgate.approvals.notify.sender import RetryPolicy
from dbgate.approvals.notify.targets import Target, targets_from_config
from dbgate.approvals.store import RequestRecord
from dbgate.config import ConfigError, load_config
from dbgate.web.live import MAX_QUEUED, LiveFeed
from dbgate.web.render import duration, formatted_sql, highlighted_sql, pii_column, rows
from dbgate.web.sessions import WebSettings

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(**kw: object) -> RequestRecord:
    base: dict[str, object] = dict(
        id=7, status="pending", mode="wait", created_at=T0, deadline=T0, identity="agent",
        identity_groups=(), owners=(), application_name="app", client_addr="10.0.0.1",
        session_id=1, replica="r1", purpose="tidy <up> & go", model="m",
        statement="UPDATE customers SET email = '<email>' WHERE id = 1", params=("<card>",),
        fingerprint="fp", categories=("write",), reasons=(("pii", "writes PII"),), rule="r",
        rule_message="", tables=("customers",), columns=("customers.email",),
        approver_groups=("dba", "sec"), approvals_needed=2, wait_seconds=60.0,
        estimated_rows=1200, estimate_note="", decided_at=None, finished_at=None, reason="",
        valid_until=None, claimed_at=None, executed_at=None, shape_id=None, approvals=0,
        decided_by=(), waited_seconds=3.0,
    )  # fmt: skip
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_slack_messages_escape_slacks_control_characters() -> None:
    assert slack_escape("a < b & c > d") == "a &lt; b &amp; c &gt; d"
    msg = slack_message("created", record(), "http://x/approvals/7", buttons=True)
    text = json.dumps(msg)
    assert "&lt;email&gt;" in text and "'<email>'" not in text
    assert "tidy &lt;up&gt; &amp; go" in text
    buttons = [e for b in msg["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b.get("value") for b in buttons[:2]] == ["7", "7"]
    assert buttons[-1]["url"] == "http://x/approvals/7"
    plain = slack_message("created", record(), "http://x/approvals/7", buttons=False)
    assert [
        e["action_id"] for b in plain["blocks"] if b["type"] == "actions" for e in b["elements"]
    ] == ["dbgate_open"]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(status="approved", decided_by=("ann", "bo"), reason="ok"), "approved by ann, bo: ok"),
        (dict(status="executed", decided_by=("ann",)), "approved by ann"),
        (dict(status="rejected", decided_by=("ann",), reason="no"), "rejected by ann: no"),
        (dict(status="expired", reason="nobody decided"), "expired: nobody decided"),
    ],
)
def test_outcomes_in_plain_words(kw, expected) -> None:
    assert outcome_text(record(**kw)) == expected


def test_needs_and_finished_messages() -> None:
    assert needs_text(record()) == "2 approvals from dba or sec"
    assert (
        needs_text(record(approvals_needed=1, approver_groups=())) == "1 approval from any approver"
    )
    done = record(status="rejected", decided_by=("ann",), reason="no")
    assert "rejected by ann: no" in slack_message("finished", done, "u", buttons=True)["text"]
    card = teams_message("finished", done, "http://x/approvals/7")
    assert "rejected by ann" in card["attachments"][0]["content"]["body"][0]["text"]


def test_teams_card_and_webhook_body() -> None:
    card = teams_message("created", record(), "http://x/approvals/7")["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and card["actions"][0]["type"] == "Action.OpenUrl"
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["Rows"] == "about 1,200 rows" and facts["Needs"] == "2 approvals from dba or sec"
    body = json.loads(webhook_body("created", record(), "http://x/approvals/7", "7.created.1"))
    assert body["event"] == "approval.created" and body["delivery"] == "7.created.1"
    assert body["request"]["params"] == ["<card>"] and body["request"]["id"] == "7"


def test_teams_card_shows_what_the_agent_wrote_as_plain_text() -> None:
    """Teams reads Markdown in a TextBlock and in a fact's value: a link the agent
    wrote into a comment, a quoted table name or its purpose was a link on the card.
    Those texts are TextRuns, which are never Markdown."""
    link = "[Approve here](https://evil.test/login)"
    rec = record(
        statement=f"/* {link} */ DELETE FROM orders",
        purpose=link,
        tables=(f"public.{link}",),
        reasons=(("drop", f"removes table {link}"),),
    )
    card = teams_message("created", rec, "http://x/approvals/7")["attachments"][0]["content"]

    def markdown(node: Any) -> list[str]:
        if isinstance(node, dict):
            here = [
                str(node.get(k, "")) for k in ("text", "value") if node.get("type") != "TextRun"
            ]
            return here + [t for v in node.values() for t in markdown(v)]
        if isinstance(node, list):
            return [t for v in node for t in markdown(v)]
        return []

    assert not [t for t in markdown(card["body"]) if "](" in t]
    runs = json.dumps(card["body"])
    assert runs.count(link) == 4  # all four shown, as text


def test_targets_from_config_and_signed_headers() -> None:
    config = load_config(
        overrides={
            "notifications": {
                "webhooks": [{"name": "ops", "url": "http://h/x", "secret": "s" * 16}],
                "slack": {"webhook_url": "http://s", "signing_secret": "abcdefgh"},
                "teams": {"webhook_url": "http://t", "events": ["created"]},
            }
        }
    )
    targets = {t.name: t for t in targets_from_config(config.notifications)}
    assert set(targets) == {"webhook:ops", "slack", "teams"}
    assert targets["slack"].buttons and targets["teams"].events == frozenset({"created"})
    headers = targets["webhook:ops"].headers(b"{}", "d1", now=1000)
    assert headers["X-Dbgate-Signature"].startswith("t=1000,v1=")
    assert headers["X-Dbgate-Delivery"] == "d1"
    assert "X-Dbgate-Signature" not in Target("slack", "slack", "u", frozenset()).headers(b"", "d")


@pytest.mark.parametrize(
    ("notifications", "message"),
    [
        ({"webhooks": [{"name": "a", "url": "http://x", "secret": "short"}]}, "secret"),
        ({"webhooks": [{"name": "a", "url": "ftp://x", "secret": "s" * 16}]}, "url"),
        (
            {"webhooks": [{"name": "a", "url": "http://x", "secret": "s" * 16}] * 2},
            "name 'a' is used twice",
        ),
        ({"slack": {"webhook_url": "http://x", "bogus": 1}}, "bogus"),
        (
            {"webhooks": [{"name": "a", "url": "http://x", "secret": "s" * 16, "events": ["x"]}]},
            "events",
        ),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_notification_config_is_refused_by_key(notifications, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"notifications": notifications})


def test_web_settings_from_config() -> None:
    plain = load_config(overrides={"web": {"listen": "127.0.0.1:9"}})
    assert WebSettings.from_config(plain.web).secure_cookies is False
    https = load_config(overrides={"web": {"public_url": "https://approve.example"}})
    assert WebSettings.from_config(https.web).secure_cookies is True
    forced = load_config(overrides={"web": {"public_url": "https://a", "secure_cookies": False}})
    assert WebSettings.from_config(forced.web).secure_cookies is False
    s = WebSettings.from_config(
        load_config(overrides={"web": {"session_idle_minutes": 5, "login_max_failures": 9}}).web
    )
    assert s.session_idle.total_seconds() == 300 and s.login_max_failures == 9


def test_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(timeout=2, max_attempts=5, backoff=1, max_backoff=5)
    assert [p.delay(a) for a in range(1, 6)] == [1, 2, 4, 5, 5]
    assert p.longest_delivery() == 2 * 5 + 1 + 2 + 4 + 5


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.9, "59 s"), (60, "1 min"), (125, "2 min 5 s"), (7260, "2 h 1 min"),
     (3 * 86400 + 3600, "3 d 1 h"), (-5, "0 s")],
)  # fmt: skip
def test_durations(seconds, text) -> None:
    assert duration(seconds) == text


def test_sql_is_formatted_and_highlighted_safely() -> None:
    assert formatted_sql("update t set a=1 where b='<email>'") == (
        "UPDATE t\nSET a = 1\nWHERE b = '<email>'"
    )
    assert formatted_sql("not sql at all '") == "not sql at all '"  # shown as stored
    html = str(highlighted_sql("SELECT '</code><script>x</script>'"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert rows(None) == "not estimated" and rows(12345) == "12,345"
    assert pii_column("customers.email") and pii_column('"ssn"') and not pii_column("orders.id")


def test_the_live_feed_bounds_a_slow_page() -> None:
    feed = LiveFeed()
    import asyncio

    q: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED)
    feed._streams.add(q)
    for i in range(MAX_QUEUED + 10):
        feed.publish(f"request:{i}:pending")
    items = [q.get_nowait() for _ in range(q.qsize())]
    assert "refresh" in items and len(items) <= MAX_QUEUED
    feed.detach()
    assert q.get_nowait() == ""  # told to close


def test_the_default_public_url_follows_web_tls() -> None:
    from dbgate.approvals.service import PgApprovalService

    state = {"dsn": "postgresql://u@h/db"}
    tls = {"cert_file": "/c.pem", "key_file": "/k.pem"}
    plain = load_config(overrides={"state": state, "web": {"listen": "0.0.0.0:8443"}})
    secure = load_config(overrides={"state": state, "web": {"listen": "0.0.0.0:8443", "tls": tls}})
    assert PgApprovalService.from_config(plain).public_url == "http://0.0.0.0:8443"
    assert PgApprovalService.from_config(secure).public_url == "https://0.0.0.0:8443"
    assert WebSettings.from_config(secure.web).secure_cookies is True


def _actions(msg: dict) -> list[str]:
    return [e["action_id"] for b in msg["blocks"] if b["type"] == "actions" for e in b["elements"]]


@pytest.mark.parametrize(
    "kw",
    [
        dict(statement="SELECT 1 /* " + "x" * 1600 + " */; DELETE FROM orders"),
        dict(statement="SELECT 1 /* ``` */"),  # would end Slack's code block early
        dict(params=("y" * 600,)),
        dict(reasons=(("r", "z" * 600),)),
        dict(tables=tuple(f"table_{i}" for i in range(60))),
        # a right-to-left override shows what follows it reordered (Trojan Source)
        dict(statement="DELETE FROM orders WHERE note = '\u202e' OR id > 0 --'"),
        dict(params=("a\u2066b",)),
    ],
)
def test_slack_offers_no_approve_button_for_what_it_cannot_show_whole(kw) -> None:
    """Regression: the statement was cut at 1,500 characters, reasons at 500, tables at
    300, values not shown at all, and the Approve button was offered anyway."""
    msg = slack_message("created", record(**kw), "http://x/approvals/7", buttons=True)
    assert _actions(msg) == ["dbgate_reject", "dbgate_open"]
    assert "open it in dbgate to approve it" in json.dumps(msg)


def test_slack_shows_the_values() -> None:
    msg = slack_message("created", record(params=("<card>", None)), "u", buttons=True)
    assert "$1 = '&lt;card&gt;', $2 = NULL" in json.dumps(msg)
    assert _actions(msg) == ["dbgate_approve", "dbgate_reject", "dbgate_open"]


def test_characters_that_reorder_or_hide_text_are_shown_as_code_points() -> None:
    """Regression: a right-to-left override (U+202E) or isolate in a literal was shown
    as is, so the page (and Slack) drew the rest of the line reversed: an approver
    read another statement than the one that runs."""
    sql = "DELETE FROM orders WHERE note = '\u202e' OR id > 0 --'"
    shown = formatted_sql(sql)
    assert "\u202e" not in shown and "[U+202E]" in shown
    assert "[U+202E]" in formatted_sql("not sql \u202e at all '")  # shown as stored
    assert "[U+200B]" in str(highlighted_sql(formatted_sql("SELECT 'a\u200bb'")))
    assert formatted_sql("SELECT 'ä\tb'") == "SELECT 'ä\tb'"  # nothing else changes
    msg = json.dumps(slack_message("created", record(statement=sql), "u", buttons=True))
    assert "\\u202e" not in msg and "[U+202E]" in msg


def test_the_cli_shows_terminal_escapes_as_code_points(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``dbgate approvals show`` printed the statement as stored, so an
    escape sequence in a literal (cursor up, erase line) redrew the operator's
    terminal over the statement."""
    from dbgate.approvals.commands import _print_detail, _print_list

    sql = "DELETE FROM orders WHERE note = '\x1b[1A\x1b[2K' OR id > 0"
    rec = record(statement=sql, params=("\u202e",))
    _print_detail(rec)
    _print_list([rec])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "[U+001B][1A[U+001B][2K" in out and "[U+202E]" in out
