"""Tokens (deterministic, tagged, unlinkable, reversible) and keys (sources, rotation,
refusal of missing or wrong keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dbgate.config import Config
from dbgate.pii.keys import PiiKeyError, generate_key, keyring_from_config, parse_secret
from dbgate.pii.room import PiiRoom
from dbgate.pii.tokens import TOKEN_RE, Key, Keyring, TokenError, Tokenizer, parse_token

K1 = Key("k1", b"1" * 32)
K2 = Key("k2", b"2" * 32)


@pytest.mark.parametrize("mode", ["reversible", "hashed"])
def test_deterministic_tagged_and_key_bound(mode: str) -> None:
    t = Tokenizer(Keyring([K1]), mode)
    a = t.token("email", b"ann@example.com")
    assert a == Tokenizer(Keyring([K1]), mode).token("email", b"ann@example.com")  # another process
    assert a.startswith(f"tok_email_{mode[0]}")
    assert t.token("phone", b"ann@example.com") != a  # the entity is part of it
    assert Tokenizer(Keyring([K2]), mode).token("email", b"ann@example.com") != a
    entity, payload = parse_token(a)
    assert entity == "email" and len(payload) - 1 >= 32  # >= 128 bits of hex
    assert TOKEN_RE.fullmatch(a)
    assert t.resolve(a) == ("email", b"ann@example.com")


def test_entities_with_underscores_parse() -> None:
    t = Tokenizer(Keyring([K1]), "reversible")
    tok = t.token("birth_date", b"1990-01-01")
    assert parse_token(tok)[0] == "birth_date"
    assert t.resolve(tok) == ("birth_date", b"1990-01-01")


def test_reversible_tokens_hide_length_to_16_bytes() -> None:
    t = Tokenizer(Keyring([K1]), "reversible")
    lengths = {len(t.token("email", b"x" * n)) for n in range(15)}
    assert len(lengths) == 1


def test_altered_retagged_and_foreign_tokens_do_not_resolve() -> None:
    t = Tokenizer(Keyring([K1]), "reversible")
    tok = t.token("email", b"ann@example.com")
    flipped = tok[:-1] + ("0" if tok[-1] != "0" else "1")
    with pytest.raises(TokenError, match="does not resolve"):
        t.resolve(flipped)
    with pytest.raises(TokenError):
        t.resolve(tok.replace("tok_email_", "tok_phone_"))  # the entity is authenticated
    with pytest.raises(TokenError, match="does not resolve"):
        Tokenizer(Keyring([K2]), "reversible").resolve(tok)
    with pytest.raises(TokenError, match="not a dbgate token"):
        t.resolve("tok_email")
    e = TokenError("x")
    assert e.sqlstate == "22023"


def test_hashed_tokens_resolve_from_a_bounded_cache() -> None:
    t = Tokenizer(Keyring([K1]), "hashed", cache_entries=2)
    a = t.token("email", b"a@x.io")
    t.token("email", b"b@x.io")
    t.token("email", b"c@x.io")
    with pytest.raises(TokenError, match="token cache"):
        t.resolve(a)
    assert t.resolve(t.token("email", b"a@x.io")) == ("email", b"a@x.io")


@pytest.mark.parametrize("entries", [1, 7, 20, 1000])
def test_hashed_tokens_forgotten_oldest_first_within_a_tenth_of_the_bound(entries: int) -> None:
    t = Tokenizer(Keyring([K1]), "hashed", cache_entries=entries)
    forgotten: list[int] = []

    class Cache:
        def forget(self) -> None:
            forgotten.append(1)

    cache = Cache()
    t.on_forget(cache.forget)
    values = [f"v{i}@x.io".encode() for i in range(3 * entries + 5)]
    tokens = [t.token("email", v) for v in values]
    resolvable = []
    for token, value in zip(tokens, values, strict=True):
        try:
            assert t.resolve(token) == ("email", value)
            resolvable.append(value)
        except TokenError:
            resolvable.append(None)
    kept = [v for v in resolvable if v is not None]
    assert kept == values[-len(kept) :]  # the newest, in order: the oldest went first
    assert entries - max(1, entries // 10) < len(kept) <= entries
    assert forgotten  # whoever caches tokens by value was told


def test_no_hashed_token_is_remembered_with_a_zero_bound() -> None:
    t = Tokenizer(Keyring([K1]), "hashed", cache_entries=0)
    with pytest.raises(TokenError, match="token cache"):
        t.resolve(t.token("email", b"a@x.io"))


def test_rotation_old_tokens_resolve_during_grace_only() -> None:
    now = [1000.0]
    old = Tokenizer(Keyring([K1]), "reversible")
    tok = old.token("ssn", b"123-45-6789")
    rotated = Tokenizer(
        Keyring([K2, Key("k1", K1.secret, retire_at=2000.0)], clock=lambda: now[0]), "reversible"
    )
    assert rotated.token("ssn", b"123-45-6789") != tok  # new tokens under the new key
    assert rotated.resolve(tok) == ("ssn", b"123-45-6789")
    now[0] = 2000.0
    with pytest.raises(TokenError, match="does not resolve"):
        rotated.resolve(tok)
    assert rotated.resolve(rotated.token("ssn", b"x")) == ("ssn", b"x")


def test_big_values_get_hashed_tokens_even_in_reversible_mode() -> None:
    t = Tokenizer(Keyring([K1]), max_reversible_bytes=4096)
    big = os.urandom(1024) * 100 * 1024  # 100 MB
    tok = t.token("pii", big)
    assert tok.startswith("tok_pii_h") and len(tok) < 60
    assert t.token("pii", big) == tok


def test_values_need_not_be_utf8() -> None:
    t = Tokenizer(Keyring([K1]), "reversible")
    assert t.resolve(t.token("name", b"\xff\xfe\x00")) == ("name", b"\xff\xfe\x00")
    assert t.token("name", b"") != t.token("name", b"\0")


# ----------------------------------------------------------------------------- keys


def test_missing_key_refuses_with_a_clear_message() -> None:
    with pytest.raises(PiiKeyError, match=r"needs a key: set pii\.keys .* DBGATE_PII_KEY"):
        keyring_from_config([], environ={})
    with pytest.raises(PiiKeyError, match="needs a key"):
        PiiRoom.from_config(Config().pii, environ={})


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("base64:c2hvcnQ=", "has 5 bytes, at least 32"),
        ("hex:zz", "not valid base64 or hex"),
        ("not base64 !!", "not valid base64 or hex"),
    ],
)
def test_bad_keys_refuse(secret: str, message: str) -> None:
    with pytest.raises(PiiKeyError, match=message):
        keyring_from_config([{"id": "a", "secret": secret}], environ={})


def test_wrong_key_is_caught_by_its_fingerprint() -> None:
    secret, fingerprint = generate_key()
    ring = keyring_from_config(
        [{"id": "a", "secret": secret, "fingerprint": fingerprint}], environ={}
    )
    assert ring.current.fingerprint == fingerprint
    other, _ = generate_key()
    with pytest.raises(PiiKeyError, match="wrong key: its fingerprint is"):
        keyring_from_config([{"id": "a", "secret": other, "fingerprint": fingerprint}], environ={})


def test_key_sources(tmp_path: Path) -> None:
    secret, _ = generate_key()
    f = tmp_path / "key"
    f.write_text(secret + "\n")
    ring = keyring_from_config(
        [
            {"id": "new", "secret_file": str(f)},
            {"id": "old", "secret_env": "OLD_KEY", "retire_after": "2030-01-01T00:00:00+00:00"},
        ],
        environ={"OLD_KEY": "hex:" + "ab" * 32},
    )
    assert [k.id for k in ring.keys] == ["new", "old"] and ring.keys[1].retire_at is not None
    assert keyring_from_config(
        [], environ={"DBGATE_PII_KEY": secret}
    ).current.secret == parse_secret(secret, "x")
    with pytest.raises(PiiKeyError, match="environment variable MISSING is not set"):
        keyring_from_config([{"id": "a", "secret_env": "MISSING"}], environ={})
    with pytest.raises(PiiKeyError, match="cannot read"):
        keyring_from_config([{"id": "a", "secret_file": str(tmp_path / "none")}], environ={})
    with pytest.raises(PiiKeyError, match="exactly one of"):
        keyring_from_config([{"id": "a"}], environ={})
    with pytest.raises(PiiKeyError, match="current key cannot have retire_after"):
        keyring_from_config(
            [{"id": "a", "secret": secret, "retire_after": "2030-01-01"}], environ={}
        )


def test_room_from_config() -> None:
    secret, fp = generate_key()
    cfg = Config.model_validate(
        {
            "pii": {
                "keys": [{"id": "k", "secret": secret, "fingerprint": fp}],
                "mode": "hashed",
                "unknown": "hold",
            }
        }
    )
    room = PiiRoom.from_config(cfg.pii, environ={})
    assert room.tokenizer.mode == "hashed" and room.settings.unknown == "hold"
    assert room.plan("select 1").rows(None, ()) is None


def test_a_reload_reads_the_key_files_again(tmp_path: Path) -> None:
    """A key rotated (or replaced after a leak) in its ``secret_file`` is another key
    under the same config text: a reload used to keep tokenizing under the old one,
    and to accept a file whose key its ``fingerprint`` no longer matches (which the
    next start refuses)."""
    from dbgate.gate.pii import PiiGate

    old_secret, _ = generate_key()
    new_secret, new_print = generate_key()
    path = tmp_path / "key"
    path.write_text(old_secret)
    config = Config.model_validate({"pii": {"keys": [{"id": "k", "secret_file": str(path)}]}})
    gate = PiiGate(config)
    gate.loads.loaded["db"] = before = PiiRoom.from_config(config.pii)
    gate.use_config(config, [])  # the same key: the same tokenizer, tokens still resolve
    assert gate.loads.loaded["db"].tokenizer is before.tokenizer
    path.write_text(new_secret)
    gate.use_config(config, [])
    after = gate.loads.loaded["db"].tokenizer
    assert after.keyring.current.secret == parse_secret(new_secret, "test")
    assert after.token("email", b"a@b.c") != before.tokenizer.token("email", b"a@b.c")
    pinned = Config.model_validate(
        {"pii": {"keys": [{"id": "k", "secret_file": str(path), "fingerprint": new_print}]}}
    )
    gate.use_config(pinned, [])
    path.write_text(old_secret)  # the wrong key for that fingerprint
    with pytest.raises(PiiKeyError, match="wrong key"):
        gate.use_config(pinned, [])
    assert gate.loads.loaded["db"].tokenizer.keyring.current.secret == parse_secret(
        new_secret, "test"
    )
