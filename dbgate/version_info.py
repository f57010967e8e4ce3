"""What ``dbgate version`` prints: dbgate's version and the parts that shape its behaviour.

The SQL grammar dbgate classifies with is libpg_query's (through pglast), so its
PostgreSQL version matters as much as dbgate's own; so does whether the compiled
hot-path helpers were built (identical behaviour, different speed).
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

__all__ = ["dbgate_version", "version_text", "versions"]


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def dbgate_version() -> str:
    return _dist_version("dbgate")


def versions() -> dict[str, object]:
    """Versions as a JSON-ready mapping."""
    try:
        from pglast.parser import get_postgresql_version

        grammar = ".".join(str(p) for p in get_postgresql_version())
    except Exception:  # pragma: no cover - pglast is a hard dependency
        grammar = "unknown"
    return {
        "dbgate": dbgate_version(),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "sql_grammar": f"PostgreSQL {grammar} (libpg_query via pglast {_dist_version('pglast')})",
        "compiled_helpers": {
            name: importlib.util.find_spec(name) is not None
            for name in ("dbgate.wire._scan", "dbgate.policy._literals")
        },
        "dependencies": {
            name: _dist_version(name)
            for name in ("uvloop", "asyncpg", "aiohttp", "pydantic", "prometheus-client")
        },
    }


def version_text(verbose: bool = False) -> str:
    """``dbgate 0.1.0``, plus one line per part when ``verbose``."""
    if not verbose:
        return f"dbgate {dbgate_version()}"
    v = versions()
    helpers = v["compiled_helpers"]
    assert isinstance(helpers, dict)
    built = [n.rsplit(".", 1)[1] for n, ok in helpers.items() if ok]
    deps = v["dependencies"]
    assert isinstance(deps, dict)
    return "\n".join(
        [
            f"dbgate {v['dbgate']}",
            f"python {v['python']} on {v['platform']}",
            f"SQL grammar: {v['sql_grammar']}",
            f"compiled helpers: {', '.join(built) if built else 'none (pure-Python fallbacks)'}",
            "dependencies: " + ", ".join(f"{k} {val}" for k, val in deps.items()),
        ]
    )
