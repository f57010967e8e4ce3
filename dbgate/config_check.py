"""``dbgate config check``: everything about a config that can be known before serving.

Beyond the schema (:func:`dbgate.config.load_config`), a config can name files that
are missing or wrong, a rules directory or PII catalog that does not load, a
tokenization key that is missing or unusable, or a stored SCRAM verifier that is
malformed — each of which would stop ``dbgate serve`` later, one at a time. :func:`file_problems` finds them all at once, without the network; with
``--connect``, :func:`connect_problems` also tries the upstream and the state
database. The composition root runs :func:`file_problems` at start, so ``serve``
and ``config check`` agree.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from dbgate.config import Config, ConfigError, load_config
from dbgate.startup_errors import diagnose_tls, explain, redact_dsn

__all__ = ["check_config_command", "connect_problems", "file_problems"]


def _dir_writable(path: Path) -> str | None:
    parent = path if path.is_dir() else path.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user"
    return None


def _pii_problems(config: Config, environ: Mapping[str, str] | None) -> list[str]:
    """What the start's PII step refuses (``PiiGate.check``): no usable key, a catalog
    that does not load. Both are reported, where the start stops at the first."""
    from dbgate.pii.catalog_load import CatalogError, load_catalog
    from dbgate.pii.keys import PiiKeyError, keyring_from_config

    problems: list[str] = []
    try:
        keyring_from_config(config.pii.keys, environ)
    except PiiKeyError as e:
        problems.append(str(e))
    try:
        load_catalog(config.pii.catalog)
    except CatalogError as e:
        problems += [f"pii.catalog: {p}" for p in e.problems]
    return problems


def file_problems(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Problems with files, keys and rules the config refers to (no network).

    ``environ`` (default ``os.environ``) is where ``DBGATE_PII_KEY`` and a key's
    ``secret_env`` are looked up, as ``dbgate serve`` would.
    """
    problems: list[str] = []
    if config.tls is not None:
        line = diagnose_tls(config.tls.cert_file, config.tls.key_file)
        if line:
            problems.append(line)
    root = config.upstream.sslrootcert
    if root is not None and root.is_file():
        try:
            ssl.create_default_context(cafile=str(root))
        except (ssl.SSLError, ValueError, OSError) as e:
            problems.append(
                f"upstream.sslrootcert {root} holds no usable CA certificate ({e}): "
                "use the PEM file of the CA that signed the server's certificate"
            )
    from dbgate.wire.scram import parse_verifier

    for i, ident in enumerate(config.identities):
        if ident.scram_verifier:
            try:
                parse_verifier(ident.scram_verifier)
            except ValueError as e:
                problems.append(
                    f"identities[{i}].scram_verifier of {ident.name!r} is malformed ({e}): "
                    "copy it from pg_authid.rolpassword (SCRAM-SHA-256$<iter>:<salt>$<key>:<key>)"
                )
    if config.policy == "enforce":
        from dbgate.policy.rules import RulesError, load_rules

        try:
            load_rules(config.rules_dir)
        except RulesError as e:
            problems += [f"rules: {p}" for p in e.problems]
        if config.pii.enabled:
            problems += _pii_problems(config, environ)
    if config.logging.file is not None:
        why = _dir_writable(config.logging.file)
        if why:
            problems.append(f"logging.file {config.logging.file}: {why}: fix logging.file")
    if config.metrics.multiprocess_dir is not None:
        why = _dir_writable(config.metrics.multiprocess_dir)
        if why:
            problems.append(f"metrics.multiprocess_dir {config.metrics.multiprocess_dir}: {why}")
    return problems


async def connect_problems(config: Config, timeout: float = 5.0) -> list[str]:
    """Try the upstream (TCP) and the state database (login and ``SELECT 1``)."""
    from dbgate.web.ops import dsn_check, tcp_check

    problems: list[str] = []
    up = config.upstream
    try:
        await asyncio.wait_for(tcp_check(up.host, up.port)(), timeout)
    except Exception as e:
        problems.append(explain(e, step="upstream", host=up.host, port=up.port))
    if config.state is not None:
        try:
            await asyncio.wait_for(dsn_check(config.state.dsn, timeout)(), timeout)
        except Exception as e:
            problems.append(explain(e, step="state", dsn=config.state.dsn))
    return problems


def _summary(path: Path, config: Config) -> str:
    up = config.upstream
    state = redact_dsn(config.state.dsn) if config.state else "none (holds are refused)"
    web = config.web.listen if config.web else "off"
    return (
        f"ok: {path}: listen {config.listen}, upstream {up.host}:{up.port}, "
        f"{len(config.identities)} identit{'y' if len(config.identities) == 1 else 'ies'}, "
        f"state {state}, web {web}, policy {config.policy}"
    )


def check_config_command(
    path: Path,
    *,
    connect: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print every problem (exit 1) or a one-line summary (exit 0)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_config(path)
    except ConfigError as e:
        problems = list(e.problems)
        config = None
    else:
        problems = file_problems(config)
        if connect:
            problems += asyncio.run(connect_problems(config))
    if problems:
        for p in problems:
            out.write(f"{p}\n")
        n = len(problems)
        err.write(f"{n} problem{'s' if n != 1 else ''} found in {path}\n")
        return 1
    assert config is not None
    out.write(_summary(path, config) + "\n")
    return 0
