"""Bodies of ``dbgate classify`` and ``dbgate rules check``.

``dbgate/cli.py`` only parses flags; the work and the output format live here so
they can be tested without a subprocess and reused by other front ends. Both
functions print and return the process exit code.

``classify`` is a report: it exits 0 whatever the decision (hold and deny are
answers, not failures) and 2 when the rules directory cannot be loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from dbgate.policy.model import Action, Classification, Decision, Identity
from dbgate.policy.rules import RulesError, RuleSet, StatementDecision, load_rules

#: The identity ``dbgate classify`` decides for: an agent with no groups.
CLI_IDENTITY = Identity(name="agent", application_name="dbgate classify")


def _classify(sql: str) -> Classification:
    from dbgate.policy.classify import classify

    return classify(sql)


def _statement_json(index: int, sd: StatementDecision) -> dict[str, Any]:
    st = sd.statement
    return {
        "index": index,
        "command": st.command,
        "categories": sorted(c.value for c in st.categories),
        "reasons": [
            {"category": r.category.value, "code": r.code, "message": r.message} for r in st.reasons
        ],
        "tables": sorted(st.tables),
        "columns": sorted(st.columns),
        "functions": sorted(st.functions),
        "needs_bind": st.needs_bind,
        "read_bound": st.read_bound,
        "result_bound": st.result_bound,
        "unbounded_tables": sorted(st.unbounded_tables),
        "write_bound": st.write_bound,
        "writes_counted": st.writes_counted,
        "action": sd.action.value,
        "rule": sd.rule.name,
        "units": {u.category.value: u.rule.name for u in sd.units},
    }


def classification_report(
    ruleset: RuleSet, identity: Identity, classification: Classification
) -> dict[str, Any]:
    """The JSON document ``dbgate classify --json`` prints (a stable contract)."""
    decision: Decision = ruleset.decide(identity, classification)
    explained: tuple[StatementDecision, ...] = ()
    if classification.parse_error is None and decision.rule != "internal-error":
        try:
            explained = ruleset.explain(identity, classification)
        except Exception:  # detail is best-effort; the decision above already failed closed
            explained = ()
    reasons = [
        {"statement": i, "category": r.category.value, "code": r.code, "message": r.message}
        for i, st in enumerate(classification.statements)
        for r in st.reasons
    ]
    if classification.parse_error is not None:
        reasons.append(
            {
                "statement": None,
                "category": "opaque",
                "code": "parse-error",
                "message": classification.parse_error,
            }
        )
    categories = {c.value for c in classification.categories}
    if classification.parse_error is not None:
        categories.add("opaque")
    return {
        "action": decision.action.value,
        "rule": decision.rule,
        "message": decision.message,
        "decision_reasons": [
            {"category": r.category.value, "code": r.code, "message": r.message}
            for r in decision.reasons
        ],
        "categories": sorted(categories),
        "reasons": reasons,
        "tables": sorted(classification.tables),
        "functions": sorted(classification.functions),
        "columns": sorted({c for s in classification.statements for c in s.columns}),
        "statements": [_statement_json(i, sd) for i, sd in enumerate(explained)],
        "approver_groups": list(decision.approver_groups),
        "approvals_needed": decision.approvals_needed,
        "wait_seconds": decision.wait_seconds,
        "expires_after_seconds": decision.wait_seconds,  # the older name
        "limits": decision.limits,
        "over_limit": _over_limit_json(decision),
        "row_window": _window_json(decision),
        "guard_clamps": dict(decision.guard_clamps),
        "needs_bind": classification.needs_bind,
        "parse_error": classification.parse_error,
        "parse_error_position": classification.parse_error_position,
        "fingerprint": classification.fingerprint,
        "identity": identity.name,
    }


def _over_limit_json(decision: Decision) -> dict[str, Any] | None:
    """What happens past each limit that applies: refuse (54000) or hold, and by which rule."""
    out: dict[str, Any] = {}
    for key, over in (
        ("max_rows", decision.rows_over_limit),
        ("max_rows_changed", decision.changes_over_limit),
    ):
        if over is not None:
            out[key] = {
                "action": "hold" if over.action is Action.HOLD else "refuse",
                "rule": over.rule,
            }
    return out or None


def _window_json(decision: Decision) -> dict[str, Any] | None:
    w = decision.row_window
    if w is None:
        return None
    return {"rows": w.rows, "seconds": w.seconds, "rule": w.rule, "tables": sorted(w.tables)}


def _internal_error_report(identity: Identity, error: Exception) -> dict[str, Any]:
    message = f"the classifier failed ({type(error).__name__}: {error}); dbgate would refuse this"
    return {
        "action": "deny",
        "rule": "internal-error",
        "message": message,
        "decision_reasons": [],
        "categories": ["opaque"],
        "reasons": [
            {"statement": None, "category": "opaque", "code": "internal-error", "message": message}
        ],
        "tables": [],
        "functions": [],
        "columns": [],
        "statements": [],
        "approver_groups": [],
        "approvals_needed": 1,
        "wait_seconds": None,
        "expires_after_seconds": None,
        "limits": None,
        "over_limit": None,
        "row_window": None,
        "guard_clamps": {},
        "needs_bind": False,
        "parse_error": None,
        "parse_error_position": None,
        "fingerprint": "",
        "identity": identity.name,
    }


def _print_text(report: dict[str, Any], out: TextIO) -> None:
    w = out.write
    w(f"action:     {report['action'].upper()}  (rule {report['rule']})\n")
    if report["message"]:
        w(f"message:    {report['message']}\n")
    if report["action"] != "allow":
        for r in report["decision_reasons"]:
            w(f"because:    {r['message']} ({r['category']}: {r['code']})\n")
    if report["action"] == "hold":
        groups = ", ".join(report["approver_groups"]) or "any approver"
        wait = report["wait_seconds"]
        if wait == 0:
            how = ", answered at once (approve-then-retry)"
        elif wait is not None:
            how = f", expires after {wait:g}s"
        else:
            how = ""
        w(f"approval:   {report['approvals_needed']} from {groups}{how}\n")
    limits = report["limits"]
    if limits:
        over = report["over_limit"] or {}
        for key, what in (("max_rows", "rows returned"), ("max_rows_changed", "rows changed")):
            if limits.get(key) is not None:
                then = (over.get(key) or {}).get("action", "refuse")
                then = "held for approval" if then == "hold" else "refused with SQLSTATE 54000"
                w(f"limit:      at most {limits[key]} {what} per statement, then {then}\n")
    window = report["row_window"]
    if window:
        w(
            f"window:     at most {window['rows']} rows per table every "
            f"{window['seconds']}s for this identity\n"
        )
    for setting, ms in report["guard_clamps"].items():
        w(f"guard:      {setting} stays at this identity's ceiling ({ms} ms)\n")
    w(f"categories: {', '.join(report['categories']) or '-'}\n")
    if report["tables"]:
        w(f"tables:     {', '.join(report['tables'])}\n")
    if report["functions"]:
        w(f"functions:  {', '.join(report['functions'])}\n")
    if report["needs_bind"]:
        w("note:       decided again at Bind with the actual parameter values\n")
    if report["parse_error"]:
        at = report["parse_error_position"]
        w(f"parse error: {report['parse_error']}" + (f" (at character {at})" if at else "") + "\n")
    for st in report["statements"]:
        w(
            f"\nstatement {st['index'] + 1}: {st['command'] or '?'} -> "
            f"{st['action']} (rule {st['rule']})\n"
        )
        for r in st["reasons"]:
            w(f"  {r['category']:<12} {r['code']}: {r['message']}\n")


class SqlSourceError(Exception):
    """The SQL for ``dbgate classify`` could not be read; the message says why."""


#: Longer SQL is refused by ``dbgate classify`` (the proxy's own limit is separate).
MAX_CLASSIFY_BYTES = 64 * 1024 * 1024


def read_sql(argument: str | None, file: Path | None, stdin: TextIO) -> str:
    """The SQL text from exactly one source: the argument, ``-f FILE``, or ``-`` (stdin).

    Reading from a file or standard input lets SQL start with ``--`` (a comment) and
    be longer than a command line may be.
    """
    if file is not None and argument is not None:
        raise SqlSourceError("give the SQL either as an argument or with -f FILE, not both")
    if file is not None:
        try:
            with file.open(encoding="utf-8") as f:
                text = f.read(MAX_CLASSIFY_BYTES + 1)
        except OSError as e:
            raise SqlSourceError(f"cannot read {file}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise SqlSourceError(f"{file} is not UTF-8 text") from e
    elif argument == "-":
        if stdin.isatty():
            raise SqlSourceError("'-' reads SQL from standard input, but it is a terminal")
        try:
            text = stdin.read(MAX_CLASSIFY_BYTES + 1)
        except UnicodeDecodeError as e:
            raise SqlSourceError("standard input is not UTF-8 text") from e
    elif argument is not None:
        text = argument
    else:
        raise SqlSourceError("give the SQL as an argument, with -f FILE, or - for standard input")
    if len(text) > MAX_CLASSIFY_BYTES:
        raise SqlSourceError(f"the SQL is longer than {MAX_CLASSIFY_BYTES} characters")
    return text


def classify_command(
    sql: str,
    rules_dir: Path | None,
    as_json: bool,
    *,
    identity: Identity = CLI_IDENTITY,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``dbgate classify``: classify ``sql``, decide with the rules, print the report."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ruleset = load_rules(rules_dir)
    except RulesError as e:
        for p in e.problems:
            err.write(f"{p}\n")
        err.write("dbgate: cannot load rules; fix the problems above (dbgate rules check)\n")
        return 2
    try:
        classification = _classify(sql)
    except Exception as e:  # the classifier must not raise; if it does, report deny
        report = _internal_error_report(identity, e)
    else:
        report = classification_report(ruleset, identity, classification)
    if as_json:
        out.write(json.dumps(report, indent=2, sort_keys=False) + "\n")
    else:
        _print_text(report, out)
    return 0


def rules_check_command(
    directory: Path | None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """``dbgate rules check``: 0 and a one-line summary, or 1 and every ``file:line``.

    Warnings (rules that can never match) are printed as ``file:line: warning: ...``
    before the summary but do not fail the check: the pack still works as written.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ruleset = load_rules(directory)
    except RulesError as e:
        for p in e.problems:
            out.write(f"{p}\n")
        n = len(e.problems)
        err.write(f"{n} problem{'s' if n != 1 else ''} found\n")
        return 1
    for w in ruleset.warnings:
        out.write(f"{w}\n")
    n_files = len(ruleset.files)
    n_rules = len(ruleset.rules)
    n_warn = len(ruleset.warnings)
    warned = f" ({n_warn} warning{'s' if n_warn != 1 else ''})" if n_warn else ""
    out.write(
        f"ok: {n_rules} rule{'s' if n_rules != 1 else ''} "
        f"in {n_files} file{'s' if n_files != 1 else ''}{warned}\n"
    )
    return 0
