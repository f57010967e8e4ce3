"""The SQLSTATE codes dbgate itself sends, named once.

Clients and agents act on the class of an error (``42501`` is "ask for permission",
``57014`` is "try again later", ``42601`` is "fix your SQL"), so every code dbgate
raises is chosen deliberately and named here; the rest of the package imports these
names instead of spelling the digits. Codes the server sends are relayed untouched;
the few dbgate itself reads (to explain a failed start) are named here too.
"""

from __future__ import annotations

SUCCESSFUL_COMPLETION = "00000"
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_PARAMETER_VALUE = "22023"
IN_FAILED_SQL_TRANSACTION = "25P02"
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
INVALID_CATALOG_NAME = "3D000"  # read, never sent: the server's "no such database"
SYNTAX_ERROR = "42601"
INSUFFICIENT_PRIVILEGE = "42501"
UNDEFINED_OBJECT = "42704"  # read, never sent: "unrecognized configuration parameter"
TOO_MANY_CONNECTIONS = "53300"
PROGRAM_LIMIT_EXCEEDED = "54000"
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"
INTERNAL_ERROR = "XX000"

_VALID = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def is_valid(code: str) -> bool:
    """Five characters of [0-9A-Z]: what the protocol allows in an error's C field."""
    return len(code) == 5 and set(code) <= _VALID
