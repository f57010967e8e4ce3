"""Ordinary writes of unmodified clients under the shipped pack's change limit.

The real-client suite (tests/integration/clients/) gives its agent a rule for its
scratch tables, so its bulk writes are not measured. Here nothing is: every write
below is not pinned by a key, so it runs measured under ``allow-bounded-writes``
(100 rows) in whatever message sequence the client sends — pipelines, prepares
without a Sync, COPY through the simple and the extended protocol — and must come
back as it would from PostgreSQL, within the limit, never held.
"""

from __future__ import annotations

import asyncio
import io

import asyncpg
import pg8000.native
import psycopg
import psycopg2
import psycopg2.extras
import sqlalchemy as sa

from tests.integration.drivers_common import split_dsn
from tests.integration.holds.harness import HoldsEnv, admin_execute, admin_query

TABLE = "mc"
WAIT = 30  # seconds: a held write would wait for a human instead


def _table(env: HoldsEnv) -> None:
    admin_execute(
        env.admin_dsn,
        f"DROP TABLE IF EXISTS {TABLE}",
        f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text NOT NULL, n int NOT NULL DEFAULT 0)",
        f"INSERT INTO {TABLE} (id, note) SELECT g, 'n' FROM generate_series(1, 50) g",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO PUBLIC",
    )


def _state(env: HoldsEnv) -> dict[str, tuple[int, int]]:
    """note -> (rows, sum of n)."""
    return {
        r[0]: (int(r[1]), int(r[2]))
        for r in admin_query(
            env.admin_dsn, f"SELECT note, count(*), sum(n) FROM {TABLE} GROUP BY note"
        )
    }


def test_psycopg_pipelined_executemany_and_copy(env: HoldsEnv) -> None:
    _table(env)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            f"UPDATE {TABLE} SET n = n + 1 WHERE note = %s", [("n",), ("none",), ("n",)]
        )
        with conn.cursor() as cur, cur.copy(f"COPY {TABLE} (id, note) FROM STDIN") as cp:
            for i in range(20):
                cp.write_row((100 + i, "copied"))
        with conn.pipeline(), conn.cursor() as cur:
            cur.execute(f"UPDATE {TABLE} SET n = n + 10 WHERE note = %s", ("copied",))
            cur.execute(f"DELETE FROM {TABLE} WHERE note = %s AND id > %s", ("n", 45))
    assert _state(env) == {"n": (45, 90), "copied": (20, 200)}


def test_psycopg2_copy_expert_and_execute_batch(env: HoldsEnv) -> None:
    _table(env)
    conn = psycopg2.connect(env.dsn, connect_timeout=5)
    try:
        cur = conn.cursor()
        cur.copy_expert(f"COPY {TABLE} (id, note) FROM STDIN", io.StringIO("200\tp2\n201\tp2\n"))
        psycopg2.extras.execute_batch(
            cur, f"UPDATE {TABLE} SET n = n + 1 WHERE note = %s", [("p2",), ("n",)]
        )
        conn.commit()
    finally:
        conn.close()
    assert _state(env) == {"n": (50, 50), "p2": (2, 2)}


def test_pg8000_copy_and_an_unkeyed_update(env: HoldsEnv) -> None:
    _table(env)
    conn = pg8000.native.Connection(**split_dsn(env.dsn).kwargs(), timeout=WAIT)  # type: ignore[arg-type]
    try:
        conn.run(f"COPY {TABLE} (id, note) FROM STDIN", stream=io.StringIO("300\tq\n301\tq\n"))
        conn.run(f"UPDATE {TABLE} SET n = n + 3 WHERE note = :v", v="q")
    finally:
        conn.close()
    assert _state(env) == {"n": (50, 0), "q": (2, 6)}


def test_sqlalchemy_executemany_update_and_insert(env: HoldsEnv) -> None:
    _table(env)
    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(env.dsn))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(f"UPDATE {TABLE} SET n = n + 1 WHERE note = :v"), [{"v": "n"}, {"v": "x"}]
            )
            conn.execute(
                sa.text(f"INSERT INTO {TABLE} (id, note) VALUES (:i, :n)"),
                [{"i": 400 + k, "n": "s"} for k in range(5)],
            )
    finally:
        engine.dispose()
    assert _state(env) == {"n": (50, 50), "s": (5, 0)}


async def test_asyncpg_executemany_prepare_and_copies(env: HoldsEnv) -> None:
    _table(env)
    conn = await asyncpg.connect(env.dsn)
    try:
        done = conn.executemany(f"UPDATE {TABLE} SET n = n + 1 WHERE note = $1", [("n",), ("x",)])
        await asyncio.wait_for(done, WAIT)
        by_id = await conn.prepare(f"SELECT n FROM {TABLE} WHERE id = $1")
        # a simple Query right after the prepare (Parse/Describe/Flush, no Sync)
        assert await asyncio.wait_for(conn.execute(f"DELETE FROM {TABLE} WHERE id > 48"), WAIT) == (
            "DELETE 2"
        )
        copied = conn.copy_to_table(
            TABLE, source=io.BytesIO(b"500\tt\n501\tt\n"), columns=["id", "note"]
        )
        assert await asyncio.wait_for(copied, WAIT) == "COPY 2"
        records = conn.copy_records_to_table(
            TABLE, records=[(600 + i, "r") for i in range(10)], columns=["id", "note"]
        )
        assert await asyncio.wait_for(records, WAIT) == "COPY 10"
        assert await by_id.fetchval(7) == 1
    finally:
        await conn.close()
    assert _state(env) == {"n": (48, 48), "t": (2, 0), "r": (10, 0)}
