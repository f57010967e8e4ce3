"""mask_sql: what approvers see of a statement. Tables of input -> expected output."""

from __future__ import annotations

import pytest
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgate.pii.sql_mask import is_pii_column, mask_sql, mask_text, mask_value

BY_PLACE = [
    # compared with a PII column
    (
        "SELECT * FROM customers WHERE email = 'ann@example.com' AND id = 7",
        "SELECT * FROM customers WHERE email = '<email>' AND id = 7",
    ),
    (
        "SELECT 1 FROM c WHERE 'Ann Lee' = full_name",
        "SELECT 1 FROM c WHERE '<full_name>' = full_name",
    ),
    (
        "SELECT * FROM c WHERE lower(full_name) LIKE 'ann%'",
        "SELECT * FROM c WHERE lower(full_name) LIKE '<full_name>'",
    ),
    (
        "SELECT * FROM c WHERE c.ssn IN ('1', '2') OR phone BETWEEN 'a' AND 'b'",
        "SELECT * FROM c WHERE c.ssn IN ('<ssn>', '<ssn>') OR phone BETWEEN '<phone>' AND '<phone>'",
    ),
    (
        "SELECT * FROM c WHERE birth_date = DATE '1980-02-03'",
        "SELECT * FROM c WHERE birth_date = DATE '<birth_date>'",
    ),
    (
        "SELECT coalesce(address, 'Main Street 1') FROM c",
        "SELECT coalesce(address, '<address>') FROM c",
    ),
    # assigned to a PII column
    (
        "UPDATE customers SET full_name = 'Ann Lee', total = 5 WHERE id = 7",
        "UPDATE customers SET full_name = '<full_name>', total = 5 WHERE id = 7",
    ),
    (
        "UPDATE c SET (email, note) = ('a', 'b')",
        "UPDATE c SET (email, note) = ('<email>', 'b')",
    ),
    # inserted into a PII column, by position
    (
        "INSERT INTO customers (id, full_name) VALUES (1, 'Ann'), (2, 'Bo')",
        "INSERT INTO customers (id, full_name) VALUES (1, '<full_name>'), (2, '<full_name>')",
    ),
    (
        "INSERT INTO c (card_number, amount) SELECT '1', 2",
        "INSERT INTO c (card_number, amount) SELECT '<card_number>', 2",
    ),
    # no column list: the places are unknown, every value is masked
    ("INSERT INTO c VALUES (1, 'Ann')", "INSERT INTO c VALUES ('<value>', '<value>')"),
    # MERGE
    (
        "MERGE INTO c USING s ON c.id = s.id WHEN MATCHED THEN UPDATE SET email = 'x' "
        "WHEN NOT MATCHED THEN INSERT (id, phone) VALUES (1, '2')",
        "MERGE INTO c USING s ON c.id = s.id WHEN MATCHED THEN UPDATE SET email = '<email>' "
        "WHEN NOT MATCHED THEN INSERT (id, phone) VALUES (1, '<phone>')",
    ),
    # a subquery compared with a PII column
    (
        "DELETE FROM customers WHERE full_name IN (VALUES ('Ann Lee'))",
        "DELETE FROM customers WHERE full_name IN (VALUES ('<full_name>'))",
    ),
    (
        "DELETE FROM customers WHERE full_name IN (SELECT 'Ann Lee')",
        "DELETE FROM customers WHERE full_name IN (SELECT '<full_name>')",
    ),
    # values reaching a PII column through an alias: every loose value is masked
    (
        "UPDATE customers SET full_name = v.n FROM (VALUES (1, 'Ann Lee')) v(id, n) "
        "WHERE customers.id = v.id",
        "UPDATE customers SET full_name = v.n FROM (VALUES ('<value>', '<value>')) v(id, n) "
        "WHERE customers.id = v.id",
    ),
    (
        "MERGE INTO customers c USING (VALUES (1, 'Ann Lee')) v(id, n) ON c.id = v.id "
        "WHEN MATCHED THEN UPDATE SET full_name = v.n",
        "MERGE INTO customers c USING (VALUES ('<value>', '<value>')) v(id, n) ON c.id = v.id "
        "WHEN MATCHED THEN UPDATE SET full_name = v.n",
    ),
    (
        "WITH v(n) AS (VALUES ('Ann Lee')) DELETE FROM customers "
        "WHERE full_name IN (SELECT n FROM v)",
        "WITH v(n) AS (VALUES ('<value>')) DELETE FROM customers "
        "WHERE full_name IN (SELECT n FROM v)",
    ),
    (
        "DELETE FROM customers c USING (SELECT 'Ann Lee' AS n) v WHERE c.full_name = v.n",
        "DELETE FROM customers c USING (SELECT '<value>' AS n) v WHERE c.full_name = v.n",
    ),
    # a PII column behind an alias, however many levels, a JSON key, a composite's
    # field, a whole row, a CASE, a UNION; a prepared statement's arguments
    (
        "SELECT * FROM (SELECT full_name AS n FROM customers) x WHERE n = 'Ann Lee'",
        "SELECT * FROM (SELECT full_name AS n FROM customers) x WHERE n = '<n>'",
    ),
    (
        "SELECT * FROM (SELECT full_name FROM customers) x(n) WHERE n = 'Ann Lee'",
        "SELECT * FROM (SELECT full_name FROM customers) x(n) WHERE n = '<n>'",
    ),
    (
        "WITH x AS (SELECT upper(full_name) AS u FROM customers), y(w) AS (SELECT u FROM x) "
        "SELECT * FROM y WHERE w = 'ANN LEE'",
        "WITH x AS (SELECT upper(full_name) AS u FROM customers), y(w) AS (SELECT u FROM x) "
        "SELECT * FROM y WHERE w = '<w>'",
    ),
    (
        "SELECT * FROM customers c WHERE to_jsonb(c)->>'full_name' = 'Ann Lee'",
        "SELECT * FROM customers c WHERE to_jsonb(c)->>'<full_name>' = '<full_name>'",
    ),
    (
        "SELECT * FROM customers c WHERE (c).full_name = 'Ann Lee'",
        "SELECT * FROM customers c WHERE (c).full_name = '<full_name>'",
    ),
    (
        "SELECT * FROM customers c WHERE c::text LIKE '%Ann Lee%' OR c = ROW(1, 'Ann')",
        "SELECT * FROM customers c WHERE c::text LIKE '<value>' OR c = ROW('<value>', '<value>')",
    ),
    (
        "SELECT CASE full_name WHEN 'Ann Lee' THEN 1 END FROM customers",
        "SELECT CASE full_name WHEN '<full_name>' THEN '<full_name>' END FROM customers",
    ),
    (
        "INSERT INTO customers (id, full_name) SELECT 1, 'Ann Lee' UNION SELECT 2, 'Bo Li'",
        "INSERT INTO customers (id, full_name) SELECT 1, '<full_name>' UNION SELECT 2, '<full_name>'",
    ),
    ("EXECUTE p(7, 'Ann Lee')", "EXECUTE p('<value>', '<value>')"),
    # a PII column's default
    (
        "ALTER TABLE customers ALTER COLUMN full_name SET DEFAULT 'Ann Lee'",
        "ALTER TABLE customers ALTER COLUMN full_name SET DEFAULT '<full_name>'",
    ),
    (
        "CREATE TABLE t (id int DEFAULT 7, full_name text DEFAULT 'Ann Lee')",
        "CREATE TABLE t (id int DEFAULT 7, full_name text DEFAULT '<full_name>')",
    ),
    # code in a string (a DO block, a function's body, query_to_xml's query) that names
    # a PII column: its literals
    (
        "DO $$BEGIN UPDATE customers SET full_name = 'Ann Lee' WHERE id = 7; END$$",
        "DO $$BEGIN UPDATE customers SET full_name = '<value>' WHERE id = '<value>'; END$$",
    ),
    (
        "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql AS "
        "$f$ SELECT count(*) FROM customers WHERE address = '1 Main St' $f$",
        "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql AS "
        "$f$ SELECT count(*) FROM customers WHERE address = '<value>' $f$",
    ),
    (
        "SELECT query_to_xml('select 1 from customers where full_name = ''Ann Lee''', "
        "true, true, '')",
        "SELECT query_to_xml('<value>', true, true, '')",
    ),
    (
        "DO $$BEGIN UPDATE orders SET status = 'paid' WHERE id = 7; END$$",
        "DO $$BEGIN UPDATE orders SET status = 'paid' WHERE id = 7; END$$",
    ),
    # rows from a function in FROM, and the arms of a set operation, reach a PII
    # column's place by position or alias: every value there is masked
    (
        "INSERT INTO customers (id, full_name) SELECT * FROM unnest(ARRAY[1], ARRAY['Ann Lee'])",
        "INSERT INTO customers (id, full_name) SELECT * FROM unnest(ARRAY['<value>'], "
        "ARRAY['<value>'])",
    ),
    (
        "UPDATE customers SET full_name = x FROM unnest(ARRAY['Ann Lee']) x WHERE id = 1",
        "UPDATE customers SET full_name = x FROM unnest(ARRAY['<value>']) x WHERE id = 1",
    ),
    (
        "SELECT id FROM customers c JOIN jsonb_array_elements_text('[\"Ann Lee\"]') x "
        "ON x = c.full_name",
        "SELECT id FROM customers c JOIN jsonb_array_elements_text('<value>') x ON x = c.full_name",
    ),
    (
        "UPDATE customers SET full_name = x FROM (SELECT 'Ann Lee' UNION SELECT 'Bo') v(x) "
        "WHERE id = 1",
        "UPDATE customers SET full_name = x FROM (SELECT '<value>' UNION SELECT '<value>') v(x) "
        "WHERE id = 1",
    ),
    (
        "SELECT full_name FROM customers INTERSECT SELECT 'Ann Lee'",
        "SELECT full_name FROM customers INTERSECT SELECT '<value>'",
    ),
    (
        "SELECT full_name FROM customers EXCEPT VALUES ('Ann Lee')",
        "SELECT full_name FROM customers EXCEPT VALUES ('<value>')",
    ),
    # a function's argument given by a PII column's name
    (
        "CALL update_customer(id => 7, full_name => 'Ann Lee', birth_date := '1961-07-23')",
        "CALL update_customer(id => 7, full_name => '<full_name>', birth_date := '<birth_date>')",
    ),
    # a row source whose columns are named after PII columns, joined by those names
    (
        "WITH x(full_name) AS (VALUES ('Ann Lee')) SELECT id FROM customers JOIN x "
        "USING (full_name)",
        "WITH x(full_name) AS (VALUES ('<value>')) SELECT id FROM customers JOIN x "
        "USING (full_name)",
    ),
    (
        "SELECT id FROM customers NATURAL JOIN (VALUES ('Ann Lee')) x(full_name)",
        "SELECT id FROM customers NATURAL JOIN (VALUES ('<value>')) x(full_name)",
    ),
    (
        "SELECT id FROM customers NATURAL JOIN jsonb_to_record($$"
        '{"n": "Ann Lee"}$$) AS x(full_name text)',
        "SELECT id FROM customers NATURAL JOIN jsonb_to_record('<value>') AS x(full_name text)",
    ),
    # an INSERT without a column list may fill PII columns from any row source
    (
        "INSERT INTO customers SELECT 1, x FROM unnest(ARRAY['Ann Lee']) x",
        "INSERT INTO customers SELECT '<value>', x FROM unnest(ARRAY['<value>']) x",
    ),
    # a document keyed by a PII column's name (JSON, hstore) is read by that name
    (
        "INSERT INTO customers SELECT * FROM "
        'json_populate_record(null::customers, \'{"full_name": "Ann Lee"}\')',
        "INSERT INTO customers SELECT * FROM json_populate_record(null::customers, '<value>')",
    ),
    (
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM jsonb_populate_recordset("
        'null::customers, $$[{"full\\u005fname": "Ann Lee"}]$$))',
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM jsonb_populate_recordset("
        "null::customers, '<value>'))",
    ),
    (
        "SELECT populate_record(null::customers, 'full_name => \"Ann Lee\"'::hstore)",
        "SELECT populate_record(null::customers, '<value>'::hstore)",
    ),
    # ... but not where no PII column is named
    (
        "SELECT * FROM (SELECT status AS s FROM orders) x WHERE s = 'paid'",
        "SELECT * FROM (SELECT status AS s FROM orders) x WHERE s = 'paid'",
    ),
    (
        "UPDATE orders SET status = v.s FROM (VALUES (1, 'paid')) v(id, s) WHERE orders.id = v.id",
        "UPDATE orders SET status = v.s FROM (VALUES (1, 'paid')) v(id, s) WHERE orders.id = v.id",
    ),
    # ordinary values stay visible
    (
        "DELETE FROM orders WHERE created_at < '2020-01-01 12:00:00' AND total > 100.5",
        "DELETE FROM orders WHERE created_at < '2020-01-01 12:00:00' AND total > 100.5",
    ),
]


@pytest.mark.parametrize(("sql", "expected"), BY_PLACE)
def test_values_in_a_pii_columns_place_are_masked(sql: str, expected: str) -> None:
    assert mask_sql(sql) == (expected, ())


BY_LOOK = [
    ("SELECT 'write to ann@example.com'", "SELECT 'write to <email>'"),
    ("SELECT 'é@bücher.de'", "SELECT '<email>'"),
    ("SELECT '427-73-4135'", "SELECT '<ssn>'"),
    ("SELECT 4111111111111111", "SELECT '<card>'"),
    ("SELECT '4111 1111 1111 1111'", "SELECT '<card>'"),
    ("SELECT 4111111111111112", "SELECT 4111111111111112"),  # fails Luhn
    ("SELECT '(591)341-7776', '+1-780-563-6083x7783'", "SELECT '<phone>', '<phone>'"),
    ("SELECT '5272868387'", "SELECT '<phone>'"),
    ("SELECT 'GB33LJSR17410409016103'", "SELECT '<iban>'"),
    ("SELECT 'AB123456C'", "SELECT '<national_id>'"),
    ("/* purpose: mail ann@example.com */ SELECT 1", "/* purpose: mail <email> */ SELECT 1"),
    ("SELECT 1 -- call 206.269.0743", "SELECT 1 -- call <phone>"),
    ("SELECT E'a\\'b ann@x.org', $$ 427-73-4135 $$", "SELECT E'a\\'b <email>', $$ <ssn> $$"),
    ('SELECT 1 AS "ann@example.com"', 'SELECT 1 AS "<email>"'),
    # escapes do not hide a value from masking by look
    (r"SELECT E'ann\x40example.com'", "SELECT '<email>'"),
    (r"SELECT E'427\05573\0554135'", "SELECT '<ssn>'"),
    (r"SELECT U&'ann\0040example.com'", "SELECT '<email>'"),
    (r"SELECT U&'ann!0040example.com' UESCAPE '!'", "SELECT '<email>' UESCAPE '!'"),
    (r"SELECT E'plain\n', U&'d\0061ta'", r"SELECT E'plain\n', U&'d\0061ta'"),
]


@pytest.mark.parametrize(("sql", "expected"), BY_LOOK)
def test_values_that_look_like_pii_are_masked_anywhere(sql: str, expected: str) -> None:
    assert mask_sql(sql)[0] == expected


def test_parameters_are_masked_by_place_and_by_look() -> None:
    sql = "SELECT * FROM customers WHERE email = $1 AND id = $2 AND note = $3 AND x = $4"
    masked, params = mask_sql(sql, ("ann@example.com", "42", "call 848-439-6030", None))
    assert masked == sql
    assert params == ("<email>", "42", "call <phone>", None)


def test_parameters_that_reach_pii_through_rows_or_documents_are_masked() -> None:
    """The drivers' bulk insert (``unnest($1::int[], $2::text[])``) and a JSON
    document keyed by PII column names hand values to PII columns through places no
    parse tree names."""
    assert mask_sql(
        "INSERT INTO customers (id, full_name) SELECT * FROM unnest($1::int[], $2::text[])",
        ["{1,2}", '{"Ann Lee","Bo Li"}'],
    ) == (
        "INSERT INTO customers (id, full_name) SELECT * FROM unnest($1::int[], $2::text[])",
        ("<value>", "<value>"),
    )
    assert mask_sql(
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM "
        "json_populate_recordset(null::customers, $1))",
        ['[{"full_name": "Ann Lee"}]'],
    )[1] == ("<value>",)
    assert mask_sql("SELECT $1::jsonb", ['{"status": "paid"}'])[1] == ('{"status": "paid"}',)


def test_a_parameter_given_by_a_pii_columns_name_is_masked() -> None:
    assert mask_sql("SELECT add_customer(full_name => $1)", ["Ann Lee"])[1] == ("<full_name>",)


def test_partition_bounds_of_a_table_with_pii_are_masked() -> None:
    """The parent's partition key is not in the text: the bounds are masked when the
    tables touched have PII columns (the caller's catalog says so)."""
    sql = "CREATE TABLE c_ann PARTITION OF customers FOR VALUES IN ('Ann Lee')"
    assert mask_sql(sql, pii_columns=["full_name"])[0] == (
        "CREATE TABLE c_ann PARTITION OF customers FOR VALUES IN ('<value>')"
    )
    sql = "ALTER TABLE customers ATTACH PARTITION c61 FOR VALUES FROM ('1961-01-01') TO (MAXVALUE)"
    assert "'1961-01-01'" not in mask_sql(sql, pii_columns=["birth_date"])[0]
    sql = "CREATE TABLE o24 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
    assert mask_sql(sql)[0] == sql


def test_extra_pii_columns_come_from_the_caller() -> None:
    sql = "UPDATE t SET nickname = 'Annie', colour = 'red'"
    assert mask_sql(sql)[0] == sql
    masked, _ = mask_sql(sql, pii_columns=("nickname",))
    assert masked == "UPDATE t SET nickname = '<nickname>', colour = 'red'"


def test_unscannable_text_is_masked_from_where_scanning_failed() -> None:
    masked, _ = mask_sql("SELECT 1, 'ann@example.com")
    assert "ann@" not in masked and masked.startswith("SELECT 1, ")
    assert "could not be scanned" in masked


def test_unparseable_but_scannable_sql_is_still_masked_by_look() -> None:
    masked, _ = mask_sql("SELEC 'ann@example.com' FROM")
    assert masked == "SELEC '<email>' FROM"


def test_non_ascii_text_keeps_offsets_right() -> None:
    sql = "UPDATE c SET note = 'naïve café', email = 'ünï@example.com' WHERE full_name = 'Zoë'"
    assert mask_sql(sql)[0] == (
        "UPDATE c SET note = 'naïve café', email = '<email>' WHERE full_name = '<full_name>'"
    )


@pytest.mark.parametrize(
    ("name", "pii"),
    [
        ("email", True),
        ("customer_email", True),
        ("Phone", True),
        ('"full_name"', True),
        ("first_name", True),
        ("birth_date", True),
        ("date_of_birth", True),
        ("cc_number", True),
        ("card_number", True),
        ("ssn", True),
        ("home_address", True),
        ("id", False),
        ("total", False),
        ("status", False),
        ("created_at", False),
        ("username", False),
    ],
)
def test_pii_column_names(name: str, pii: bool) -> None:
    assert is_pii_column(name) is pii


def test_free_text_and_values() -> None:
    assert mask_text("reach me at ann@example.com") == "reach me at <email>"
    assert mask_text("") == ""
    assert mask_value("x", "email") == "<email>"
    assert mask_value(None) is None
    assert mask_value("+15552368101") == "<phone>"
    assert mask_value("hello") == "hello"


_fake = Faker()
Faker.seed(20240611)
FAKE_VALUES = (
    [_fake.email() for _ in range(40)]
    + [_fake.phone_number() for _ in range(40)]
    + [_fake.ssn() for _ in range(20)]
    + [_fake.credit_card_number() for _ in range(40)]
)


@pytest.mark.parametrize("value", FAKE_VALUES)
def test_realistic_pii_values_never_survive_in_a_literal_or_a_parameter(value: str) -> None:
    sql = f"SELECT * FROM notes WHERE body = '{value}' OR body = $1"
    masked, params = mask_sql(sql, (value,))
    assert value not in masked
    assert params[0] is not None and value not in params[0]


# Values are drawn so they cannot occur by chance in the SQL around them: no I, L, O
# or U, so no keyword of the templates (SELECT, UPDATE, INSERT, VALUES …) can be drawn.
_values = st.text(alphabet="ABCDEFGHJKMNPQRSTVWXYZ#%&!~", min_size=6, max_size=30)
_columns = st.sampled_from(["email", "phone", "ssn", "card_number", "full_name", "address"])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(column=_columns, value=_values, other=st.sampled_from(["id", "status", "total"]))
def test_property_a_value_in_a_pii_place_never_reaches_the_output(
    column: str, value: str, other: str
) -> None:
    escaped = value.replace("'", "''")
    statements = [
        f"SELECT * FROM t WHERE {column} = '{escaped}' AND {other} = 1",
        f"UPDATE t SET {column} = '{escaped}' WHERE {other} = 2",
        f"INSERT INTO t ({other}, {column}) VALUES (3, '{escaped}')",
        f"DELETE FROM t WHERE {column} IN ('x', '{escaped}')",
        f"SELECT * FROM t WHERE upper({column}) LIKE '{escaped}%'",
    ]
    for sql in statements:
        masked, params = mask_sql(sql)
        assert value not in masked, sql
    masked, params = mask_sql(f"SELECT * FROM t WHERE {column} = $1", (value,))
    assert params == (f"<{column}>",)


@pytest.mark.parametrize("run", ["a", "1-", "x.y_"])
def test_a_long_run_of_local_part_characters_is_masked_in_linear_time(run: str) -> None:
    """A comment or quoted name the audit masks by look is the agent's to write: 64 KB
    of letters took the email pattern seconds (quadratic), on the event loop."""
    import time

    from dbgate.gate.audit import masked_text

    body = run * (65536 // len(run))
    started = time.perf_counter()
    assert mask_text(body) == body
    masked = masked_text(f"SELECT 1 /* {body} */", {})
    assert time.perf_counter() - started < 2.0
    assert masked.startswith("SELECT")
    assert mask_text("x" * 70 + "@example.com") == "x" * 6 + "<email>"
    assert mask_text("a@b.cc-d@e.ff and ann.lee@example.com") == "<email><email> and <email>"


@pytest.mark.parametrize(
    "tail", ["/*" * 32768, "/*" * 16384 + "*/" * 16384, "/*" + "+/*" * 20000 + "*/"]
)
def test_a_run_of_comment_openers_is_masked_without_scanning_it(tail: str) -> None:
    """PostgreSQL's scanner spends the square of such a run's length (seconds for
    64 KB), and the audit masks a statement's text on the event loop."""
    import time

    from dbgate.gate.audit import UNSCANNED_RUN, masked_text

    sql = f"SELECT 'ann@example.com', 1 {tail}"
    started = time.perf_counter()
    masked = masked_text(sql, {})
    assert time.perf_counter() - started < 1.0
    expected = "SELECT $1, $2 " + UNSCANNED_RUN
    if len(sql) > 65536:  # past the 64 KiB scanned, the record says what it left out
        expected += (
            f"<masked: the statement has {len(sql)} characters; after the first 65536, "
            f"{len(sql) - 65536} were not scanned>"
        )
    assert masked == expected
    # a banner comment of ordinary length is read as ever
    assert (
        masked_text("SELECT 1 /* " + "*" * 200 + " */", {}) == "SELECT $1 /* " + "*" * 200 + " */"
    )


def test_approvers_and_retry_matching_do_not_scan_a_run_of_comment_openers() -> None:
    """A held statement's text is masked for approvers and normalised for matching a
    retry, on the event loop too: the run is not scanned, every literal and value
    before it is masked (no parse tree says which touch PII)."""
    import time

    from dbgate.approvals.matching import normalized_sql

    sql = "SELECT * FROM c WHERE full_name = 'Ann Lee' AND id = $1 " + "/*" * 40000
    started = time.perf_counter()
    masked, params = mask_sql(sql, ["Ann Lee", None])
    assert normalized_sql(sql) == sql.strip()
    assert time.perf_counter() - started < 1.0
    assert "Ann Lee" not in masked and masked.endswith("<masked: the rest could not be scanned>")
    assert params == ("<masked>", None)
