"""Config validation as the operator meets it: every problem at once, each with
file:line and key, "did you mean", the wrong value (never a secret's), and secrets
from the environment or from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbgate.config import ConfigError, load_config


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "dbgate.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return info.value.problems


def test_every_problem_is_listed_in_file_order(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        "upstream:\n"  # 1
        "  hots: db\n"  # 2
        "  port: lots\n"  # 3
        "limits:\n"  # 4
        "  max_conections: 5\n"  # 5
        "state:\n"  # 6
        "  pool_max: 3\n"  # 7
        "logging:\n"  # 8
        "  format: xml\n"  # 9
        "nonsense: 1\n",  # 10
    )
    where = str(tmp_path / "dbgate.yaml")
    assert problems == [
        f"{where}:2: upstream.hots: unknown key; did you mean host?",
        f"{where}:3: upstream.port: Input should be a valid integer, unable to parse string"
        " as an integer (got 'lots')",
        f"{where}:5: limits.max_conections: unknown key; did you mean max_connections?",
        f"{where}:6: state.dsn: required key is missing",
        f"{where}:9: logging.format: Input should be 'auto', 'text' or 'json' (got 'xml')",
        f"{where}:10: nonsense: unknown key; this section takes: listen, tls, upstream, "
        "identities, limits, classify, state, web, audit, approvals, pii, notifications, rules_dir, policy, "
        "shutdown_grace_seconds, allow_privileged_upstream, log_level, logging, metrics",
    ]


def test_keys_inside_lists_are_located(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        "identities:\n  - name: a\n    password: x\n  - name: b\n    pasword: y\n",
    )
    assert problems == [
        f"{tmp_path / 'dbgate.yaml'}:5: identities[1].pasword: unknown key; did you mean password?"
    ]
    problems = _problems(tmp_path, "identities:\n  - name: a\n    password: x\n  - name: b\n")
    assert problems[0].endswith(
        ":4: identities[1]: identity 'b': set exactly one of password or scram_verifier"
    )


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "upstream:\n  password: [not, a, string]\n")
    problems += _problems(tmp_path, "approvals:\n  match_key: tooshort-secret\n")
    assert len(problems) == 2
    assert "tooshort-secret" not in " ".join(problems)
    assert "(got" not in " ".join(problems)


def test_environment_and_file_references(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "upstream-password").write_text("s3cr$t ${NOT_EXPANDED}\n")
    (tmp_path / "agent.pw").write_text("agent-pw\r\n")
    path = tmp_path / "dbgate.yaml"
    path.write_text(
        "upstream:\n"
        "  password: ${file:secrets/upstream-password}\n"
        "  user: ${ROLE}\n"
        "identities:\n"
        "  - name: a\n"
        "    password: ${file:${SECRETS_DIR}/agent.pw}\n"
        "state:\n"
        "  dsn: postgresql://dbgate:${file:secrets/upstream-password}@db/state\n"
    )
    cfg = load_config(path, environ={"ROLE": "agent_ro", "SECRETS_DIR": str(tmp_path)})
    assert cfg.upstream.password == "s3cr$t ${NOT_EXPANDED}"  # a secret is not expanded again
    assert cfg.upstream.user == "agent_ro"
    assert cfg.identities[0].password == "agent-pw"
    assert cfg.state is not None and cfg.state.dsn.startswith("postgresql://dbgate:s3cr$t")


def test_reference_problems_name_the_key_and_line(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    problems = _problems(
        tmp_path,
        "upstream:\n"
        "  password: ${UPSTREAM_PASSWORD}\n"
        "identities:\n"
        "  - name: a\n"
        "    password: ${file:/nonexistent/agent.pw}\n"
        "  - name: b\n"
        "    password: ${file:empty}\n"
        "  - name: c\n"
        "    password: ${file:big}\n",
    )
    assert len(problems) == 4, problems
    assert problems[0].endswith(
        ":2: upstream.password: environment variable UPSTREAM_PASSWORD is not set"
    )
    assert problems[1].endswith(
        ":5: identities[0].password: cannot read secret file /nonexistent/agent.pw: "
        "No such file or directory"
    )
    assert problems[2].endswith(
        f":7: identities[1].password: secret file {tmp_path}/empty is empty"
    )
    assert ":9: identities[2].password: secret file" in problems[3]
    assert "is it the right file?" in problems[3]


def test_environment_overrides_still_apply(tmp_path: Path) -> None:
    path = tmp_path / "dbgate.yaml"
    path.write_text("logging:\n  format: text\n")
    cfg = load_config(
        path, environ={"DBGATE__LOGGING__FORMAT": "json", "DBGATE__METRICS__ENABLED": "false"}
    )
    assert cfg.logging.format == "json"
    assert cfg.metrics.enabled is False


def test_new_sections_have_safe_defaults(tmp_path: Path) -> None:
    path = tmp_path / "dbgate.yaml"
    path.write_text("")
    cfg = load_config(path, environ={})
    assert cfg.logging.format == "auto" and cfg.logging.file is None
    assert cfg.logging.summary_interval_seconds == 60
    assert cfg.metrics.enabled is True and cfg.metrics.multiprocess_dir is None


def test_classify_settings_are_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "dbgate.yaml"
    cfg.write_text("classify:\n  workers: -1\n  time_budget_seconds: 0\n  worker_memory_mb: 100\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    text = str(err.value)
    assert ":2: classify.workers: Input should be greater than or equal to 0" in text
    assert ":3: classify.time_budget_seconds: Input should be greater than 0" in text
    assert ":4: classify.worker_memory_mb: a worker needs at least 256 MiB" in text
    assert load_config(None, environ={}).classify.workers is None  # min(2, cores)
