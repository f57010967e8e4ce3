"""``dbgate demo``: everything needed to see dbgate work, in one command.

What it starts, in order:

1. an :class:`~dbgate.embedded.EmbeddedPostgres` in the data directory
   (default ``./.dbgate-demo``; persistent, so the second start takes a second);
2. database ``demo`` with the Faker dataset (:mod:`dbgate.demo_data`) and the state
   database ``dbgate_state`` (approvals, migrated by dbgate);
3. the whole application (:class:`dbgate.app.App`, as ``dbgate serve`` runs it): the
   proxy with one identity ``agent`` whose random password is generated once per data
   directory and kept there, so DSNs stay the same across runs — dbgate logs in
   upstream for it as ``dbgate_agent``, a role with only the privileges the demo
   needs (:func:`dbgate.demo_data.ensure_agent_role`), never as the superuser — the
   approval service on the state database, and the approvals API on ``--web``;
4. an approver account ``approver`` (group ``dba``, which the default rules name)
   with a password kept in the data directory and a fresh API token each start;
5. the ``--info-file`` (atomically, only once everything answers), then a banner.

Ctrl-C or SIGTERM drains the proxy and stops the embedded server; exit status 0.

The info file is part of the stable contract (DESIGN.md): ``agent_dsn``,
``admin_dsn``, ``state_dsn``, ``web_url``, ``approver_user``, ``approver_password``,
``approver_token``, ``auditor_dsn`` (read-only on the audit views). It is removed at
start (a stale file would describe a server that is gone) and again at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import quote

from dbgate.config import Config, ConfigError
from dbgate.demo_data import (
    AGENT_ROLE,
    AUDITOR_LOGIN,
    DEMO_DATABASE,
    STATE_DATABASE,
    ensure_agent_role,
    ensure_auditor_login,
    ensure_database,
    ensure_demo_database,
)
from dbgate.embedded import EmbeddedPostgres, EmbeddedPostgresError

__all__ = ["AGENT_IDENTITY", "DEFAULT_DATA_DIR", "run_demo"]

log = logging.getLogger("dbgate.demo")

DEFAULT_DATA_DIR = Path(".dbgate-demo")
AGENT_IDENTITY = "agent"
AGENT_PASSWORD_FILE = "agent.password"
AGENT_UPSTREAM_PASSWORD_FILE = "agent-upstream.password"  # the dbgate_agent role's
APPROVER = "approver"
APPROVER_GROUPS = ("dba",)  # the default rule pack holds for approver group dba
APPROVER_PASSWORD_FILE = "approver.password"
AUDITOR_PASSWORD_FILE = "auditor.password"  # the state database's read-only reviewer
PII_KEY_FILE = "pii.key"  # the tokenization key: stable tokens across runs
UPSTREAM_PORT_FILE = "upstream.port"
SHUTDOWN_GRACE_SECONDS = 5.0
#: The banner's three statements (examples/agent.py runs the same three paths).
TRY_ALLOWED = "select id, full_name, email from customers where id = 42"
TRY_HELD = "select id, email from customers"
TRY_DENIED = "copy customers to program 'cat'"


class _Server(Protocol):
    """What the demo's config needs of its PostgreSQL server (an EmbeddedPostgres)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


class _Stop(Exception):
    """SIGTERM arrived while the embedded server was still starting (before the loop)."""


def run_demo(listen: str, web: str, data_dir: Path | None, info_file: Path | None) -> int:
    """Run the demo until Ctrl-C/SIGTERM. Returns the process exit status."""
    _setup_logging()
    data_dir = (data_dir or DEFAULT_DATA_DIR).expanduser().absolute()
    info_path = info_file.expanduser().absolute() if info_file is not None else None
    if info_path is not None:
        info_path.unlink(missing_ok=True)

    try:
        Config.model_validate({"listen": listen})  # reject a bad --listen before starting anything
    except ValueError as e:
        print(f"dbgate demo: --listen must be HOST:PORT, got {listen!r} ({e})", file=sys.stderr)
        return 2

    # The embedded server starts before the event loop (from the main thread, so the
    # kernel's parent-death signal covers a SIGKILLed demo). SIGTERM during that phase
    # must still clean up, hence a temporary handler that unwinds through `finally`.
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    pg = EmbeddedPostgres(data_dir, port=_stored_free_port(data_dir))
    try:
        try:
            log.info("starting embedded PostgreSQL in %s", data_dir)
            pg.start()
            (data_dir / UPSTREAM_PORT_FILE).write_text(f"{pg.port}\n")
        finally:
            signal.signal(signal.SIGTERM, previous)
        return _run_loop(pg, listen, web, data_dir, info_path)
    except (_Stop, KeyboardInterrupt):
        log.info("interrupted during start-up")
        return 0
    except EmbeddedPostgresError as e:
        print(f"dbgate demo: embedded PostgreSQL failed: {e}", file=sys.stderr)
        return 1
    finally:
        if pg.running:
            log.info("stopping embedded PostgreSQL")
        pg.stop()
        if info_path is not None:
            info_path.unlink(missing_ok=True)
        from dbgate import logs

        logs.stop_logging()


def _run_loop(
    pg: EmbeddedPostgres,
    listen: str,
    web: str,
    data_dir: Path,
    info_path: Path | None,
) -> int:
    import uvloop

    try:
        return uvloop.run(_main(pg, listen, web, data_dir, info_path))
    except asyncio.CancelledError:  # a second Ctrl-C while draining
        return 0


async def _main(
    pg: EmbeddedPostgres,
    listen: str,
    web: str,
    data_dir: Path,
    info_path: Path | None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: not waiting for sessions to drain", signal.Signals(signum).name)
            main_task.cancel()
            return
        log.info("%s received, shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    app: Any = None
    try:
        setup = asyncio.ensure_future(_prepare(pg, listen, web, data_dir))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({setup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not setup.done():
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
            return 0
        stopper.cancel()
        try:
            app, config, token = setup.result()
        except _DemoError as e:
            print(f"dbgate demo: {e}", file=sys.stderr)
            return 1
        except Exception:
            log.exception("dbgate demo: start-up failed")
            return 1

        agent_password = _agent_password(data_dir)
        dsn_host = _connectable_host(config.listen_host)
        info = {
            "agent_dsn": _dsn(
                AGENT_IDENTITY, agent_password, dsn_host, app.proxy.port, DEMO_DATABASE
            ),
            "admin_dsn": pg.dsn(DEMO_DATABASE),
            "state_dsn": pg.dsn(STATE_DATABASE),
            "auditor_dsn": _dsn(
                AUDITOR_LOGIN,
                _stored_secret(data_dir, AUDITOR_PASSWORD_FILE),
                pg.host,
                pg.port,
                STATE_DATABASE,
            ),
            "web_url": app.web_url,
            "approver_user": APPROVER,
            "approver_password": _stored_secret(data_dir, APPROVER_PASSWORD_FILE),
            "approver_token": token,
        }
        if info_path is not None:
            _write_atomically(info_path, info)
        _print_banner(info, data_dir, info_path)

        await stop.wait()
        return 0
    except asyncio.CancelledError:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if app is not None:
            log.info("draining proxy sessions")
            try:
                await asyncio.wait_for(app.stop(), SHUTDOWN_GRACE_SECONDS + 15)
            except asyncio.CancelledError:
                log.warning("shutdown interrupted")
            except Exception:
                log.exception("dbgate did not stop cleanly")
        if info_path is not None:
            info_path.unlink(missing_ok=True)


class _DemoError(Exception):
    """A start-up failure phrased for the person who ran ``dbgate demo``."""


async def _prepare(
    pg: EmbeddedPostgres, listen: str, web: str, data_dir: Path
) -> tuple[Any, Config, str]:
    """Databases, config, the started application and a fresh approver token."""
    counts = await ensure_demo_database(pg)
    log.info(
        "database %s ready: %s",
        DEMO_DATABASE,
        ", ".join(f"{n} {t}" for t, n in counts.items()),
    )
    if await ensure_database(pg.dsn(), STATE_DATABASE):
        log.info("created state database %s", STATE_DATABASE)
    upstream_password = _stored_secret(data_dir, AGENT_UPSTREAM_PASSWORD_FILE)
    await ensure_agent_role(pg.dsn(DEMO_DATABASE), upstream_password)
    log.info("agent's upstream role %s ready", AGENT_ROLE)

    try:
        config = build_config(
            pg,
            listen,
            _agent_password(data_dir),
            upstream_password,
            state_dsn=pg.dsn(STATE_DATABASE),
            web=web,
            pii_key_file=_pii_key_file(data_dir),
        )
    except (ConfigError, ValueError) as e:
        raise _DemoError(f"invalid demo configuration: {e}") from e

    from dbgate.app import App, StartupError

    # The demo runs the real thing (the shipped default pack, approvals), not a relay.
    app = App(config)
    try:
        await app.start()
    except StartupError as e:
        raise _DemoError(str(e)) from e
    assert app.proxy is not None and app.approvals is not None
    log.info("proxy listening on %s:%s", config.listen_host, app.proxy.port)
    await ensure_auditor_login(
        pg.dsn(STATE_DATABASE), _stored_secret(data_dir, AUDITOR_PASSWORD_FILE)
    )
    token = await _approver_token(app.approvals, _stored_secret(data_dir, APPROVER_PASSWORD_FILE))
    return app, config, token


async def _approver_token(service: Any, password: str) -> str:
    """The demo approver exists (same password across runs) and gets a fresh token;
    the tokens of earlier runs are revoked."""
    from dbgate.approvals.errors import Conflict

    with contextlib.suppress(Conflict):
        await service.accounts.add(APPROVER, APPROVER_GROUPS, password)
    await service.accounts.revoke_all(APPROVER)
    _, token = await service.accounts.issue_token(APPROVER, label="dbgate demo")
    return str(token)


def build_config(
    pg: _Server,
    listen: str,
    agent_password: str,
    upstream_password: str,
    *,
    upstream_role: str = AGENT_ROLE,
    state_dsn: str | None = None,
    web: str | None = None,
    pii_key_file: Path | None = None,
) -> Config:
    """The demo's in-memory config: one agent identity, the embedded server upstream.

    The agent may only open the ``demo`` database: the state database holds the
    audit trail, which the audited party must not be able to reach. Upstream it is
    ``upstream_role`` (``dbgate_agent``) with ``upstream_password`` (see
    :func:`dbgate.demo_data.ensure_agent_role`); the proxy holds no superuser
    credential at all, so the upstream section's default login is that role too.
    """
    return Config.model_validate(
        {
            "listen": listen,
            "upstream": {
                "host": pg.host,
                "port": pg.port,
                "user": upstream_role,
                "password": upstream_password,
                "sslmode": "disable",
            },
            "identities": [
                {
                    "name": AGENT_IDENTITY,
                    "password": agent_password,
                    "upstream_user": upstream_role,
                    "upstream_password": upstream_password,
                    "databases": [DEMO_DATABASE],
                }
            ],
            "shutdown_grace_seconds": SHUTDOWN_GRACE_SECONDS,
            "log_level": "info",
            **({"state": {"dsn": state_dsn}} if state_dsn else {}),
            **({"web": {"listen": web}} if web else {}),
            "pii": (
                {"keys": [{"id": "demo", "secret_file": str(pii_key_file)}]}
                if pii_key_file is not None
                else {"enabled": False}
            ),
        }
    )


def _pii_key_file(data_dir: Path) -> Path:
    """The demo's tokenization key, made once per data directory (0600), so an agent
    sees the same token for the same value across runs."""
    path = data_dir / PII_KEY_FILE
    if not path.exists():
        from dbgate.pii.keys import generate_key

        secret, _ = generate_key()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        os.replace(tmp, path)
    return path


def _agent_password(data_dir: Path) -> str:
    """The agent's password, generated once per data directory (stable DSNs across runs)."""
    return _stored_secret(data_dir, AGENT_PASSWORD_FILE)


def _stored_secret(data_dir: Path, name: str) -> str:
    """A random password kept in ``data_dir/name`` (mode 0600), generated on first use."""
    path = data_dir / name
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    password = secrets.token_urlsafe(18)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.replace(tmp, path)
    return password


def _stored_free_port(data_dir: Path) -> int | None:
    """The upstream port of the previous run if it is free now (stable admin/state DSNs)."""
    try:
        port = int((data_dir / UPSTREAM_PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    with socket.socket() as s:
        # Like PostgreSQL itself: a port whose old connections linger in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _connectable_host(host: str) -> str:
    """A wildcard listen address is not something a client can dial."""
    if host in ("", "0.0.0.0", "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _dsn(user: str, password: str, host: str, port: int, dbname: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{shown}:{port}/{dbname}"


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write then rename: a reader polling for the file never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _print_banner(info: dict[str, str], data_dir: Path, info_path: Path | None) -> None:
    agent, admin, state = info["agent_dsn"], info["admin_dsn"], info["state_dsn"]
    lines = [
        "",
        "dbgate demo is ready.",
        "",
        "  As the agent, through dbgate:",
        f"    psql '{agent}'",
        "",
        "  Three things to paste:",
        f"    psql '{agent}' -c '{TRY_ALLOWED}'   # allowed, PII tokenized",
        f"    psql '{agent}' -c '{TRY_HELD}'   # held: approve it in the web page",
        f"    psql '{agent}' -c \"{TRY_DENIED}\"   # denied",
        "",
        "  The same three paths as an agent sees them (asyncpg):",
        f"    .venv/bin/python examples/agent.py --info {info_path or 'INFO_FILE'}",
        "",
        "  Approve or reject held statements (as approver, group dba):",
        f"    web / API: {info['web_url']}   user {info['approver_user']}"
        f"   password {info['approver_password']}",
        f"    curl -H 'Authorization: Bearer {info['approver_token']}' "
        f"{info['web_url']}/api/approvals?status=pending",
        "",
        "  Straight to PostgreSQL, as the superuser (bypasses dbgate):",
        f"    psql '{admin}'",
        "",
        "  The audit trail, as a reviewer (read-only):",
        f"    psql '{info['auditor_dsn']}' -c 'select at, identity, event, decision,"
        " statement from dbgate.audit_log order by at desc limit 20'",
        "",
        "  State database (approvals and audit), as its owner:",
        f"    psql '{state}'",
        "",
        f"  Data directory: {data_dir}",
    ]
    if info_path is not None:
        lines.append(f"  Connection info: {info_path}")
    lines += ["", "Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _setup_logging() -> None:
    """The demo's operator log: human text on a terminal (as ``dbgate serve``'s
    ``logging.format: auto``), and this process's metrics."""
    from dbgate import logs, metrics

    logs.setup_logging("info", format="auto")
    metrics.init()
