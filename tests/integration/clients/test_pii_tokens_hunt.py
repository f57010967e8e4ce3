"""The token machinery through the real gate (policy, PII, relay) and real drivers:
tokens sent back, what else the gate does to a text that holds one, who sees raw
values. Each check compares with what the server itself holds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.clients.conftest import DemoRole, enforcing_session_setup, pii_config
from tests.integration.conftest import RunningProxy


@pytest.fixture(scope="module")
def guarded(pg_server: Any, demo_role: DemoRole) -> Iterator[RunningProxy]:
    """The shipped rules (session guards too) with tokenization on, as dbgate serve."""
    from dbgate.app import build_gate
    from dbgate.gate.pii import PiiGate

    config = pii_config(pg_server, demo_role)
    pii = PiiGate(config)
    pii.check()
    inspector = build_gate(config, None, pii)
    running = RunningProxy(
        config,
        inspector=inspector,
        observer=pii.held_cursors,
        message_filter=pii.filter,
        session_setup=enforcing_session_setup(inspector),
    ).start()
    yield running
    running.stop()


def test_a_token_does_not_undo_a_guard_clamp(guarded: RunningProxy, demo_db: str) -> None:
    """``SET statement_timeout = 0`` is forwarded as the ceiling; a token elsewhere in
    the same Query had its tokens resolved in the text as the client sent it, and the
    server got the 0: no statement timeout for the rest of the session (and so no bound
    on ``pg_sleep`` timing or on locks held)."""
    with psycopg.connect(guarded.dsn(demo_db), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)  # a simple Query, as psql sends it
        token = cur.execute("select email from customers where id = 42").fetchone()[0]
        assert token.startswith("tok_email_")
        ceiling = cur.execute("show statement_timeout").fetchone()[0]
        assert ceiling != "0"
        cur.execute(f"set statement_timeout = 0; select id from customers where email = '{token}'")
        assert cur.nextset() and cur.fetchall() == [(42,)]  # the token still resolves
        assert cur.execute("show statement_timeout").fetchone()[0] == ceiling
        cur.execute(
            f"select id from customers where email = '{token}'; set lock_timeout = 0;"
            " set local idle_in_transaction_session_timeout = 0"
        )
        assert cur.execute("show lock_timeout").fetchone()[0] != "0"


def test_a_derived_address_does_not_keep_its_family(
    guarded: RunningProxy, demo_db: str, admin_dsn: str
) -> None:
    """A value derived from PII gets a fresh pseudonym of its type, but an address's
    family (IPv4 or IPv6) was the value's: a ``CASE`` choosing ``'::1'`` or
    ``'1.2.3.4'`` by a bit of the e-mail spelled one bit per column, eight columns a
    character, a whole address in one row (text and binary results alike)."""
    with psycopg.connect(admin_dsn) as admin:
        email = admin.execute("select email from customers where id = 42").fetchone()[0]
    code = ord(email[0])
    cols = ", ".join(
        f"case when ascii(substr(email, 1, 1)) & {1 << b} <> 0"
        f" then '::1'::{t} else '1.2.3.4'::{t} end"
        for t in ("inet", "cidr")
        for b in range(8)
    )
    with psycopg.connect(guarded.dsn(demo_db), autocommit=True) as conn:
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            row = cur.execute(
                f"select {cols}, array[{cols}] from customers where id = 42"
            ).fetchone()
            got = [str(v) for v in row[:16]] + [str(v) for v in row[16]]
            assert all(v.startswith("10.") for v in got), (binary, got)
            assert len(set(got)) == len(got)  # fresh: no two alike
            assert sum(1 << i for i, v in enumerate(got[:8]) if ":" in v) != code or code == 0
        # a stored address keeps its family (docs/pii.md): an ordinary read is unchanged
        got = conn.execute("select '::1'::inet, '1.2.3.4'::inet").fetchone()
        assert [str(v) for v in got] == ["::1", "1.2.3.4"]


@pytest.fixture(scope="module")
def places(admin_dsn: str) -> Iterator[list[tuple[int, float]]]:
    """A PII float column (``latitude``: geo by its name), sixty distinct values."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute("create table hunt_places (id int primary key, latitude float8)")
        admin.execute(
            "insert into hunt_places select g, (g * 7.3) % 180 - 90 from generate_series(1, 60) g"
        )
        admin.execute("grant select on hunt_places to public")
        yield admin.execute("select id, latitude from hunt_places order by id limit 100").fetchall()
        admin.execute("drop table hunt_places")


def test_a_rounded_float_does_not_keep_a_stored_pseudonym(
    guarded: RunningProxy, demo_db: str, places: list[tuple[int, float]]
) -> None:
    """A stored value's pseudonym is computed from the text the server sent, and
    ``SET extra_float_digits = -15`` (an ordinary setting) prints a latitude with one
    significant digit: every latitude from -85 to -75 got one pseudonym, so one read
    grouped all rows by their rounded value (sixty values, nineteen groups)."""
    raw = {v for _, v in places}
    with psycopg.connect(guarded.dsn(demo_db), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        for digits in (1, -15):
            cur.execute(f"set extra_float_digits = {digits}")
            got = cur.execute(
                "select id, latitude from hunt_places order by id limit 100"
            ).fetchall()
            assert [r[0] for r in got] == [i for i, _ in places]  # clean: as stored
            assert len({r[1] for r in got}) == len(got)  # no two alike
            assert not raw & {r[1] for r in got}
        # binary: the value's own eight bytes, whatever the setting: still deterministic
        binary = conn.cursor(binary=True)
        first = binary.execute("select latitude from hunt_places order by id limit 100").fetchall()
        again = binary.execute("select latitude from hunt_places order by id limit 100").fetchall()
        assert first == again and not raw & {r[0] for r in first}
