"""Every protocol message in one namespace: ``from dbgate.wire import messages as m``.

Tests, benchmarks and tools write and read whole conversations, so they want the
builders, the parsers and the typed messages side by side. The code lives in the
modules that have one job each; this module only gathers them:

* :mod:`.codec`: the hot parsers and builders the relay calls per message;
* :mod:`.frontend` / :mod:`.backend`: one dataclass per message, with ``encode()``
  and ``decode_frontend`` / ``decode_backend``;
* :func:`.framing.frame`: any body wrapped as a message.
"""

from __future__ import annotations

from dbgate.wire import backend, codec, frontend
from dbgate.wire.backend import *  # noqa: F403 - re-exported as this module's API
from dbgate.wire.codec import *  # noqa: F403
from dbgate.wire.framing import frame
from dbgate.wire.frontend import *  # noqa: F403

__all__ = [*codec.__all__, *frontend.__all__, *backend.__all__, "frame"]
