"""The statement records the gate builds: what they take from the classification,
worked out once per shape and the same as working it out each time."""

from __future__ import annotations

from pglast import parser

from dbgate.audit.writer import AuditWriter
from dbgate.gate.audit import AuditTrail, completed_before
from dbgate.gate.notes import GateNote
from dbgate.policy.classify import classify
from dbgate.proxy.session_info import SessionInfo


def _trail() -> AuditTrail:
    return AuditTrail(AuditWriter("postgresql://unused@127.0.0.1:1/state"))  # never started


def _session() -> SessionInfo:
    return SessionInfo(7, "agent", "demo", "psql", "10.0.0.7:5000")


def _event(trail: AuditTrail, sql: str):
    note = GateNote(classify(sql), "allow", "read")
    return trail.statement(_session(), "completed", "allow", sql, note)


def test_statements_of_one_shape_carry_the_same_fingerprint_and_names() -> None:
    trail = _trail()
    sql = "SELECT o.total, c.email FROM orders o JOIN customers c ON c.id = 42"
    a = _event(trail, sql)
    b = _event(trail, "SELECT o.total, c.email FROM orders o JOIN customers c ON c.id = 7")
    assert a.statement == "SELECT o.total, c.email FROM orders o JOIN customers c ON c.id = $1"
    assert b.statement == a.statement
    assert a.fingerprint == b.fingerprint != ""
    assert a.fingerprint == str(parser.fingerprint(sql))
    assert a.categories == b.categories == tuple(sorted(x.value for x in classify(sql).categories))
    assert "read" in a.categories
    assert a.tables == b.tables == ("customers", "orders")
    assert a.columns == b.columns
    assert a.columns == tuple(sorted(a.columns)) and "customers.email" in a.columns


def test_another_shape_gets_its_own() -> None:
    trail = _trail()
    read = _event(trail, "SELECT * FROM orders WHERE id = 1")
    write = _event(trail, "UPDATE orders SET total = 0 WHERE id = 1")
    assert read.fingerprint != write.fingerprint
    assert write.categories == ("write",) and write.tables == ("orders",)


def test_a_statement_without_a_classification_has_empty_names() -> None:
    event = _trail().statement(_session(), "refused", "refused", "SELECT 1", None)
    assert (event.fingerprint, event.categories, event.tables, event.columns) == ("", (), (), ())


def test_masked_text_is_the_same_with_and_without_the_shape_cache() -> None:
    from dbgate.gate.audit import masked_text

    texts = [
        "SELECT v FROM t WHERE id = 1",
        "SELECT v FROM t WHERE id = 2",
        "SELECT v FROM t WHERE id = $1",
        "SELECT 'it''s', E'a\\\\b' FROM t WHERE x = 1.5 AND y = 'z'",
        "SELECT v FROM t WHERE id = 1",
        "not sql at all 'open",
    ]
    plain: dict[str, str] = {}
    cache: dict[str, str] = {}
    shapes: dict[str, str] = {}
    for sql in texts:
        assert masked_text(sql, cache, shapes) == masked_text(sql, plain)
    assert masked_text(texts[0], cache, shapes) == "SELECT v FROM t WHERE id = $1"
    # a text with literals is not kept as sent (it will hardly come again); its shape is
    assert texts[0] not in cache and "SELECT v FROM t WHERE id = $1" in cache


def test_every_field_of_a_statement_event_comes_from_its_own_source() -> None:
    """The trail builds events positionally and the relay's observer calls it
    positionally (cheaper per statement): each field must still carry what its name
    says."""
    import time

    from dbgate.audit import StatementEvent

    session = SessionInfo(7, "agent", "demo", "psql", "10.0.0.7:5000")
    session.server_params["application_name"] = "app-from-server"
    session.declared.update({"purpose": "find refunds", "model": "m-1"})
    sql = "SELECT email FROM customers WHERE id = 42"
    from dbgate.policy.model import Action, Decision

    trail = _trail()
    # the name the server reports is one the client gave (a SET it sent before)
    trail.application_name(session, "SET application_name = 'app-from-server'")

    note = GateNote(classify(sql), "allow", "read", Decision(Action.ALLOW, "reads"))
    # what the caller passes through, in the order of statement()'s parameters: the
    # relay's observer passes them positionally
    passed = {
        "params": (b"p1", None),
        "approval_id": "req-9",
        "outcome": "SELECT 1",
        "reason": "why not",
        "rows": 3,
        "duration_us": 1234,
        "tokenized": True,
    }
    before = time.time()
    event = trail.statement(session, "completed", "approved", sql, note, *passed.values())
    assert before <= event.at <= time.time()  # type: ignore[operator]
    expected = StatementEvent(
        event="completed",
        statement="SELECT email FROM customers WHERE id = $1",
        decision="approved",
        at=event.at,
        identity="agent",
        session_id=7,
        application_name="app-from-server",
        client_addr="10.0.0.7:5000",
        database="demo",
        purpose="find refunds",
        model="m-1",
        fingerprint=str(parser.fingerprint(sql)),
        categories=event.categories,
        tables=("customers",),
        columns=("customers.email", "customers.id"),
        rule="reads",
        **passed,
    )
    assert event == expected
    assert "read" in event.categories


def test_what_the_trail_remembers_per_text_and_per_note_is_what_it_would_work_out() -> None:
    """Executions of one prepared statement share a text and a note: the trail keeps
    their masked text, whether the text may declare intent, and the note's shape and
    rule. Every execution still gets what its own note and session say."""
    from dbgate.policy.model import Action, Decision

    trail = _trail()
    sql = "/* dbgate: purpose='monthly close' */ SELECT v FROM t WHERE id = $1"
    plain = "SELECT v FROM t WHERE id = $1"
    by_reads = GateNote(classify(plain), "allow", "read", Decision(Action.ALLOW, "reads"))
    by_other = GateNote(classify(plain), "allow", "read", Decision(Action.ALLOW, "other"))
    session = _session()
    for _ in range(3):
        led = trail.statement(session, "completed", "allow", sql, by_reads)
        assert led.purpose == "monthly close" and led.rule == "reads"
        assert led.statement == sql
        bare = trail.statement(session, "completed", "allow", plain, by_other)
        assert bare.purpose == "" and bare.rule == "other"
    session.declared["purpose"] = "set by the session"
    assert trail.statement(session, "completed", "allow", plain, by_reads).purpose == (
        "set by the session"
    )
    assert trail.statement(session, "completed", "allow", plain, None).rule == ""
    assert sql in trail._texts and plain in trail._texts
    literal = "SELECT v FROM t WHERE id = 7"
    assert trail.statement(session, "completed", "allow", literal, None).statement == plain
    assert literal not in trail._texts  # fresh literals: the text will hardly come again


#: Statements whose values the quick literal mask copies or the place-based masker
#: cannot place; none of the secrets may reach the recorded text.
_HIDDEN_VALUES = [
    # numbers the quick mask copies verbatim (too long, a trailing dot, underscores)
    ("SELECT * FROM customers WHERE replace(phone, '-', '')::bigint = 5551234567", "5551234567"),
    ("SELECT * FROM customers WHERE ssn::numeric = 123456789.", "123456789"),
    ("SELECT * FROM customers WHERE phone::bigint = 555_123_4567", "555_123_4567"),
    ("SELECT * FROM payments WHERE card_number::numeric = 4111111111111112", "4111111111111112"),
    ("SELECT 1e10 + 5.551234567e9", "5.551234567e9"),
    # a literal that reaches a PII column through an alias, a JSON key, a whole row or
    # a prepared statement's arguments, in a text the quick mask gives up on ($, E'')
    ("SELECT * FROM (SELECT full_name AS n FROM customers) x WHERE n = E'Zelda Quist'", "Zelda"),
    (
        "SELECT * FROM customers c WHERE to_jsonb(c)->>'full_name' = 'Zelda Quist' AND id = $1",
        "Zelda",
    ),
    ("SELECT * FROM customers c WHERE c::text LIKE $$%Zelda Quist%$$", "Zelda"),
    ("EXECUTE p(E'Zelda Quist', '1 Quist Lane')", "Quist"),
    (
        "PREPARE p AS SELECT * FROM customers WHERE full_name = $1 OR address = 'Quist Lane'",
        "Quist",
    ),
    # PII-shaped values in comments and quoted identifiers the scrubber has no pattern for
    ("SELECT 1 /* NI number AB 12 34 56 C */", "AB 12 34 56 C"),
    ('SELECT 1 AS "GB82 WEST 1234 5698 7654 32"', "GB82 WEST"),
]


def test_no_literal_reaches_the_recorded_text_whatever_its_place_or_shape() -> None:
    from dbgate.gate.audit import masked_text

    trail = _trail()
    for sql, secret in _HIDDEN_VALUES:
        shapes: dict[str, str] = {}
        for masked in (
            masked_text(sql, {}),
            masked_text(sql, {}, shapes),
            masked_text(sql, {}, shapes),  # the shape remembered
            trail.statement(_session(), "completed", "allow", sql, None).statement,
        ):
            assert secret not in masked, (sql, masked)


def test_a_text_too_long_to_scan_says_how_much_of_it_was_not_recorded() -> None:
    """Only the first 64 KiB of a statement are scanned (masking runs on the event
    loop): the record says that the rest was left out and how long the statement
    was, rather than end as if the statement ended there — the part left out may be
    the one that acts (``SELECT 1 <padding>; UPDATE …``)."""
    from dbgate.gate.audit import masked_text

    head = "SELECT 1" + " " * 70_000
    sql = head + "; UPDATE t SET note = 'Ann Lee' WHERE id = 1"
    marker = f"<masked: the statement has {len(sql)} characters; after the first 65536, "
    for masked in (
        masked_text(sql, {}),
        masked_text(sql, {}, {}),
        _trail().statement(_session(), "completed", "allow", sql, None).statement,
    ):
        assert masked.startswith("SELECT $1 ") and "Ann Lee" not in masked
        assert masked.endswith(marker + f"{len(sql) - 65536} were not scanned>"), masked[-200:]
    # cut inside a literal: masked from there on, and the rest said too
    sql = "SELECT '" + "x" * 70_000 + "'"
    assert masked_text(sql, {}).startswith(
        "SELECT <masked: the rest could not be scanned><masked: the statement has"
    )


def test_a_mask_the_scanner_disagrees_with_is_not_remembered_as_a_shape() -> None:
    from dbgate.gate.audit import masked_text

    shapes: dict[str, str] = {}
    assert masked_text("SELECT 5551234567", {}, shapes) == "SELECT $1"
    assert masked_text("SELECT 5551234568", {}, shapes) == "SELECT $1"
    # a number the grammar folds a sign into, and a string: the quick mask is kept
    assert masked_text("SELECT * FROM t WHERE a > -5 AND b = 'x'", {}, shapes) == (
        "SELECT * FROM t WHERE a > $1 AND b = $2"
    )


def test_decoded_bind_values_are_handed_on_to_be_hashed() -> None:
    """The writer keeps a str parameter as text (scrubbed by look only): what the gate
    decoded must reach it as bytes, hashed like the allowed path's raw values."""
    from dbgate.audit.canonical import INDEX
    from dbgate.audit.rows import RowBuilder
    from dbgate.gate.audit import raw_params
    from dbgate.policy.model import Action, Decision
    from tests.integration.approvals_helpers import make_request

    request = make_request("DELETE FROM customers WHERE note = $1", ("Zelda Quist", None))
    event = _trail().held(_session(), request, Decision(Action.HOLD, "h"), "decided", "hold")
    assert event.params == (b"Zelda Quist", None)
    values = RowBuilder("r", b"k" * 16).build(event, 0)
    stored = values[INDEX["params"]]
    assert stored[0].startswith("h:") and stored[1] is None
    allowed = RowBuilder("r", b"k" * 16).build(
        _trail().statement(_session(), "completed", "allow", "SELECT 1", None, (b"Zelda Quist",)),
        0,
    )
    assert allowed[INDEX["params"]][0] == stored[0]  # equal values match across paths
    assert raw_params(("é", b"\x00", None)) == ("é".encode(), b"\x00", None)


def test_names_the_agent_quoted_are_masked_by_look() -> None:
    """The writer never scrubs table and column names; a quoted one holds anything."""
    sql = 'SELECT "ann.lee@example.com"."078-05-1120" FROM "ann.lee@example.com"'
    event = _event(_trail(), sql)
    assert event.tables == ("<email>",)
    assert all("ann.lee" not in c and "078-05-1120" not in c for c in event.columns)
    assert "ann.lee" not in event.statement


def test_a_held_statements_declared_intent_is_masked_as_an_allowed_ones() -> None:
    """Masking by look (an ITIN's 9xx area, which the writer's scrubber leaves) applies
    to a held statement's purpose as to an allowed statement's."""
    from dataclasses import replace

    from dbgate.policy.model import Action, Decision
    from tests.integration.approvals_helpers import make_request

    request = make_request("DELETE FROM orders", purpose="check ITIN 912-70-1234")
    request = replace(request, requester=replace(request.requester, model="GB33LJSR17410409016103"))
    event = _trail().held(_session(), request, Decision(Action.HOLD, "h"), "decided", "hold")
    assert "912-70-1234" not in event.purpose and "<ssn>" in event.purpose
    assert event.model == "<iban>"


def test_an_allowed_statement_that_ran_is_recorded_as_statement_builds_it() -> None:
    """The relay's observer builds the event of an allowed statement that ran itself,
    from what it keeps per verdict (the common case, inlined): every field is what
    statement() gives for the same record, whatever the note, approval, plan, stage."""
    from dataclasses import replace

    from dbgate.approvals.model import HoldOutcome
    from dbgate.policy.model import Action, Decision
    from dbgate.proxy.seams import Allow, StatementRecord

    class Tokenizes:
        tokenizes = False

    trail = _trail()
    heard: list = []
    trail.writer.record = heard.append  # type: ignore[method-assign]
    session = _session()
    session.server_params["application_name"] = "from-server"
    trail.application_name(
        session, "SELECT set_config('application_name', $1, false)", (b"from-server",)
    )
    sql = "/* dbgate: model='m-2' */ UPDATE t SET v = v + $1 WHERE id = $2"
    note = GateNote(classify(sql), "allow", "write", Decision(Action.ALLOW, "writes"))
    approved = replace(note, approval=HoldOutcome("approved", request_id="req-3"))  # type: ignore[arg-type]
    verdicts = [
        Allow(),
        Allow(note=note),
        Allow(note=approved),
        Allow(note=note, plan=Tokenizes()),  # type: ignore[arg-type]
        Allow(note="not a gate note"),
    ]
    for verdict in verdicts * 2:  # worked out, then remembered
        for stage, code in (("completed", ""), ("failed", "42P01")):
            record = StatementRecord(1, "execute", sql, 10.0, params=(b"1", None))
            record.verdict = verdict
            record.tags, record.rows, record.finished_at = ["UPDATE 1", "UPDATE 2"], 3, 10.5
            record.sqlstate = code
            (trail.statement_completed if stage == "completed" else trail.statement_failed)(
                session, record
            )
            got = heard.pop()
            gate_note = verdict.note if isinstance(verdict.note, GateNote) else None
            approval = gate_note.approval if gate_note is not None else None
            want = trail.statement(
                session,
                stage,
                "approved" if approval is not None else "allow",
                sql,
                gate_note,
                (b"1", None),
                approval.request_id if approval is not None else "",
                "UPDATE 1, UPDATE 2" if stage == "completed" else code,
                # a failed string says what the server completed before the error
                "" if stage == "completed" else completed_before(["UPDATE 1", "UPDATE 2"])[0],
                3,
                500_000,
                verdict.plan is not None and getattr(verdict.plan, "tokenizes", True),
            )
            assert replace(got, at=0.0) == replace(want, at=0.0)
            assert got.model == "m-2" and got.application_name == "from-server"
    bind = StatementRecord(2, "bind", sql, 10.0)
    bind.verdict, bind.finished_at = Allow(note=note), 11.0
    trail.statement_completed(session, bind)
    assert not heard  # a Parse or Bind: its Execute is recorded


def test_a_record_copied_from_the_last_of_its_shape_is_what_statement_builds() -> None:
    """An allowed statement's record is copied from the last its note gave in the
    session (its varying fields replaced): the same as statement() gives, also once the
    application name is SET, the session declares its intent, or another session runs
    the same statement."""
    from dataclasses import fields, replace

    from dbgate.audit.events import StatementEvent, statement_like, statement_like_plain
    from dbgate.policy.model import Action, Decision
    from dbgate.proxy.seams import Allow, StatementRecord

    trail = _trail()
    heard: list = []
    trail.writer.record = heard.append  # type: ignore[method-assign]
    sql = "SELECT v FROM t WHERE id = $1"
    note = GateNote(classify(sql), "allow", "read", Decision(Action.ALLOW, "reads"))
    other = GateNote(classify(sql), "allow", "read", Decision(Action.ALLOW, "other"))
    first, second = _session(), SessionInfo(8, "robot", "demo", "cron", "10.0.0.8:6000")

    def run(
        session: SessionInfo, verdict: Allow, stage: str = "completed", text: str = sql
    ) -> None:
        record = StatementRecord(1, "execute", text, 10.0, params=(b"7",))
        record.verdict = verdict
        # a failed Execute has no command tag (a failed string's tags: the test above)
        record.tags, record.rows = (["SELECT 1"], 1) if stage == "completed" else ([], 0)
        record.finished_at = 10.25
        record.sqlstate = "" if stage == "completed" else "57014"
        (trail.statement_completed if stage == "completed" else trail.statement_failed)(
            session, record
        )
        got = heard.pop()
        want = trail.statement(
            session,
            stage,
            "allow",
            sql,
            verdict.note,  # type: ignore[arg-type]
            (b"7",),
            "",
            "SELECT 1" if stage == "completed" else "57014",
            "",
            1 if stage == "completed" else None,
            250_000,
            False,
        )
        assert type(got) is StatementEvent
        assert replace(got, at=0.0) == replace(want, at=0.0)

    for _ in range(2):
        run(first, Allow(note=note))
        run(first, Allow(note=note), "failed")
        run(first, Allow(note=note), text="".join(["SELECT v FROM t ", "WHERE id = $1"]))
        run(second, Allow(note=note))
        run(first, Allow(note=other))
    first.server_params["application_name"] = "renamed"
    run(first, Allow(note=note))
    first.declared["purpose"] = "month end"
    run(first, Allow(note=note))
    del first.declared["purpose"]
    run(first, Allow(note=note))
    trail.session_ended(first)
    heard.clear()
    run(first, Allow(note=note))
    # the compiled copy (built by make install) is the dataclass's own
    assert statement_like is not statement_like_plain
    proto = StatementEvent("completed", "SELECT 1", identity="a", tables=("t",))
    args = ("failed", 1.5, (b"1", None), "57014", None, 9, True)
    assert statement_like(proto, *args) == statement_like_plain(proto, *args)
    copied = statement_like(proto, *args)
    assert [getattr(copied, f.name) for f in fields(StatementEvent)][4:] == [
        getattr(statement_like_plain(proto, *args), f.name) for f in fields(StatementEvent)
    ][4:]
    assert proto.event == "completed" and proto.params == ()  # the original unchanged


def test_the_compiled_copy_follows_a_changed_class_and_the_trail_survives_it_failing() -> None:
    """A class attribute set on StatementEvent after start (its version changes): the
    compiled copy learns its fields again. Should it ever refuse, the trail copies the
    event field by field: a record is never lost to it."""
    from dataclasses import replace

    from dbgate.audit import events
    from dbgate.audit.events import StatementEvent, statement_like, statement_like_plain
    from dbgate.policy.model import Action, Decision
    from dbgate.proxy.seams import Allow, StatementRecord

    proto = StatementEvent("completed", "SELECT 1", identity="a")
    args = ("failed", 1.5, (b"1",), "57014", None, 9, False)
    StatementEvent.marker_for_a_test = 1  # type: ignore[attr-defined]
    try:
        assert statement_like(proto, *args) == statement_like_plain(proto, *args)
    finally:
        del StatementEvent.marker_for_a_test  # type: ignore[attr-defined]
    assert statement_like(proto, *args) == statement_like_plain(proto, *args)

    trail = _trail()
    heard: list = []
    trail.writer.record = heard.append  # type: ignore[method-assign]
    sql = "SELECT v FROM t WHERE id = $1"
    note = GateNote(classify(sql), "allow", "read", Decision(Action.ALLOW, "reads"))

    def refusing(*_: object) -> None:
        raise TypeError("no")

    import dbgate.gate.audit as gate_audit

    saved = gate_audit.statement_like
    gate_audit.statement_like = refusing  # type: ignore[assignment]
    try:
        for _ in range(2):
            record = StatementRecord(1, "execute", sql, 10.0, params=(b"7",))
            record.verdict = Allow(note=note)
            record.tags, record.rows, record.finished_at = ["SELECT 1"], 1, 10.25
            trail.statement_completed(_session(), record)
    finally:
        gate_audit.statement_like = saved  # type: ignore[assignment]
    want = trail.statement(
        _session(), "completed", "allow", sql, note, (b"7",), "", "SELECT 1", "", 1, 250_000, False
    )
    assert len(heard) == 2
    assert all(replace(e, at=0.0) == replace(want, at=0.0) for e in heard)
    assert events.statement_like is statement_like


def test_an_application_name_the_server_filled_from_the_data_is_not_recorded() -> None:
    """The server reports application_name whatever filled it: after an approved
    ``set_config('application_name', full_name, false)`` it holds a customer's name,
    which masking by look cannot find. Records carry a name the session started with
    or one the client itself gave; anything else as a marker."""
    from dbgate.gate.audit import SERVER_SET_APPLICATION_NAME, client_gave

    trail = _trail()
    session = _session()
    assert trail.application_name(session, "SELECT 1") == "psql"
    session.server_params["application_name"] = "Quirinus Vellacott"
    sql = "SELECT set_config('application_name', full_name, false) FROM customers WHERE id = 1"
    assert trail.application_name(session, sql) == SERVER_SET_APPLICATION_NAME
    note = GateNote(classify("SELECT 1"), "allow", "read")
    event = trail.statement(session, "completed", "allow", "SELECT 1", note)
    assert event.application_name == SERVER_SET_APPLICATION_NAME
    session.server_params["application_name"] = "psql"  # RESET application_name
    assert trail.application_name(session, "RESET application_name") == "psql"
    # the client's own names, as the server reports them
    session.server_params["application_name"] = "nightly-report"
    assert trail.application_name(session, "SET application_name = 'nightly-report'") == (
        "nightly-report"
    )
    assert client_gave("o'brien", [("SET application_name = 'o''brien'", ())])
    assert client_gave("myapp", [("SET application_name = MyApp", ())])
    assert client_gave(
        "job-7", [("SELECT set_config($1, $2, false)", (b"application_name", b"job-7"))]
    )
    assert client_gave("J??rg", [("SET application_name = 'J\u00f6rg'", ())])
    assert client_gave("J\\xc3\\xb6rg", [("SET application_name = 'J\u00f6rg'", ())])
    assert client_gave("x" * 63, [("SET application_name = '" + "x" * 80 + "'", ())])
    assert not client_gave("Quirinus Vellacott", [("SELECT set_config('a', full_name, false)", ())])
    assert not client_gave("1961-07-23", [("SELECT 1", (b"1961",))])


def test_a_name_the_client_gave_long_ago_is_still_its_own() -> None:
    """SET application_name in a transaction rolled back: the server reports the name
    before it again, which the client gave many statements earlier."""
    trail = _trail()
    session = _session()
    session.server_params["application_name"] = "etl-a"
    assert trail.application_name(session, "SET application_name = 'etl-a'") == "etl-a"
    for i in range(40):
        trail.application_name(session, f"SELECT {i}")
    session.server_params["application_name"] = "etl-b"
    assert trail.application_name(session, "SET application_name = 'etl-b'") == "etl-b"
    session.server_params["application_name"] = "etl-a"  # ROLLBACK
    assert trail.application_name(session, "ROLLBACK") == "etl-a"


def test_a_refusal_the_relay_records_carries_its_reason() -> None:
    """A refusal the gate did not record itself (the relay's own: a statement kept back
    behind a held one when the client left, a portal not resumed during an outage) is
    recorded with the message the client got, as ``reason``."""
    from dbgate.proxy.seams import Refuse, StatementRecord

    trail = _trail()
    heard: list = []
    trail.writer.record = heard.append  # type: ignore[method-assign]
    record = StatementRecord(1, "execute", "SELECT 1", 10.0)
    record.verdict = Refuse("08006", "dbgate: the client left before this statement ran")
    record.finished_at, record.sqlstate = 10.5, "08006"
    trail.statement_failed(_session(), record)
    (event,) = heard
    assert (event.event, event.decision, event.outcome) == ("refused", "refused", "08006")
    assert event.reason == "dbgate: the client left before this statement ran"
