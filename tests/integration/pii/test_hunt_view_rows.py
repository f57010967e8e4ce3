"""Where a security tester counted a view's rows, which its definition chose by PII,
on the real server (demo dataset): ``SELECT count(*) FROM v`` over ``SELECT g FROM
generate_series(1, 300) g, customers c WHERE c.id = 1 AND g < ascii(c.email)`` returned
the code of customer 1's first character, and ``sum`` over a view of customers kept by
a bit of their e-mail added them up. Unit-level: tests/unit/pii/test_lineage_view_rows.py.
"""

from __future__ import annotations

from typing import Any

from tests.integration.pii.conftest import Demo
from tests.integration.pii.test_hunt_derived import _schema
from tests.integration.pii.test_hunt_shapes import _agent


async def test_a_count_of_a_view_sized_by_pii_is_tokenized(pg_server: Any, pii_demo: Demo) -> None:
    async with _schema(
        pii_demo,
        "create view hunt_vsized as select g from generate_series(1, 300) g, customers c"
        " where c.id = 1 and g <= ascii(c.email);"
        " create view hunt_vkept as select id from customers"
        " where ascii(substr(email, 1, 1)) & 4 <> 0;"
        " create view hunt_vplain as select id, status from orders where status = 'paid'",
        "drop view if exists hunt_vsized, hunt_vkept, hunt_vplain",
    ) as admin:
        code = await admin.fetchval("select ascii(email) from customers where id = 1")
        kept = await admin.fetchval(
            "select sum(id) from customers where ascii(substr(email, 1, 1)) & 4 <> 0"
        )
        res = await _agent(pg_server, pii_demo, "select count(*) from hunt_vsized")
        assert res.rows_before == [(str(code).encode(),)]  # what the server sent
        assert res.replaced == [{0}]
        res = await _agent(pg_server, pii_demo, "select count(*), sum(id) from hunt_vkept")
        assert res.rows_before[0][1] == str(kept).encode()
        assert res.replaced == [{1}]  # one question counted stays a number
        # a view filtered on clean columns is read as before
        res = await _agent(pg_server, pii_demo, "select count(*), sum(id) from hunt_vplain")
        assert res.replaced == [set()]
