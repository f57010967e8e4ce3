"""Which StartupMessage parameters a client may pass through to the server.

Every key of a StartupMessage other than ``user``, ``database``, ``options`` and
``replication`` is applied by PostgreSQL as a setting *before* the first statement,
so it never reaches the statement inspector. A client could therefore smuggle
``role``, ``session_authorization``, ``standard_conforming_strings=off`` or a
shadowing ``search_path`` past policy. We allow-list the settings drivers really send
and refuse the rest with a clear error telling the client to use SET instead.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Settings drivers send at startup that do not affect what the proxy can see or do.
HARMLESS = frozenset(
    {
        "application_name",
        "client_min_messages",  # only filters which notices the client gets
        "fallback_application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "extra_float_digits",
        "intervalstyle",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "bytea_output",
        "jit",
        "geqo",
        "work_mem",
        "enable_seqscan",
        "search_path",  # checked below
        "standard_conforming_strings",  # checked below
    }
)


class StartupParamError(Exception):
    """A startup parameter the gateway will not pass on; the message is for the client."""


def check_search_path(value: str) -> bool:
    """True when ``value`` cannot shadow built-in functions.

    PostgreSQL searches ``pg_catalog`` first unless the path names it explicitly later,
    so a path is safe when it omits pg_catalog or lists it first.
    """
    parts = [p.strip().strip('"').lower() for p in value.split(",") if p.strip()]
    if "pg_catalog" not in parts:
        return True
    return parts[0] == "pg_catalog"


def filter_startup_params(params: Mapping[str, str]) -> dict[str, str]:
    """Return the settings to forward upstream (without user/database), or raise."""
    out: dict[str, str] = {}
    for key, value in params.items():
        lk = key.lower()
        if lk in ("user", "database"):
            continue
        if lk == "options":
            if value.strip():
                raise StartupParamError(
                    "dbgate: the startup 'options' parameter is not allowed "
                    "(it can change settings unseen); use SET after connecting"
                )
            continue
        if lk == "replication":
            if value.lower() not in ("false", "off", "no", "0"):
                raise StartupParamError("dbgate: replication connections are not allowed")
            continue
        if lk not in HARMLESS:
            raise StartupParamError(
                f"dbgate: startup parameter {key!r} is not allowed; "
                "use SET after connecting so the statement can be inspected"
            )
        if lk == "search_path" and not check_search_path(value):
            raise StartupParamError(
                "dbgate: a search_path that puts a schema before pg_catalog is not allowed"
            )
        if lk == "standard_conforming_strings" and value.lower() not in ("on", "true", "1"):
            raise StartupParamError("dbgate: standard_conforming_strings must stay on")
        out[key] = value
    return out
