"""Statement texts (``pg_stat_activity.query``, ``pg_prepared_statements.statement``,
``current_query()`` …) hold the values of the tokens resolved into them: a statement
that asks a question of one (a WHERE, an ORDER BY, a function's argument …) is held;
one that returns them as plain columns of its select list, or reads the other columns
of those views, is not."""

from __future__ import annotations

import pytest

from dbgate.pii.lineage import analyze
from tests.unit.pii.test_lineage_hunt import COV

HELD = [
    """select 1 from U&"pg_prepared_statement\\0073" where statement like '4%'""",
    "select current_query() order by current_query",
    "select 1 from pg_prepared_statements join (values ('x')) v(statement) using (statement)",
    "select 1 from pg_prepared_statements natural join (values ('x')) v(statement)",
    "select pid, query, count(*) from pg_stat_activity group by rollup (1, 2)",
    "select pid, query, count(*) from pg_stat_activity group by grouping sets ((2))",
    "execute ps(pg_stat_get_backend_activity(7))",
    "copy (select 1 from pg_stat_activity where query like '4%') to stdout",
    "declare c cursor for select 1 from pg_cursors where statement > '4'",
    "select to_json(a) from pg_stat_activity a",
    "select (a).query from pg_stat_activity a",
    "select 1 from pg_prepared_statements where ascii(substr(statement, strpos(statement, '$dbgate$') + 8, 1)) & 1 <> 0",
    "select 1 from generate_series(1, 100) n where ascii(substr(pg_stat_get_backend_activity(n), 3, 1)) & 1 <> 0",
    "select 1 from generate_series(1, 100) n, pg_stat_get_backend_activity(n) t where t like '%x%'",
    "select pid from pg_stat_activity order by query",
    "select pid, query from pg_stat_activity order by 2",
    "select distinct query from pg_stat_activity",
    "select count(query) from pg_stat_activity",
    "select q from (select query as q from pg_stat_activity) s",
    "select 1 from pg_prepared_statements p where p::text like '%1%'",
    "select row_to_json(p.*) from pg_prepared_statements p",
    "select 1 from pg_prepared_statements p(a, b) where b like '1%'",
    "select query from pg_stat_activity union select 'x'",
    "select 1 from pg_stat_activity a join pg_cursors c on c.statement > a.state",
    "select 1 where exists (select 1 from pg_stat_activity where query like '%4%')",
    "select pid from pg_stat_activity limit length(current_query())",
    "select 1 from pg_stat_get_activity(null) a where a.query like '4%'",
    "select case when query like '4%' then 1 end from pg_stat_activity",
]

ALLOWED = [
    "select a.pid, b.pid from pg_stat_activity a join pg_stat_activity b using (usesysid)",
    "select pid, state, count(*) from pg_stat_activity group by rollup (1, 2)",
    "select name ~ '^_pg3_', statement from pg_prepared_statements",
    "table pg_stat_activity",
    "select pid, state, query from pg_stat_activity",
    "select pid, state, query from pg_stat_activity where state = 'active'",
    "select count(*) from pg_stat_activity where state = 'active'",
    "select * from pg_stat_activity where datname = current_database() and pid = pg_backend_pid()",
    "select pid, state, wait_event_type, query from pg_stat_activity where datname = current_database() and pid = pg_backend_pid()",
    "select name, statement from pg_prepared_statements order by name",
    "select current_query()",
    "select pg_stat_get_backend_activity(n) from generate_series(1, 10) n",
    "select pid, query as q from pg_stat_activity order by pid",
    "select query from pg_stat_get_activity(null)",
]


@pytest.mark.parametrize("sql", HELD)
def test_a_question_asked_of_a_statement_text_is_held(sql: str) -> None:
    writes = analyze(sql, COV).pii_writes
    assert any("reads statement texts" in w and "predicate or expression" in w for w in writes)


@pytest.mark.parametrize("sql", ALLOWED)
def test_statement_texts_read_as_plain_columns_stay_allowed(sql: str) -> None:
    assert analyze(sql, COV).pii_writes == []


def test_leaving_out_the_own_statement_by_pid_is_not_held() -> None:
    """The usual way to leave out the reading statement is by its text (held, a
    predicate over it); by its pid asks nothing of any text."""
    held = "select pid, query from pg_stat_activity where query not like '%pg_stat_activity%'"
    assert analyze(held, COV).pii_writes
    sql = "select pid, query from pg_stat_activity where pid <> pg_backend_pid()"
    assert analyze(sql, COV).pii_writes == []
