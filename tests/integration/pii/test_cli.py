"""``dbgate pii scan|check|keygen`` and ``dbgate detokenize`` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dbgate.cli import app
from dbgate.pii import commands
from dbgate.pii.tokens import Tokenizer
from tests.integration.pii.conftest import Demo

runner = CliRunner()


def test_scan_lists_covered_and_suspicious_columns(pii_demo: Demo) -> None:
    result = runner.invoke(app, ["pii", "scan", "--dsn", pii_demo.dsn, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    covered = {c["column"]: c["entity"] for c in report["covered"]}
    for column, entity in {
        "public.customers.full_name": "name",
        "public.customers.email": "email",
        "public.customers.phone": "phone",
        "public.customers.ssn": "ssn",
        "public.customers.birth_date": "birth_date",
        "public.customers.address": "address",
        "public.payments.card_number": "card",
        "public.v_contacts.who": "name",
    }.items():
        assert covered[column] == entity
    suspicious = {s["column"]: s for s in report["suspicious"]}
    assert suspicious["public.notes.body"]["detected"].get("email", 0) >= 1
    assert "public.orders.status" not in suspicious and "public.tags.label" not in suspicious
    assert not any(v.decode() in result.output for v in pii_demo.values)  # values are never printed
    strict = runner.invoke(
        app, ["pii", "scan", "--dsn", pii_demo.dsn, "--strict", "--sample", "50"]
    )
    assert strict.exit_code == 1 and "public.notes.body" in strict.output


def test_scan_of_an_unreachable_database_is_a_clear_error() -> None:
    result = runner.invoke(app, ["pii", "scan", "--dsn", "postgresql://u:secret@127.0.0.1:1/x"])
    assert (
        result.exit_code == 2 and "cannot scan" in result.output and "secret" not in result.output
    )


def test_check_and_keygen(tmp_path: Path) -> None:
    assert runner.invoke(app, ["pii", "check"]).exit_code == 0
    bad = tmp_path / "pii.yaml"
    bad.write_text("columns:\n  a.b.c: E-mail\n")
    result = runner.invoke(app, ["pii", "check", str(bad)])
    assert result.exit_code == 1 and f"{bad}:2:" in result.output
    out = runner.invoke(app, ["pii", "keygen"]).output
    assert out.startswith("secret: base64:") and "fingerprint: " in out


def test_detokenize_resolves_and_records(tmp_path: Path, monkeypatch: Any) -> None:
    from dbgate.pii.keys import generate_key, keyring_from_config

    secret, fp = generate_key()
    cfg = tmp_path / "dbgate.yaml"
    cfg.write_text(
        f"pii:\n  mode: reversible\n  keys:\n    - id: k1\n      secret: '{secret}'\n"
        f"      fingerprint: {fp}\n"
    )
    ring = keyring_from_config([{"id": "k1", "secret": secret}], environ={})
    token = Tokenizer(ring, "reversible").token("email", b"ann@x.io")
    hashed = Tokenizer(ring, "hashed").token("email", b"ann@x.io")
    events: list[commands.DetokenizeEvent] = []
    commands.set_detokenize_recorder(events.append)
    try:
        ok = runner.invoke(app, ["detokenize", token, "-c", str(cfg)])
        # the last byte changed (the key is random: the token may already end in 00)
        forged = token[:-2] + ("ff" if token.endswith("00") else "00")
        bad = runner.invoke(app, ["detokenize", forged, "-c", str(cfg)])
        opaque = runner.invoke(app, ["detokenize", hashed, "-c", str(cfg)])
    finally:
        commands.set_detokenize_recorder(None)
    assert ok.exit_code == 0 and "ann@x.io" in ok.output
    assert bad.exit_code == 1
    assert opaque.exit_code == 1 and "hashed token" in opaque.output
    assert [(e.entity, e.ok) for e in events] == [
        ("email", True),
        ("email", False),
        ("email", False),
    ]
    assert all("ann@x.io" not in json.dumps(e.__dict__) for e in events)
    monkeypatch.delenv("DBGATE_PII_KEY", raising=False)
    nokey = runner.invoke(app, ["detokenize", token])
    assert nokey.exit_code == 2 and "needs a key" in nokey.output


def test_detokenize_is_in_the_audit_trail_before_the_value_is_shown(
    pg_server: Any, tmp_path: Path
) -> None:
    import asyncio

    import asyncpg

    from dbgate.pii.keys import generate_key, keyring_from_config
    from tests.integration.audit_support import create_state_database, drop_state_database

    state_dsn = asyncio.run(create_state_database(pg_server, "pii_cli_detokenize_state"))
    try:
        secret, _ = generate_key()
        ring = keyring_from_config([{"id": "k1", "secret": secret}], environ={})
        token = Tokenizer(ring, "reversible").token("email", b"bea@x.io")

        def config(dsn: str) -> str:
            path = tmp_path / f"dbgate-{len(dsn)}.yaml"
            path.write_text(
                f"state:\n  dsn: '{dsn}'\npii:\n  mode: reversible\n"
                f"  keys:\n    - id: k1\n      secret: '{secret}'\n"
            )
            return str(path)

        shown = runner.invoke(app, ["detokenize", token, "-c", config(state_dsn)])
        assert shown.exit_code == 0 and "bea@x.io" in shown.output, shown.output

        async def records() -> list[Any]:
            conn = await asyncpg.connect(state_dsn)
            try:
                return list(
                    await conn.fetch(
                        "SELECT * FROM dbgate.audit_log WHERE kind = 'detokenize' ORDER BY at, seq"
                    )
                )
            finally:
                await conn.close()

        rows = asyncio.run(records())
        assert len(rows) == 1
        assert all("bea@x.io" not in str(v) for v in dict(rows[0]).values())

        # an attempt that shows nothing is recorded too (it was on standard error only)
        forged = token[:-2] + ("00" if token[-2:] != "00" else "11")
        refused = runner.invoke(app, ["detokenize", forged, "-c", config(state_dsn)])
        assert refused.exit_code == 1, refused.output
        rows = asyncio.run(records())
        assert len(rows) == 2 and rows[1]["rows"] == 0
        assert rows[1]["reason"].startswith(f"dbgate detokenize {forged[:24]}… failed: ")

        unreachable = "postgresql://nobody:pw@127.0.0.1:1/none"
        hidden = runner.invoke(app, ["detokenize", token, "-c", config(unreachable)])
        assert hidden.exit_code == 2 and "bea@x.io" not in hidden.output
        assert "audit trail cannot be written" in hidden.output
    finally:
        asyncio.run(drop_state_database(pg_server, "pii_cli_detokenize_state"))
