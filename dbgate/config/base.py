"""What every section of the config shares: the strict base model and small values.

:class:`Strict` is the base of every section model: an unknown key is an error (the
loader turns it into "did you mean"), and a loaded config is frozen. :data:`Loc` is
the key path of a value (``("upstream", "port")``, ``("identities", 0, "name")``),
as pydantic reports it and as problems name it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

#: Where a value sits in the config: its keys, and list indexes as ints.
Loc = tuple[str | int, ...]


class Strict(BaseModel):
    """A config section: unknown keys are refused, a loaded value is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    if value.startswith("["):  # [::1]:6432
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host or "127.0.0.1", int(port)
    return value, default_port


class TLSConfig(Strict):
    """Server-side TLS for clients. Without it, SSLRequest is answered with 'N'."""

    cert_file: Path
    key_file: Path
