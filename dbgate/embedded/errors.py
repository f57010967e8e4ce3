"""Errors of the embedded server: one public type, two internal retry signals."""

from __future__ import annotations


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


class AccessDenied(Exception):
    """Internal: the server user could not reach the data directory at start-up."""


class PortInUse(Exception):
    """Internal: the chosen port was taken between choosing and binding it."""
