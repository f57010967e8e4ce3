"""Which StartupMessage parameters a client may pass through to the server.

Every key of a StartupMessage other than ``user``, ``database``, ``options`` and
``replication`` is applied by PostgreSQL as a setting *before* the first statement,
so it never reaches the statement inspector. A client could therefore smuggle
``role``, ``session_authorization``, ``standard_conforming_strings=off`` or a
shadowing ``search_path`` past policy. We allow-list the settings drivers really send
and refuse the rest with a clear error telling the client to use SET instead.

The one exception are the agent's declarations for approvers, ``dbgate.purpose``
and ``dbgate.model`` (docs/approvals.md): custom settings the server only stores,
so they change nothing it does. They may come as startup parameters of their own
(asyncpg's ``server_settings``) or in ``options`` as ``-c dbgate.purpose=...``
(libpq, psql, psycopg), which is the only thing ``options`` may carry; dbgate
forwards them as parameters of their own and reads them
(:func:`startup_declarations`).

Two allow-listed settings are read as the server reads them: ``search_path`` is
split exactly as PostgreSQL splits it (:mod:`dbgate.identifiers`; a quoted
``"pg_catalog,x"`` is one schema) and refused when a schema comes before
``pg_catalog``; the session guards (``statement_timeout``, ``lock_timeout``,
``idle_in_transaction_session_timeout``, ``transaction_timeout``) go through the
relay's :class:`~dbgate.proxy.seams.SessionSetup`, which replaces a value above the
identity's ceiling (or 0, "no limit") with the ceiling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from dbgate.identifiers import search_path_escapes, split_identifier_list

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
        "statement_timeout",  # the session guards: judged by the SessionSetup seam
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "transaction_timeout",
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


#: What an agent may declare about itself at startup: setting name -> the key it
#: has in the approval request.
DECLARATIONS = {"dbgate.purpose": "purpose", "dbgate.model": "model"}

_OPTIONS_REFUSED = (
    "dbgate: the startup 'options' parameter is not allowed except to declare "
    "-c dbgate.purpose=... and -c dbgate.model=... (other settings would change the "
    "session unseen); use SET after connecting"
)


#: Judges one forwarded setting (name as sent, value): the value to forward, or a
#: message refusing the connection (``SessionSetup.startup_setting`` for one client).
StartupCheck = Callable[[str, str], tuple[str, str | None]]


class StartupParamError(Exception):
    """A startup parameter the gateway will not pass on; the message is for the client."""


def search_path_problem(value: str) -> str | None:
    """Why a client's startup ``search_path`` is refused, or None when it may pass.

    Split exactly as the server splits it (``SplitIdentifierString``): a quoted
    ``"pg_catalog,x"`` is one schema, not two, and ``PG_CATALOG`` is ``pg_catalog``.
    PostgreSQL searches ``pg_catalog`` first unless the path names it explicitly
    later, so a path is safe when it omits pg_catalog or nothing but ``pg_temp``
    comes before it. A value the server could not split is refused too: what it
    would do with it is not ours to guess.
    """
    schemas = split_identifier_list(value)
    if schemas is None:
        return "dbgate: the search_path is not a valid list of schema names"
    if search_path_escapes(schemas):
        return (
            "dbgate: a search_path that puts a schema before pg_catalog is not allowed "
            "(a function there could shadow a built-in)"
        )
    return None


def filter_startup_params(
    params: Mapping[str, str], check: StartupCheck | None = None
) -> dict[str, str]:
    """Return the settings to forward upstream (without user/database), or raise.

    ``check`` sees every allow-listed setting after the checks here and may replace
    its value (a session guard above the identity's ceiling becomes the ceiling) or
    refuse it.
    """
    out: dict[str, str] = {}
    from_options: dict[str, str] = {}
    for key, value in params.items():
        lk = key.lower()
        if lk in ("user", "database"):
            continue
        if lk == "options":
            from_options = declarations_in_options(value)
            continue
        if lk in DECLARATIONS:
            out[lk] = value
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
        if lk == "search_path" and (problem := search_path_problem(value)) is not None:
            raise StartupParamError(problem)
        if lk == "standard_conforming_strings" and value.lower() not in ("on", "true", "1"):
            raise StartupParamError("dbgate: standard_conforming_strings must stay on")
        if check is not None:
            value, problem = check(key, value)
            if problem is not None:
                raise StartupParamError(problem)
        out[key] = value
    for name, value in from_options.items():  # PostgreSQL applies options first
        out.setdefault(name, value)
    return out


def split_options(value: str) -> list[str]:
    """Split ``options`` into arguments as PostgreSQL does (``pg_split_opts``):
    at unescaped white space; a backslash makes the next character literal."""
    args: list[str] = []
    current: list[str] = []
    started = escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = started = True
        elif ch in " \t\n\r\f\v":
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        args.append("".join(current))
    return args


def declarations_in_options(value: str) -> dict[str, str]:
    """The ``dbgate.purpose`` / ``dbgate.model`` settings of an ``options`` value
    (``-c name=value``, ``-cname=value`` or ``--name=value``); anything else raises."""
    out: dict[str, str] = {}
    args = iter(split_options(value))
    for arg in args:
        if arg == "-c":
            setting = next(args, None)
        elif arg.startswith(("-c", "--")):
            setting = arg[2:]
        else:
            setting = None
        if setting is None or "=" not in setting:
            raise StartupParamError(_OPTIONS_REFUSED)
        name, _, val = setting.partition("=")
        name = name.replace("-", "_").lower()  # as PostgreSQL reads option names
        if name not in DECLARATIONS:
            raise StartupParamError(_OPTIONS_REFUSED)
        out[name] = val
    return out


def startup_declarations(params: Mapping[str, str]) -> dict[str, str]:
    """What the forwarded startup parameters declare: ``{"purpose": ..., "model": ...}``."""
    return {DECLARATIONS[k]: v for k, v in params.items() if k in DECLARATIONS}
