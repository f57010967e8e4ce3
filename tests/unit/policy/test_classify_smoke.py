"""Smoke tests of the public classifier API (the big table lives in test_classify_table.py)."""

from dbgate.policy.classify import classify
from dbgate.policy.model import Category


def test_plain_read_is_read() -> None:
    assert classify("SELECT abalance FROM pgbench_accounts WHERE aid = $1").categories == {
        Category.READ
    }


def test_parse_error_is_opaque_with_message() -> None:
    c = classify("selec 1")
    assert c.parse_error
    assert c.categories == {Category.OPAQUE}
