"""The settings dbgate adds to an upstream StartupMessage, and which the server knows.

dbgate starts every upstream session with the settings its
:class:`~dbgate.proxy.seams.SessionSetup` names (the identity's session guards) as
StartupMessage parameters: so they are the session's *reset* values — ``RESET``,
``RESET ALL``, ``DISCARD ALL`` and ``SET x TO DEFAULT`` come back to them — and the
client never sees them except through ``SHOW``. A setting the client's own startup
parameters name (already judged by the seam) is the client's to set.

A server refuses the whole connection (FATAL 42704) for a setting it does not know,
and some guards are newer than the servers dbgate supports (``transaction_timeout``
is PostgreSQL 17). :class:`UpstreamSettings` therefore learns the server's major
version from the ``server_version`` each session reports and leaves out what that
version lacks. Until it knows (the first session of the process, or after the
server changed under it) it sends everything, and when the server refuses with
42704 while such a setting was sent, the caller connects once more without the
ones the refusal names (all of them, if it names none).
Nothing is lost by leaving them out: a server without the setting has no such
limit to apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from dbgate.wire.codec import parse_error_fields, parse_parameter_status
from dbgate.wire.errors import ProtocolError
from dbgate.wire.sqlstate import UNDEFINED_OBJECT

__all__ = ["SINCE", "UpstreamSettings", "merge_settings"]

#: Settings dbgate may add that not every supported server knows: name -> the first
#: major version that has it.
SINCE: Mapping[str, int] = {"transaction_timeout": 17}

_MAJOR = re.compile(r"\s*(\d+)")


def merge_settings(client: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    """The client's forwarded parameters plus the ``added`` settings the client does
    not name itself (setting names compare case-insensitively, as the server's do)."""
    named = {k.lower() for k in client}
    out = dict(client)
    for name, value in added.items():
        if name.lower() not in named:
            out[name] = value
    return out


def server_major(parameter_status: Iterable[bytes]) -> int | None:
    """The major version in a session's ParameterStatus bodies (``server_version``:
    "18.1", "16.4 (Debian 16.4-1)", "9.6.24"), or None when none says."""
    for body in parameter_status:
        name, value = parse_parameter_status(body)
        if name == "server_version":
            m = _MAJOR.match(value)
            return int(m.group(1)) if m else None
    return None


class UpstreamSettings:
    """What one upstream server knows of the settings dbgate adds (one per listener)."""

    def __init__(self, since: Mapping[str, int] = SINCE) -> None:
        self.since = dict(since)
        #: The server's major version as the last session reported it.
        self.major: int | None = None

    def known(self, added: Mapping[str, str]) -> dict[str, str]:
        """``added`` without the settings the server's version is known to lack."""
        major = self.major
        if major is None:
            return dict(added)
        return {k: v for k, v in added.items() if self.since.get(k.lower(), 0) <= major}

    def retry_without(self, sent: Mapping[str, str], error_body: bytes | None) -> set[str]:
        """When the server refused a connection that carried ``sent``: the names of
        the version-dependent settings in it to leave out of one more try — empty
        when the refusal was not "unrecognized configuration parameter" (42704) or
        no such setting was sent. The message may be translated, but it quotes the
        setting's name as it is: the ones it names go; if it names none, all go."""
        if error_body is None:
            return set()
        try:
            fields = parse_error_fields(error_body)
        except ProtocolError:
            return set()
        if fields.get("C") != UNDEFINED_OBJECT:
            return set()
        candidates = {k for k in sent if k.lower() in self.since}
        message = fields.get("M", "").lower()
        named = {
            k for k in candidates if re.search(rf"(?<!\w){re.escape(k.lower())}(?!\w)", message)
        }
        return named or candidates

    def learn(self, parameter_status: Iterable[bytes]) -> None:
        """Remember the version a new session reported (a server can be upgraded or
        replaced while dbgate runs, so every session tells)."""
        major = server_major(parameter_status)
        if major is not None:
            self.major = major
