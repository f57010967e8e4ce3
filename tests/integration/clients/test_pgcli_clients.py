"""pgcli's own start-up work through the enforcing dbgate and directly.

pgcli fills its completer in a background thread on start-up: search_path,
schemata, tables, columns, foreign keys, views, data types, databases, the casing
file's word list and functions (``pgcli.completion_refresher``). This drives that
refresher — pgcli's code, on pgcli's ``PGExecute`` (psycopg 3 underneath) — on the
calling thread, plus a few commands a user types first, and compares everything the
completer learned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgcli.completion_refresher import CompletionRefresher
from pgcli.pgexecute import PGExecute
from pgspecial.main import PGSpecial


def completer_state(completer: Any) -> dict[str, Any]:
    """What the completer learned, in comparable form (its metadata holds namedtuples)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return sorted((plain(v) for v in value), key=repr)
        return repr(value) if hasattr(value, "_fields") else value

    return {
        "search_path": completer.search_path,
        "databases": sorted(completer.databases),
        "casing": completer.casing,
        "metadata": plain(completer.dbmetadata),
        "completions": sorted(completer.all_completions),
    }


def pgcli_start_up(dsn: str, casing_file: Path) -> dict[str, Any]:
    executor = PGExecute(dsn=dsn)
    try:
        learned: list[Any] = []
        CompletionRefresher()._bg_refresh(  # the body of pgcli's refresh thread
            executor,
            PGSpecial(),
            learned.append,
            settings={
                "single_connection": True,
                "casing_file": str(casing_file),
                "generate_casing_file": True,
            },
        )
        special = PGSpecial()
        typed = [
            list(executor.run(command, pgspecial=special))
            for command in (r"\dt", r"\d orders", "select count(*) from payments")
        ]
        return {
            "completer": completer_state(learned[0]),
            "typed": [
                [
                    (title, list(rows or []), headers, status)
                    for title, rows, headers, status, *_ in r
                ]
                for r in typed
            ],
            "superuser": executor.superuser,
        }
    finally:
        executor.conn.close()


def test_pgcli_start_up_completion_queries(sides: dict[str, str], tmp_path: Path) -> None:
    got = {side: pgcli_start_up(dsn, tmp_path / f"casing-{side}") for side, dsn in sides.items()}
    assert got["gate"] == got["direct"]
    learned = got["gate"]["completer"]
    assert learned["search_path"][-1] == "public"
    assert {"customers", "orders", "payments"} <= set(learned["metadata"]["tables"]["public"])
    assert "ssn" in learned["completions"] and "card_number" in learned["completions"]
    assert (tmp_path / "casing-gate").is_file()  # the casing query ran (no user functions)
    dt, d_orders, count = got["gate"]["typed"]
    assert {row[1] for row in dt[0][1]} == {"customers", "orders", "payments"}
    assert [row[0] for row in d_orders[0][1]][:2] == ["id", "customer_id"]
    assert count[0][1][0][0] > 0
    assert got["gate"]["superuser"] is False
