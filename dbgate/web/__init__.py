"""The approvers' HTTP side: the JSON API now, the server-rendered page later.

Talks to :mod:`dbgate.approvals` only. :func:`build_web_app` builds the app,
:class:`WebServer` serves it.
"""

from dbgate.web.app import WebServer, build_web_app

__all__ = ["WebServer", "build_web_app"]
