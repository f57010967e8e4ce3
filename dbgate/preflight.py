"""Least privilege upstream: check, before serving, that no agent reaches PostgreSQL as a
role that could undo dbgate.

dbgate decides which statements reach the server; the role it logs in as decides what
a statement that gets through can do. Three role attributes turn one misclassified
statement into control of the server or of all its data:

* **superuser** — no permission check and no row-level security applies; server
  files, programs and every role are within reach;
* **BYPASSRLS** — row-level security never applies;
* **CREATEROLE** — can create roles and change other roles' memberships and passwords.

Attributes are not inherited through role membership, but ``SET ROLE`` gains them, so
a role that may ``SET ROLE`` to a privileged role (directly or through a chain of
memberships) is privileged too. A per-role default ``role`` setting makes a session
start as another role; the check therefore also looks at ``current_user``.

The check logs in upstream exactly as dbgate will for each identity — its own
``upstream_user``/``upstream_password``, else ``upstream.user``/``upstream.password``
— because that is the only way to ask about the role dbgate actually uses with the
credentials it actually holds. A role it cannot log in as cannot be vetted, and is
reported too (fail closed).

``dbgate serve`` refuses to start while :func:`privileged_upstream_roles` reports
anything, unless ``allow_privileged_upstream: true``; then each problem is logged as
a warning at every start.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TextIO

import asyncpg

from dbgate.config import Config, IdentityConfig, UpstreamConfig
from dbgate.proxy.upstream import asyncpg_ssl

__all__ = [
    "UpstreamLogin",
    "check_upstream_privileges",
    "privileged_upstream_roles",
    "upstream_login",
]

log = logging.getLogger("dbgate.preflight")

# Roles whose attributes make them privileged, among those the logged-in role is or
# may SET ROLE to. ``$1`` is the pg_has_role mode: 'SET' (PostgreSQL 16 and later,
# where a membership may be granted WITH SET FALSE) or 'MEMBER' (before 16, where
# every membership allows SET ROLE).
# ``via`` lists the logged-in role's direct memberships that lead to the privileged one:
# the grants to revoke.
_PRIVILEGED_REACHABLE = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls, r.rolcreaterole,
       r.rolname = session_user AS is_self,
       ARRAY(SELECT DISTINCT g.rolname
             FROM pg_catalog.pg_auth_members AS m
             JOIN pg_catalog.pg_roles AS g ON g.oid = m.roleid
             JOIN pg_catalog.pg_roles AS s ON s.oid = m.member
             WHERE s.rolname = session_user
               AND (g.oid = r.oid OR pg_catalog.pg_has_role(g.oid, r.oid, $1))
             ORDER BY g.rolname) AS via
FROM pg_catalog.pg_roles AS r
WHERE (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole)
  AND (r.rolname = current_user OR pg_catalog.pg_has_role(session_user, r.oid, $1))
ORDER BY r.rolname <> session_user, r.rolname
"""

_FIX = (
    "give the identity its own role with NOSUPERUSER NOBYPASSRLS NOCREATEROLE "
    "(identities[].upstream_user and upstream_password), or set "
    "allow_privileged_upstream: true to accept the risk"
)


@dataclass(frozen=True)
class UpstreamLogin:
    """The role and password dbgate logs in upstream with for one identity."""

    user: str
    password: str | None


def upstream_login(config: Config, identity: IdentityConfig) -> UpstreamLogin:
    """The identity's own upstream credentials, else the upstream section's."""
    return UpstreamLogin(
        user=identity.upstream_user or config.upstream.user,
        password=identity.upstream_password or config.upstream.password,
    )


@dataclass(frozen=True)
class _Privileged:
    role: str
    attributes: tuple[str, ...]
    is_self: bool
    via: tuple[str, ...]  # direct memberships of the login role that lead to ``role``


async def privileged_upstream_roles(config: Config) -> list[str]:
    """One message per problem: an identity whose upstream role is privileged (itself or
    through a role it may SET ROLE to), or whose role could not be checked.

    Each message names the identity, the role and what is wrong, and says how to fix
    it. An empty list means every identity reaches PostgreSQL as a plain role.
    """
    problems: list[str] = []
    checked: dict[tuple[UpstreamLogin, tuple[str, ...]], list[_Privileged] | str] = {}
    for identity in config.identities:
        login = upstream_login(config, identity)
        databases = _databases_to_try(config, identity)
        key = (login, databases)
        if key not in checked:
            checked[key] = await _check_login(config.upstream, login, databases)
        found = checked[key]
        who = f"identity {identity.name!r} connects upstream as role {login.user!r}"
        if isinstance(found, str):
            problems.append(
                f"{who}, whose privileges could not be checked ({found}); dbgate does not "
                "start with an upstream role it cannot vet: fix the upstream settings or "
                "credentials, or set allow_privileged_upstream: true to skip this"
            )
            continue
        for privileged in found:
            what = _describe(privileged.attributes)
            if privileged.is_self:
                problems.append(f"{who}, which {what}: {_FIX}")
            else:
                revoke = "; ".join(
                    f"REVOKE {_ident(group)} FROM {_ident(login.user)}" for group in privileged.via
                )
                problems.append(
                    f"{who}, which can SET ROLE to {privileged.role!r}, which {what}: "
                    f"revoke the membership that leads there ({revoke or 'see pg_auth_members'})"
                    f" or {_FIX}"
                )
    return problems


async def check_upstream_privileges(config: Config, *, stderr: TextIO | None = None) -> bool:
    """Run the check for ``dbgate serve``: True when serving may go ahead.

    Problems are printed one per line on ``stderr`` and False is returned, unless the
    config sets ``allow_privileged_upstream``; then each is logged as a warning.
    """
    problems = await privileged_upstream_roles(config)
    if not problems:
        return True
    if config.allow_privileged_upstream:
        for problem in problems:
            log.warning("allow_privileged_upstream is set: %s", problem)
        return True
    out = stderr if stderr is not None else sys.stderr
    for problem in problems:
        print(f"dbgate: {problem}", file=out)
    return False


def _databases_to_try(config: Config, identity: IdentityConfig) -> tuple[str, ...]:
    """Where to log in: role attributes are cluster-wide, any database the role may
    connect to will do. The configured upstream database when there is one; else the
    identity's literal databases, then the ones every cluster has."""
    if config.upstream.database:
        return (config.upstream.database,)
    literal = [d for d in identity.databases if not any(c in d for c in "*?[")]
    return tuple(dict.fromkeys([*literal, "postgres", "template1"]))


async def _check_login(
    upstream: UpstreamConfig, login: UpstreamLogin, databases: tuple[str, ...]
) -> list[_Privileged] | str:
    """The privileged roles ``login`` is or may become, or why that is unknown."""
    conn: asyncpg.Connection | None = None
    why = "no database to log in to"
    for database in databases:
        try:
            conn = await asyncpg.connect(
                host=upstream.host,
                port=upstream.port,
                user=login.user,
                password=login.password,
                database=database,
                ssl=asyncpg_ssl(upstream),
                timeout=upstream.connect_timeout,
                server_settings={"application_name": "dbgate preflight"},
            )
            break
        except (asyncpg.InvalidCatalogNameError, asyncpg.InsufficientPrivilegeError) as e:
            why = f"cannot log in to database {database!r}: {e}"
            continue  # no such database, or no CONNECT on it: try the next one
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return f"cannot log in: {e or type(e).__name__}"
    if conn is None:
        return why
    try:
        mode = "SET" if conn.get_server_version().major >= 16 else "MEMBER"
        rows = await conn.fetch(_PRIVILEGED_REACHABLE, mode)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return f"cannot read pg_roles: {e}"
    finally:
        await conn.close()
    if any(row["is_self"] and row["rolsuper"] for row in rows):
        # A superuser may SET ROLE to every role; naming them all would bury the point.
        rows = [row for row in rows if row["is_self"]]
    return [
        _Privileged(
            role=row["rolname"],
            attributes=tuple(
                name
                for name, present in (
                    ("superuser", row["rolsuper"]),
                    ("BYPASSRLS", row["rolbypassrls"]),
                    ("CREATEROLE", row["rolcreaterole"]),
                )
                if present
            ),
            is_self=row["is_self"],
            via=tuple(row["via"]),
        )
        for row in rows
    ]


def _describe(attributes: tuple[str, ...]) -> str:
    """'is a superuser', 'has BYPASSRLS', 'can create roles (CREATEROLE)', joined."""
    words = {
        "superuser": "is a superuser",
        "BYPASSRLS": "has BYPASSRLS (ignores row-level security)",
        "CREATEROLE": "can create roles (CREATEROLE)",
    }
    parts = [words[a] for a in attributes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
