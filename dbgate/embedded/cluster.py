"""Creating and configuring a cluster: initdb, TLS files, the superuser's password.

``initdb`` runs once per data directory, with SCRAM for TCP and trust for the
private Unix socket (handy for administration, unreachable for anyone else).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dbgate.embedded.errors import EmbeddedPostgresError
from dbgate.embedded.os_user import ServerUser, chown_tree, run_as
from dbgate.embedded.process import server_env

SUPERUSER = "postgres"


def initdb(bin_dir: Path, pgdata: Path, password: str, user: ServerUser | None) -> None:
    """Create the cluster in a private scratch dir under /tmp, then move it to ``pgdata``.

    Why not in place: as root the server user reaches the data directory only through
    ancestors we made traversable, and someone may take that back meanwhile —
    pytest resets ``/tmp/pytest-of-root`` to 0700 whenever a session starts,
    which made a concurrent initdb fail with "Permission denied". A cluster
    directory is relocatable, and the running server only needs the path while
    it starts (it then works relative to its data directory).
    """
    if pgdata.exists():
        # An earlier initdb died half-way (no PG_VERSION): start over.
        shutil.rmtree(pgdata)
    scratch = Path(tempfile.mkdtemp(prefix="dbgate-initdb-"))
    try:
        scratch.chmod(0o711)
        target = scratch / "pgdata"
        target.mkdir(mode=0o700)
        pwfile = scratch / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if user is not None:
            user.chown(target)
            user.chown(pwfile)
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(target),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            cwd="/",
            env=server_env(),
            timeout=300,
            check=False,
            **run_as(user),  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed (exit {result.returncode}) for {pgdata}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        shutil.move(str(target), str(pgdata))
        if user is not None and pgdata.stat().st_uid != user.uid:
            chown_tree(pgdata, user)  # copied across filesystems
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def install_tls(pgdata: Path, cert: Path, key: Path, user: ServerUser | None) -> dict[str, str]:
    """Copy the certificate and key into the cluster (the key 0600, owned by the
    server's user, or PostgreSQL refuses it); return the settings that turn SSL on."""
    for src, name in ((cert, "server.crt"), (key, "server.key")):
        target = pgdata / name
        shutil.copyfile(src, target)
        target.chmod(0o600)
        if user is not None:
            user.chown(target)
    return {
        "ssl": "on",
        "ssl_cert_file": str(pgdata / "server.crt"),
        "ssl_key_file": str(pgdata / "server.key"),
    }


def set_superuser_password(bin_dir: Path, socket_dir: Path, port: int, password: str) -> None:
    """``ALTER ROLE postgres PASSWORD …`` over the trusted Unix socket."""
    literal = password.replace("'", "''")
    result = subprocess.run(
        [
            str(bin_dir / "psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(socket_dir),
            "-p",
            str(port),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-c",
            f"ALTER ROLE {SUPERUSER} PASSWORD '{literal}'",
        ],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise EmbeddedPostgresError(f"could not set the superuser password: {result.stderr}")
