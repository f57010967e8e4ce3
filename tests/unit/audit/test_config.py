"""The ``audit:`` section of the configuration."""

from __future__ import annotations

import pytest

from dbgate.config import AuditConfig, ConfigError, load_config


def test_defaults_fail_closed() -> None:
    cfg = load_config(None, environ={})
    assert cfg.audit == AuditConfig()
    assert cfg.audit.on_failure == "refuse" and cfg.audit.enabled


def test_buffer_needs_a_spill_directory(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"audit\.on_failure buffer needs audit\.spill_dir"):
        load_config(None, environ={"DBGATE__AUDIT__ON_FAILURE": "buffer"})
    cfg = load_config(
        None,
        environ={"DBGATE__AUDIT__ON_FAILURE": "buffer", "DBGATE__AUDIT__SPILL_DIR": str(tmp_path)},
    )
    assert cfg.audit.spill_dir == tmp_path


def test_bad_values_name_the_key_and_line(tmp_path) -> None:
    path = tmp_path / "dbgate.yaml"
    path.write_text("audit:\n  queue_size: 5\n  on_failure: maybe\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    text = str(e.value)
    assert f"{path}:2: audit.queue_size" in text
    assert f"{path}:3: audit.on_failure" in text


def test_secrets_come_from_the_environment(tmp_path) -> None:
    path = tmp_path / "dbgate.yaml"
    path.write_text("audit:\n  param_key: ${AUDIT_KEY}\n")
    with pytest.raises(ConfigError, match="AUDIT_KEY is not set"):
        load_config(path, environ={})
    assert load_config(path, environ={"AUDIT_KEY": "s3cret"}).audit.param_key == "s3cret"


def test_batch_delay_is_a_bounded_number_of_seconds(tmp_path) -> None:
    assert AuditConfig().batch_delay == 0.05
    assert load_config(None, environ={"DBGATE__AUDIT__BATCH_DELAY": "0"}).audit.batch_delay == 0
    for bad in ("-0.1", "11"):
        with pytest.raises(ConfigError, match=r"audit\.batch_delay"):
            load_config(None, environ={"DBGATE__AUDIT__BATCH_DELAY": bad})
