"""The demo dataset in its own database, loaded once per test session, with the extra
objects the PII tests need (views, a user function, a free-text table)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from dbgate.pii.room import PiiRoom
from tests.integration.clients.conftest import (  # noqa: F401 - fixtures
    admin_dsn,
    demo_db,
    demo_role,
    start_pii_proxy,
)
from tests.integration.conftest import RunningProxy
from tests.integration.pii.harness import birth_dates, load_demo, make_room, raw_pii_values

DBNAME = "pii_demo"

EXTRAS = """
CREATE VIEW v_contacts AS SELECT id, lower(email) AS email_lc, full_name AS who, created_at FROM customers;
CREATE VIEW v_order_contacts AS
    SELECT o.id, o.status, c.email FROM orders o JOIN customers c ON c.id = o.customer_id;
CREATE VIEW v_nested AS SELECT who, id FROM v_contacts;
CREATE FUNCTION get_email(cid bigint) RETURNS text LANGUAGE plpgsql AS
    $$ BEGIN RETURN (SELECT email FROM customers WHERE id = cid); END $$;
CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes SELECT id, 'call ' || phone || ' or mail ' || email FROM customers WHERE id <= 5;
CREATE TABLE tags (id int PRIMARY KEY, label text);
INSERT INTO tags VALUES (1, 'vip'), (2, 'churn-risk');
"""


@dataclass
class Demo:
    dsn: str
    room: PiiRoom
    values: set[bytes]  # every raw PII value except birth dates
    dates: set[bytes]
    #: The same room in hashed mode (the default): its string columns take the
    #: compiled loop's own BLAKE2b path, where reversible tokens call back to Python.
    hashed: PiiRoom


@pytest.fixture(scope="session")
async def pii_demo(pg_server: Any) -> AsyncIterator[Demo]:
    dsn = await load_demo(pg_server.dsn("postgres"), DBNAME)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(EXTRAS)
    finally:
        await conn.close()
    room = make_room()
    await room.refresh_dsn(dsn)
    hashed = make_room(mode="hashed")
    await hashed.refresh_dsn(dsn)
    yield Demo(dsn, room, await raw_pii_values(dsn), await birth_dates(dsn), hashed)


@pytest.fixture(scope="module")
def hunt_proxy(pg_server: Any, demo_role: Any) -> Iterator[RunningProxy]:  # noqa: F811
    """The real gate with PII tokenization over the shipped demo dataset, one per
    test module, so that what one module's statements leave behind (settings, held
    cursors, the running room's marks) does not reach another's."""
    running = start_pii_proxy(pg_server, demo_role)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def dsn(hunt_proxy: RunningProxy, demo_db: str) -> str:  # noqa: F811
    """Where an agent connects: the demo database through :func:`hunt_proxy`."""
    return hunt_proxy.dsn(demo_db)
