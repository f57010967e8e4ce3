"""Settings a client sends in its StartupMessage, read as the server will read them.

Startup parameters become settings before the first statement, so they never reach
the classifier; the gate asks this module about each one it would forward. Two kinds
need the server's own reading:

* ``search_path`` arrives as one string, which the server splits with
  ``SplitIdentifierString`` (:func:`~dbgate.policy.catalog_settings.split_identifier_list`):
  ``'"pg_catalog,x", public, pg_catalog'`` is three schemas, the first named
  ``pg_catalog,x``, and puts ``public`` before ``pg_catalog`` — a built-in could be
  shadowed. A value the server could not split is refused too (we cannot tell what
  it would do).
* the session guards (``statement_timeout``, ``lock_timeout``,
  ``idle_in_transaction_session_timeout``, ``transaction_timeout``), read with
  :func:`~dbgate.policy.catalog_settings.parse_time_ms`: a value at or below the
  identity's ceiling is forwarded; 0 ("no limit") or a value above it is replaced by
  the ceiling, which dbgate applies anyway; a value the server would refuse is
  refused.

:class:`StartupGuards` answers the relay's two questions at session start (its
``SessionSetup`` seam) from a :class:`~dbgate.policy.rules.RuleSet`: which guards
to send in the upstream StartupMessage, and what each client startup parameter
becomes. It takes any object with the arriving client's ``identity``, ``groups``,
``application_name`` and ``client_addr`` (the proxy's ``Arrival``), so neither
package imports the other.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dbgate.policy.catalog_settings import parse_time_ms, search_path_escapes, split_identifier_list
from dbgate.policy.model import GUARD_SETTINGS, Identity
from dbgate.policy.session_guards import SessionGuards

if TYPE_CHECKING:
    from dbgate.policy.rules import RuleSet

__all__ = ["StartupGuards", "StartupSetting", "startup_setting"]


@dataclass(frozen=True, slots=True)
class StartupSetting:
    """What to do with one startup parameter: forward ``value`` (possibly the
    identity's ceiling instead of what the client sent), or refuse the connection
    with ``problem``, a message for the client."""

    value: str
    problem: str | None = None


def startup_setting(name: str, value: str, guards: SessionGuards) -> StartupSetting:
    """Judge one startup parameter (name as sent; compared case-insensitively)."""
    key = name.lower()
    if key == "search_path":
        schemas = split_identifier_list(value)
        if schemas is None:
            return StartupSetting(
                value, "dbgate: the search_path is not a valid list of schema names"
            )
        if search_path_escapes(schemas):
            return StartupSetting(
                value,
                "dbgate: a search_path that puts a schema before pg_catalog is not allowed "
                "(a function there could shadow a built-in)",
            )
        return StartupSetting(value)
    if key in GUARD_SETTINGS:
        ms = parse_time_ms(value)
        if ms is None:
            return StartupSetting(value, f"dbgate: {key} has a value PostgreSQL would not accept")
        ceiling = guards.ceiling_ms(key)
        if ceiling is not None and (ms == 0 or ms > ceiling):
            return StartupSetting(str(ceiling))
        return StartupSetting(value)
    return StartupSetting(value)


class Arriving(Protocol):
    """The arriving client, as the relay describes it."""

    @property
    def identity(self) -> str: ...
    @property
    def groups(self) -> Set[str]: ...
    @property
    def application_name(self) -> str: ...
    @property
    def client_addr(self) -> str: ...


class StartupGuards:
    """The session guards at session start, from a rule pack (the relay's
    ``SessionSetup``)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules

    def guards(self, arrival: Arriving) -> SessionGuards:
        identity = Identity(
            arrival.identity,
            arrival.application_name,
            arrival.client_addr,
            frozenset(arrival.groups),
        )
        return self.rules.session_guards(identity)

    def upstream_settings(self, arrival: Arriving) -> dict[str, str]:
        """The identity's ceilings, ``{setting: milliseconds}``."""
        return self.guards(arrival).settings()

    def startup_setting(self, arrival: Arriving, name: str, value: str) -> tuple[str, str | None]:
        """:func:`startup_setting` for this client: (value to forward, problem)."""
        judged = startup_setting(name, value, self.guards(arrival))
        return judged.value, judged.problem
