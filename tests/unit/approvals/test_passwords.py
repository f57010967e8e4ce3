"""Password hashes and token hashes for approver accounts."""

from __future__ import annotations

import pytest

from dbgate.approvals.passwords import (
    hash_password,
    new_token,
    token_hash,
    verify_password,
)


def test_scrypt_hash_round_trip_and_format() -> None:
    stored = hash_password("correct horse", log_n=14)  # the default (17) is slow on purpose
    scheme, params, salt, key = stored.split("$")
    assert scheme == "scrypt" and params == "ln=14,r=8,p=1" and salt and key
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert hash_password("correct horse", log_n=14) != stored  # salted


def test_the_default_cost_is_owasps() -> None:
    assert hash_password("x").split("$")[1] == "ln=17,r=8,p=1"


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "",
        "plain",
        "md5$x$y$z",
        "scrypt$ln=40,r=8,p=1$AA$AA",
        "scrypt$ln=14$AA$AA",
        "scrypt$a$b$c$d",
    ],
)
def test_malformed_hashes_never_verify(stored: str | None) -> None:
    assert not verify_password("anything", stored)


def test_empty_passwords_are_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("")
    assert not verify_password("", hash_password("x", log_n=14))


def test_tokens_are_long_random_and_stored_hashed() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("dbg_") and len(a) >= 40
    assert token_hash(a) != token_hash(b) and len(token_hash(a)) == 32
    assert a.encode() not in token_hash(a)
