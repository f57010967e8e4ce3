"""Start-up failures as one line that names the problem and the fix.

``dbgate serve`` and ``dbgate demo`` start in steps (config, rules, TLS, state
database, upstream, listeners). When a step fails, a traceback helps nobody who
runs dbgate; a line like

    dbgate: cannot listen on 127.0.0.1:6432 (listen): the address is already in use;
    stop the process that holds it (ss -ltnp 'sport = :6432') or choose another port

does. The composition root wraps each step::

    with startup_step("listen", address=config.listen):
        await server.start()

and, around the whole start, prints ``str(error)`` of the :class:`StartupError` it
gets and exits non-zero. :func:`explain` turns any exception into that line, using
the step to name the config key to fix. Messages never include passwords: DSNs are
shown without them.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["STEPS", "StartupError", "diagnose_tls", "explain", "redact_dsn", "startup_step"]

#: Steps :func:`explain` knows (anything else gets a generic line).
STEPS = ("config", "rules", "tls", "logging", "listen", "web", "upstream", "state")


class StartupError(Exception):
    """A start-up step failed; ``str()`` is the line to print (without ``dbgate:``)."""


def redact_dsn(dsn: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user@host/db``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))


def _dsn_target(dsn: str) -> str:
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        db = parts.path.lstrip("/") or (parts.username or "")
    except ValueError:
        return "the state database"
    return f"{host}:{port}/{db}"


@contextlib.contextmanager
def startup_step(step: str, **context: Any) -> Iterator[None]:
    """Run a start-up step; any failure leaves as a :class:`StartupError` with one line."""
    try:
        yield
    except StartupError:
        raise
    except Exception as e:
        raise StartupError(explain(e, step=step, **context)) from e


def diagnose_tls(cert_file: Path, key_file: Path) -> str | None:
    """What is wrong with a certificate/key pair, as one line; None when it loads."""
    for key, path in (("tls.cert_file", cert_file), ("tls.key_file", key_file)):
        if not path.exists():
            return f"{key} {path} does not exist: create it or fix {key}"
        if not path.is_file():
            return f"{key} {path} is not a file: point {key} at a PEM file"
        try:
            with path.open("rb"):
                pass
        except PermissionError:
            return (
                f"{key} {path} is not readable by this user: "
                "make it readable by the user dbgate runs as (chmod/chown)"
            )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as e:
        if getattr(e, "reason", None) == "KEY_VALUES_MISMATCH":
            return (
                f"tls.key_file {key_file} is not the key of tls.cert_file {cert_file}: "
                "use the private key the certificate was issued for"
            )
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert_file))
        except (ssl.SSLError, ValueError):
            return (
                f"tls.cert_file {cert_file} is not a PEM certificate: "
                "use a file that starts with -----BEGIN CERTIFICATE-----"
            )
        return (
            f"tls.key_file {key_file} is not a usable private key (PEM, unencrypted): "
            "use a file that starts with -----BEGIN PRIVATE KEY----- "
            "(encrypted keys are not supported)"
        )
    return None


def _listen_line(exc: OSError | socket.gaierror, what: str, address: str, key: str) -> str:
    port = address.rsplit(":", 1)[-1] if ":" in address else address
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    head = f"cannot listen on {address} ({what}, {key})"
    code = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror):
        return f"{head}: cannot resolve {host!r}: use an IP address or a name this host resolves"
    if code == errno.EADDRINUSE:
        return (
            f"{head}: the address is already in use; stop the process that holds it "
            f"(ss -ltnp 'sport = :{port}') or choose another port"
        )
    if code == errno.EACCES:
        return (
            f"{head}: permission denied; ports below 1024 need root or "
            "CAP_NET_BIND_SERVICE: use a port from 1024 up or grant the capability"
        )
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{head}: no network interface of this host has address {host}; "
            "use 127.0.0.1, 0.0.0.0 or one of this host's addresses"
        )
    return f"{head}: {exc.strerror or exc}"


def _connect_line(exc: BaseException, target: str, key: str, role: str | None) -> str | None:
    """Lines shared by the upstream and the state database; None when not a connect error."""
    state = getattr(exc, "sqlstate", None)  # asyncpg's errors and the server's answer
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host of {target}: fix {key}"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno is None and "refused" in str(exc).lower()
    ):
        return f"{target} refuses connections: start PostgreSQL there or fix {key} (host and port)"
    if isinstance(exc, TimeoutError):
        return (
            f"{target} did not answer in time: check that the host is up and that no "
            f"firewall drops the port, or fix {key}"
        )
    if state in ("28P01", "28000"):
        who = f" for role {role}" if role else ""
        return f"{target} refused the login{who} ({exc}): fix the user name or password in {key}"
    if state == "3D000":
        return f"{target}: {exc}: create the database (CREATE DATABASE) or fix {key}"
    if state == "57P03":
        return f"{target} is starting up or shutting down ({exc}): start dbgate once it is up"
    if state == "53300":
        return f"{target} has no free connection slots ({exc}): raise max_connections there"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS to {target} failed ({exc}): fix the server's certificate or the TLS settings"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{target} is unreachable ({exc.strerror}): check routing or fix {key}"
    if isinstance(exc, FileNotFoundError):
        return f"{target}: no server socket there ({exc.strerror}): fix {key}"
    return None


class _ServerSaid(Exception):
    """The upstream's own ErrorResponse during start-up, with its SQLSTATE."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _unwrap_upstream(exc: BaseException) -> BaseException:
    """dbgate's UpstreamError wraps the socket error, or carries the server's answer."""
    if type(exc).__name__ != "UpstreamError":
        return exc
    body = getattr(exc, "error_body", None)
    if body:
        from dbgate.wire.messages import parse_error_fields

        try:
            fields = parse_error_fields(body)
        except Exception:
            return exc
        return _ServerSaid(fields.get("C", ""), fields.get("M", str(exc)))
    return exc.__cause__ or exc


def explain(exc: BaseException, step: str | None = None, **context: Any) -> str:
    """One line for a failed start-up ``step`` (see :data:`STEPS`).

    Context by step: ``listen``/``web``: ``address`` ("HOST:PORT"); ``tls``:
    ``cert_file``, ``key_file``; ``upstream``: ``host``, ``port``, ``user``;
    ``state``: ``dsn`` (and ``what``/``key`` to name another database and the flag
    or key that sets it). Without them the line is less specific, never wrong.
    """
    from dbgate.config import ConfigError

    if isinstance(exc, StartupError):
        return str(exc)
    if isinstance(exc, ConfigError):
        if len(exc.problems) == 1:
            return f"{exc.problems[0]} (dbgate config check -c FILE lists every problem)"
        return "\n".join(exc.problems)
    if step == "rules":
        problems = getattr(exc, "problems", None)
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return f"the rules do not load: {first}{more}; run dbgate rules check"
        return f"the rules do not load ({exc}); run dbgate rules check"
    if step in ("listen", "web") and isinstance(exc, OSError):
        what = "the proxy port" if step == "listen" else "the web port"
        key = "listen / --listen" if step == "listen" else "web.listen"
        return _listen_line(exc, what, str(context.get("address", "?")), key)
    if step == "tls":
        cert, key = context.get("cert_file"), context.get("key_file")
        if cert is not None and key is not None:
            line = diagnose_tls(Path(cert), Path(key))
            if line is not None:
                return line
        return f"TLS set-up failed ({exc}): check tls.cert_file and tls.key_file"
    if step == "logging" and isinstance(exc, OSError):
        where = getattr(exc, "filename", None) or context.get("file", "the log file")
        return (
            f"cannot open the log file {where} ({exc.strerror}): fix logging.file or its directory"
        )
    if step == "upstream":
        exc = _unwrap_upstream(exc)
        host, port = context.get("host"), context.get("port")
        target = f"the upstream PostgreSQL {host}:{port}" if host else "the upstream PostgreSQL"
        line = _connect_line(exc, target, "upstream.host / upstream.port", context.get("user"))
        if line is not None:
            if "refused the login" in line:
                line = line.replace(
                    "upstream.host / upstream.port",
                    "upstream.user/password or identities[].upstream_user/upstream_password",
                )
            return line
        return f"cannot reach {target} ({type(exc).__name__}: {exc}): fix upstream.*"
    if step == "state":
        dsn = context.get("dsn")
        what = context.get("what", "the state database")
        key = context.get("key", "state.dsn")
        target = f"{what} {_dsn_target(dsn)}" if dsn else what
        line = _connect_line(exc, target, key, None)
        if line is not None:
            return line
        return f"cannot use {target} ({type(exc).__name__}: {exc}): fix {key}"
    if isinstance(exc, OSError) and step is None and exc.errno == errno.EADDRINUSE:
        return _listen_line(exc, "a port", str(context.get("address", "?")), "listen")
    where = f" ({step})" if step else ""
    return f"start-up failed{where}: {type(exc).__name__}: {exc}"
