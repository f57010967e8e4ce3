"""``dbgate classify`` and ``dbgate rules check`` through the real console script.

These run ``.venv/bin/dbgate`` in a subprocess, exactly as an operator would,
so they also prove the CLI wiring, the exit codes and that the shipped pack is
found without any flag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbgate.policy.rules import RULES_DIR_ENV

DBGATE = Path(sys.executable).parent / "dbgate"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != RULES_DIR_ENV}
    return subprocess.run(
        [str(DBGATE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


def classify_json(sql: str, *extra: str) -> dict[str, object]:
    proc = run("classify", "--json", *extra, sql)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def test_console_script_exists() -> None:
    assert DBGATE.is_file(), f"{DBGATE} missing: run make install"


def test_copy_to_program_is_denied(tmp_path: Path) -> None:
    # run from an unrelated directory: the shipped pack must be found without --rules
    proc = run("classify", "--json", "COPY customers TO PROGRAM 'curl x'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["action"] == "deny"
    assert doc["rule"] == "deny-server-admin"
    assert {"admin", "export"} <= set(doc["categories"])
    assert doc["categories"] == sorted(doc["categories"])
    assert doc["tables"] == ["customers"]
    assert "server administration" in doc["message"]
    assert doc["reasons"], "reasons must explain the categories"
    for r in doc["reasons"]:
        assert {"category", "code", "message"} <= set(r)
        assert r["code"] and r["message"]
    (st,) = doc["statements"]
    assert st["command"] == "COPY"
    assert st["action"] == "deny"
    assert st["units"]["admin"] == "deny-server-admin"
    assert st["units"]["export"] == "hold-export"


def test_bounded_read_is_allowed() -> None:
    doc = classify_json("SELECT id, total FROM orders WHERE id = 42")
    assert doc["action"] == "allow"
    assert doc["categories"] == ["read"]
    assert doc["rule"] == "allow-reads"
    assert doc["tables"] == ["orders"]


def test_run_time_limits_are_reported_for_an_allowed_statement() -> None:
    doc = classify_json("SELECT id, total FROM orders WHERE status = 'paid'")
    assert doc["action"] == "allow"
    assert doc["limits"] == {"max_rows": 1000, "max_rows_changed": None}
    assert doc["over_limit"] == {"max_rows": {"action": "refuse", "rule": "allow-reads"}}
    assert doc["row_window"] == {
        "rows": 20000,
        "seconds": 3600,
        "rule": "allow-reads",
        "tables": ["orders"],
    }
    (st,) = doc["statements"]
    assert (st["read_bound"], st["unbounded_tables"], st["write_bound"]) == (None, ["orders"], 0)
    write = classify_json("UPDATE orders SET total = 0 WHERE status = 'x'")
    assert write["limits"] == {"max_rows": None, "max_rows_changed": 100}
    assert write["over_limit"] == {
        "max_rows_changed": {"action": "hold", "rule": "allow-bounded-writes"}
    }
    assert classify_json("SELECT 1")["limits"] is None
    assert classify_json("DELETE FROM orders")["limits"] is None  # held: no limits
    proc = run("classify", "UPDATE orders SET total = 0 WHERE status = 'x'")
    assert "limit:      at most 100 rows changed per statement, then held for approval" in (
        proc.stdout
    )


def test_multi_statement_is_most_restrictive() -> None:
    doc = classify_json("SELECT 1; GRANT ALL ON orders TO PUBLIC")
    assert doc["action"] == "hold"
    assert doc["rule"] == "hold-privilege"
    assert doc["approver_groups"] == ["dba"]
    assert doc["expires_after_seconds"] == 3600
    assert [s["action"] for s in doc["statements"]] == ["allow", "hold"]


def test_parse_error_is_denied_with_parser_message() -> None:
    doc = classify_json("SELEC 1")
    assert doc["action"] == "deny"
    assert doc["rule"] == "parse-error"
    assert doc["parse_error"]
    assert "syntax error" in doc["message"]
    assert any(r["code"] == "parse-error" for r in doc["reasons"])


def test_decision_reasons_are_this_statements_own() -> None:
    doc = classify_json("DELETE FROM orders")
    assert (doc["action"], doc["rule"]) == ("hold", "hold-destructive")
    assert doc["decision_reasons"] == [
        {
            "category": "destructive",
            "code": "delete-without-where",
            "message": "deletes every row of orders (no WHERE that narrows it to a few rows)",
        }
    ]
    proc = run("classify", "DELETE FROM orders")
    assert "because:    deletes every row of orders" in proc.stdout


def test_parse_error_reports_the_position_postgresql_would() -> None:
    doc = classify_json("SELECT 'é' FRO x")
    assert (doc["parse_error"], doc["parse_error_position"]) == ('syntax error at or near "x"', 16)
    assert classify_json("SELECT 1")["parse_error_position"] is None


def test_text_output_is_readable() -> None:
    proc = run("classify", "DELETE FROM orders")
    assert proc.returncode == 0, proc.stderr
    assert "action:     HOLD  (rule hold-destructive)" in proc.stdout
    assert "categories: destructive" in proc.stdout
    assert "approval:   1 from dba, expires after 3600s" in proc.stdout


def test_classify_with_custom_rules(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - name: deny-orders\n    match: {tables: [orders]}\n    action: deny\n"
        "    message: orders are off limits\n"
    )
    doc = classify_json("SELECT * FROM orders WHERE id = 1", "--rules", str(tmp_path))
    assert (doc["action"], doc["rule"], doc["message"]) == (
        "deny",
        "deny-orders",
        "orders are off limits",
    )


def test_classify_with_bad_rules_exits_2(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("rules:\n  - name: a\n    action: alow\n")
    proc = run("classify", "--json", "--rules", str(tmp_path), "SELECT 1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"{tmp_path / 'r.yaml'}:3: unknown action 'alow'; did you mean 'allow'?" in proc.stderr


def test_rules_check_shipped_pack() -> None:
    proc = run("rules", "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok: 14 rules in 1 file"


def test_rules_check_broken_dir(tmp_path: Path) -> None:
    (tmp_path / "10-a.yaml").write_text(
        "rules:\n"
        "  - name: a\n"
        "    match:\n"
        "      categories: [exprt]\n"
        "    action: hold\n"
        "    expires_after: soon\n"
    )
    (tmp_path / "20-b.yaml").write_text("rules:\n  - name: a\n    action: deny\n")
    proc = run("rules", "check", str(tmp_path))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        f"{tmp_path / '10-a.yaml'}:4: unknown category 'exprt'; did you mean 'export'? "
        "(valid: read, write, destructive, ddl, privilege, export, dump, admin, escape, "
        "opaque, control, lock)"
    )
    assert lines[1] == (
        f"{tmp_path / '10-a.yaml'}:6: bad duration str 'soon' for 'expires_after'; "
        "use e.g. 90s, 15m, 1h, 1h30m, 2d"
    )
    assert len(lines) == 2  # rule 'a' in 10-a.yaml was invalid, so 20-b's 'a' is not a duplicate
    assert "2 problems found" in proc.stderr


def test_rules_check_counts_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules:\n  - {name: a, action: allow}\n")
    (tmp_path / "b.yml").write_text(
        "rules:\n  - {name: b, action: deny}\n  - {name: c, action: hold}\n"
    )
    proc = run("rules", "check", str(tmp_path))
    assert (proc.returncode, proc.stdout) == (0, "ok: 3 rules in 2 files\n")


def test_rules_check_prints_warnings_but_passes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "rules:\n"
        "  - {name: hold-all-reads, match: {categories: read}, action: hold}\n"
        "  - {name: allow-my-reads, match: {categories: read, identities: me}, action: allow}\n"
    )
    proc = run("rules", "check", str(tmp_path))
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [
        f"{tmp_path / 'a.yaml'}:3: warning: rule 'allow-my-reads' can never match; every "
        f"category it covers is decided earlier by 'hold-all-reads' ({tmp_path / 'a.yaml'}:2)",
        "ok: 2 rules in 1 file (1 warning)",
    ]


@pytest.mark.parametrize("missing", ["nope", "empty"])
def test_rules_check_missing_or_empty_dir(tmp_path: Path, missing: str) -> None:
    (tmp_path / "empty").mkdir()
    proc = run("rules", "check", str(tmp_path / missing))
    assert proc.returncode == 1
    assert proc.stdout.startswith(str(tmp_path / missing) + ": ")


# --- in-process: paths a subprocess cannot reach -------------------------------------


def test_classifier_crash_is_reported_as_deny(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from dbgate.policy import commands

    def boom(sql: str) -> object:
        raise RuntimeError("classifier bug")

    monkeypatch.setattr(commands, "_classify", boom)
    out, err = io.StringIO(), io.StringIO()
    assert commands.classify_command("SELECT 1", None, True, out=out, err=err) == 0
    doc = json.loads(out.getvalue())
    assert (doc["action"], doc["rule"]) == ("deny", "internal-error")
    assert "classifier bug" in doc["message"]
    assert doc["reasons"][0]["code"] == "internal-error"


def test_classify_command_identity_is_used() -> None:
    import io

    from dbgate.policy import commands
    from dbgate.policy.model import Identity

    out = io.StringIO()
    rc = commands.classify_command(
        "SELECT 1", None, True, identity=Identity("reporting-bot"), out=out
    )
    assert rc == 0
    assert json.loads(out.getvalue())["identity"] == "reporting-bot"


def test_classify_decides_for_the_given_identity_and_groups(tmp_path: Path) -> None:
    (tmp_path / "10-dba.yaml").write_text(
        "rules:\n"
        "  - name: dba-bot-ddl\n"
        "    match: {categories: [ddl], identities: [dba-bot], groups: [dba]}\n"
        "    action: allow\n"
        "  - name: rest\n"
        "    action: hold\n"
    )
    sql = "create index on orders (status)"
    as_dba = classify_json(sql, "--rules", str(tmp_path), "--identity", "dba-bot", "--group", "dba")
    assert (as_dba["action"], as_dba["rule"]) == ("allow", "dba-bot-ddl")
    no_group = classify_json(sql, "--rules", str(tmp_path), "--identity", "dba-bot")
    assert no_group["action"] == "hold"
    default_agent = classify_json(sql, "--rules", str(tmp_path))
    assert default_agent["action"] == "hold"
