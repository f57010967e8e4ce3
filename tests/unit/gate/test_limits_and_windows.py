"""The gate's pure parts of run-time limits: which writes can be measured, what a
measured write past its limit gets, and which account a windowed read is charged to."""

from __future__ import annotations

import pytest

from dbgate.gate.limits import measurable, over_changes_decision
from dbgate.gate.notes import GateNote
from dbgate.gate.row_window import RowWindows
from dbgate.gate.windows import (
    WindowCharges,
    WindowedBinds,
    account_tables,
    charged_by_binds,
    windowed,
)
from dbgate.policy.classify import classify
from dbgate.policy.keys import KeyCatalog, Relation
from dbgate.policy.model import Action, Decision, OverLimit, RowWindow
from dbgate.proxy.seams import Allow
from dbgate.proxy.session_info import SessionInfo


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE t SET a = 1 WHERE b > 3", True),
        ("DELETE FROM t WHERE b > 3; SELECT count(*) FROM t", True),
        ("INSERT INTO t SELECT * FROM u WHERE b > 3", True),
        ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a", True),
        # transaction control would end dbgate's own block
        ("BEGIN; UPDATE t SET a = 1 WHERE b > 3; COMMIT", False),
        ("UPDATE t SET a = 1 WHERE b > 3; SAVEPOINT s", False),
        # the command tag does not count DML in WITH or under EXPLAIN ANALYZE
        ("WITH d AS (DELETE FROM t WHERE b > 3 RETURNING 1) SELECT count(*) FROM d", False),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1 WHERE b > 3", False),
        # a command a transaction block changes
        ("UPDATE t SET a = 1 WHERE b > 3; VACUUM t", False),
    ],
)
def test_which_writes_can_be_measured(sql: str, expected: bool) -> None:
    assert measurable(classify(sql)) is expected


def _decision(over: OverLimit | None) -> Decision:
    c = classify("UPDATE payments SET amount = 0 WHERE amount > 10")
    return Decision(
        Action.ALLOW,
        "bounded-writes",
        "ok",
        classification=c,
        max_rows_changed=100,
        changes_over_limit=over,
    )


def test_a_write_past_its_limit_is_held_with_the_measured_count() -> None:
    over = OverLimit(Action.HOLD, "bounded-writes", ("dba",), 2, 600)
    held = over_changes_decision(_decision(over), _decision(over).classification, 15048)
    assert held.action is Action.HOLD
    assert held.approver_groups == ("dba",) and held.approvals_needed == 2
    assert held.wait_seconds == 600
    [reason] = held.reasons
    assert reason.code == "changes-over-limit"
    assert "would change 15,048 rows of payments" in reason.message
    assert held.max_rows_changed is None  # approved, it runs unmeasured


def test_a_write_past_its_limit_is_denied_when_the_rule_refuses() -> None:
    denied = over_changes_decision(_decision(None), _decision(None).classification, 101)
    assert denied.action is Action.DENY
    assert "would change 101 rows" in denied.reasons[0].message
    unknown = over_changes_decision(_decision(None), _decision(None).classification, -1)
    assert "could not count" in unknown.reasons[0].message


def test_windowed_reads_are_charged_to_the_table_the_search_path_resolves() -> None:
    relations = {
        "sales.orders": Relation(),
        "public.orders": Relation(),
        "public.items": Relation(),
    }
    sales_first = KeyCatalog(relations, ("sales", "public"), version=1)
    public_only = KeyCatalog(relations, ("public",), version=1)
    tables = frozenset({"orders", "items", "other.x"})
    assert account_tables(tables, sales_first) == ("other.x", "public.items", "sales.orders")
    assert account_tables(tables, public_only) == ("other.x", "public.items", "public.orders")
    # unknown to the catalog (or no catalog): the default resolution
    assert account_tables(frozenset({"new_t"}), sales_first) == ("public.new_t",)
    assert account_tables(frozenset({"orders"}), None) == ("public.orders",)


def test_a_guard_switched_off_where_it_cannot_be_clamped_goes_to_the_guards_approvers() -> None:
    """``set_config('statement_timeout', '0', …)`` cannot be rewritten to the ceiling:
    held by the ``session_guards`` entry (default pack: dba, 1 approval, 1h), not by
    the allow rule that let the statement through."""
    from dbgate.gate.limits import limited_verdict
    from dbgate.gate.notes import GateNote
    from dbgate.policy.model import Identity
    from dbgate.policy.rules import load_rules

    sql = "SELECT set_config('statement_timeout', '0', false)"
    c = classify(sql)
    decision = load_rules().decide(Identity(name="agent"), c)
    assert decision.action is Action.ALLOW and decision.guard_clamps
    held = limited_verdict(decision, c, sql, GateNote(c, "allow", "control", decision))
    assert isinstance(held, Decision) and held.action is Action.HOLD
    assert held.rule == "default-guards"
    assert held.approver_groups == ("dba",) and held.wait_seconds == 3600
    assert [r.code for r in held.reasons] == ["guard-off"]


def test_a_bind_verdict_changed_by_pii_keeps_the_policys_row_limit_and_bound() -> None:
    """Tokens resolved in a Bind's values give a new Allow (new values, no result
    plan): it keeps the policy's limit, its over-limit action and its proven read
    bound, so the relay still counts that read from its command tag."""
    from dbgate.gate.approved_pii import _bind_changed
    from dbgate.proxy.seams import Allow

    over = OverLimit(Action.DENY, "small-window")
    policy = Allow(max_rows=30, over_limit=over, result_bound=1)
    resolved = Allow(replace_params=(b"real@example.com",))
    changed = _bind_changed(policy, resolved)
    assert (changed.max_rows, changed.over_limit, changed.result_bound) == (30, over, 1)
    assert changed.replace_params == (b"real@example.com",)
    assert _bind_changed(policy, None) is policy
    own = Allow(max_rows=5, replace_params=(b"x",))
    assert _bind_changed(policy, own).max_rows == 5  # PII's own limit stands


class _Gate:
    """What a WindowedBinds asks of its gate (BindJudge)."""

    def __init__(self, windows: RowWindows, base: Allow) -> None:
        self.generation = 0
        self.windows = windows
        self.audit = None
        self.keys = None
        self.base = base

    def windowed_bind_base(self, session: SessionInfo, sql: str) -> Allow | None:
        return self.base


def _windowed_binds(rows: int, bound: int) -> tuple[WindowedBinds, RowWindows, SessionInfo]:
    now = [0.0]
    windows = RowWindows(None, "r", monotonic=lambda: now[0], clock=lambda: 1_000_000.0)  # type: ignore[arg-type]
    windows.ledger.read_totals({}, [3600])
    windows._read_ok_at = 0.0
    window = RowWindow(rows=rows, seconds=3600, rule="w", tables=frozenset({"public.t"}))
    base = Allow(result_bound=bound)
    judge = WindowedBinds(_Gate(windows, base), "select v from t where id = $1", base, window)
    session = SessionInfo(
        session_id=1, identity="agent", database="d", application_name="", client_addr=""
    )
    session.policy_state = (session.params_version,)
    return judge, windows, session


def test_a_windowed_bind_keeps_its_verdict_while_its_bound_fits_in_what_is_left() -> None:
    """The quick judge of a prepared read's Binds answers from what it last found left
    while the rows charged since cannot have used the room up: the same verdict, and
    the gate's answer (None) as soon as they may have."""
    judge, windows, session = _windowed_binds(rows=5, bound=2)
    first = judge(session, b"")
    assert first is not None and first.max_rows == 2
    asked: list[int] = []
    remaining = windows.remaining

    def counting(*args: object) -> int:
        asked.append(1)
        return remaining(*args)  # type: ignore[arg-type]

    windows.remaining = counting  # type: ignore[method-assign]
    window = judge.window
    windows.add("agent", window, ("public.t",), 2)  # 3 left: the bound of 2 still fits
    windows.add("someone else", window, ("public.t",), 50)  # another account
    assert judge(session, b"") is first and asked == []
    windows.add("agent", window, ("public.t",), 2)  # 1 left: found out, capped at it
    capped = judge(session, b"")
    assert capped is not None and capped.max_rows == 1 and asked == [1]
    assert judge(session, b"") is not first and asked == [1, 1]  # no credit below the bound
    windows.add("agent", window, ("public.t",), 1)  # nothing left: the gate refuses
    assert judge(session, b"") is None


def test_a_windowed_bind_asks_again_after_a_read_of_the_shared_totals() -> None:
    judge, windows, session = _windowed_binds(rows=5, bound=1)
    first = judge(session, b"")
    assert first is not None
    # another replica's reads arrive with the next read of the totals
    windows.ledger.read_totals({("agent", "public.t", 3600): 5}, [3600])
    assert judge(session, b"") is None


def test_every_session_of_the_identity_spends_the_same_room() -> None:
    """What is left is the identity's, whichever of its sessions reads: rows charged
    through one session count for the quick verdicts of the others; a stale ledger
    answers for nobody."""
    judge, windows, session = _windowed_binds(rows=5, bound=1)
    other = SessionInfo(
        session_id=2, identity="agent", database="d", application_name="", client_addr=""
    )
    other.policy_state = (other.params_version,)
    first = judge(session, b"")
    assert first is not None and judge(other, b"") is first
    windows.add("agent", judge.window, ("public.t",), 4)  # through `other`: 1 left
    assert judge(session, b"") is first  # recounted: the last row still fits
    windows.add("agent", judge.window, ("public.t",), 1)
    assert judge(other, b"") is None and judge(session, b"") is None
    judge2, windows2, session2 = _windowed_binds(rows=5, bound=1)
    assert judge2(session2, b"") is not None
    windows2._read_ok_at = -10_000.0  # the shared totals have not been read for long
    assert judge2(session2, b"") is None


def test_a_windowed_bind_is_charged_to_the_accounts_of_the_sessions_search_path() -> None:
    """The quick verdict of a Bind is kept per key catalog: a session whose search
    path now resolves ``orders`` to another table is answered from that table's room,
    never from what it had left of the one it read before."""
    relations = {"sales.orders": Relation(), "public.orders": Relation()}
    catalogs = {
        "sales, public": KeyCatalog(relations, ("sales", "public"), version=1),
        "public": KeyCatalog(relations, ("public",), version=1),
    }

    class _Keys:
        def for_session(self, session: SessionInfo) -> KeyCatalog:
            return catalogs[session.server_params["search_path"]]

    now = [0.0]
    windows = RowWindows(None, "r", monotonic=lambda: now[0], clock=lambda: 1_000_000.0)  # type: ignore[arg-type]
    windows.ledger.read_totals({}, [3600])
    windows._read_ok_at = 0.0
    window = RowWindow(rows=5, seconds=3600, rule="w", tables=frozenset({"orders"}))
    base = Allow(result_bound=1)
    gate = _Gate(windows, base)
    gate.keys = _Keys()
    judge = WindowedBinds(gate, "select v from orders where id = $1", base, window)
    session = SessionInfo(
        session_id=1,
        identity="agent",
        database="d",
        application_name="",
        client_addr="",
        server_params={"search_path": "sales, public"},
    )
    session.policy_state = (session.params_version,)
    windows.add("agent", window, ("public.orders",), 5)  # public.orders: nothing left
    first = judge(session, b"")
    assert first is not None and first.max_rows == 1  # sales.orders: all of it left
    assert judge(session, b"") is first
    session.server_params["search_path"] = "public"  # SET search_path, seen by the keys
    assert judge(session, b"") is None  # the gate refuses: public.orders is spent
    session.server_params["search_path"] = "sales, public"
    assert judge(session, b"") is first


def _used(windows: RowWindows, window: RowWindow) -> int:
    return windows.ledger.used("agent", "public.t", window.seconds, 1_000_000.0) or 0


def test_a_read_proven_bounded_is_charged_its_bound_as_it_is_let_through() -> None:
    """A verdict capped at its proven bound is charged that bound when it lets a read
    run (not at a Parse, which runs nothing), and the observer then neither follows
    it nor charges it again; one capped at what is left, below its bound, is charged
    by the observer when it ends."""
    now = [0.0]
    windows = RowWindows(None, "r", monotonic=lambda: now[0], clock=lambda: 1_000_000.0)  # type: ignore[arg-type]
    windows.ledger.read_totals({}, [3600])
    windows._read_ok_at = 0.0
    window = RowWindow(rows=5, seconds=3600, rule="w", tables=frozenset({"public.t"}))
    note = GateNote(None, "allow", "read", Decision(Action.ALLOW, "w", row_window=window))
    base = Allow(result_bound=2, note=note)
    charges = WindowCharges(windows)
    session = SessionInfo(
        session_id=1, identity="agent", database="d", application_name="", client_addr=""
    )
    parsed = windowed(base, window, windows, "agent", None)
    assert parsed.max_rows == 2 and _used(windows, window) == 0  # type: ignore[union-attr]
    first = windowed(base, window, windows, "agent", None, runs=True)
    assert type(first) is Allow and first.max_rows == 2 and _used(windows, window) == 2
    assert first.note.window_charge == "ahead"  # type: ignore[union-attr]
    assert not charges.follows(session, first)
    again = windowed(base, window, windows, "agent", None, runs=True)  # the credit's
    assert again is first and _used(windows, window) == 4

    class _Record:
        rows = 2
        verdict = first

    charges.statement_completed(session, _Record())  # type: ignore[arg-type]
    assert _used(windows, window) == 4  # charged ahead: not again
    last = windowed(base, window, windows, "agent", None, runs=True)  # 1 left, bound 2
    assert type(last) is Allow and last.max_rows == 1 and _used(windows, window) == 4
    assert last.note.window_charge == "" and charges.follows(session, last)  # type: ignore[union-attr]
    _Record.verdict = last
    _Record.rows = 1
    charges.statement_completed(session, _Record())  # type: ignore[arg-type]
    assert _used(windows, window) == 5
    assert type(windowed(base, window, windows, "agent", None, runs=True)) is not Allow
    parse = charged_by_binds(first)
    assert parse.note.window_charge == "binds" and not charges.follows(session, parse)  # type: ignore[union-attr]
