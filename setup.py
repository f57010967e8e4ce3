"""Build hook for the four compiled modules, both optional hot-path helpers:

* dbgate.wire._scan — the relay's frame scanner (fallback: dbgate/wire/framing.py);
* dbgate.policy._literals — the classifier cache's literal mask (fallback:
  dbgate/policy/literals.py);
* dbgate.pii._rows — the PII DataRow rewrite loop, with its BLAKE2b and issued-token
  store (fallbacks: dbgate/pii/rows.py, hashlib, dbgate/pii/issued.py);
* dbgate.audit._seal — the audit writer's record of a statement of a known shape, with
  OpenSSL's SHA-256 (fallback: the Python path of dbgate/audit/rows.py).

When one cannot be built (no compiler), dbgate uses the pure-Python version, which
behaves identically (property-tested).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # pragma: no cover - depends on the machine
            print(f"warning: C helpers not built ({e}); using the Python versions")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # pragma: no cover
            print(f"warning: {ext.name} not built ({e}); using the Python version")


setup(
    ext_modules=[
        Extension("dbgate.wire._scan", ["dbgate/wire/_scan.c"], optional=True),
        Extension("dbgate.policy._literals", ["dbgate/policy/_literals.c"], optional=True),
        Extension(
            "dbgate.pii._rows",
            ["dbgate/pii/_rows.c", "dbgate/pii/_blake2b.c", "dbgate/pii/_issued.c"],
            depends=["dbgate/_wbuf.h", "dbgate/pii/_blake2b.h", "dbgate/pii/_issued.h"],
            optional=True,
        ),
        Extension(
            "dbgate.audit._seal",
            ["dbgate/audit/_seal.c", "dbgate/pii/_blake2b.c"],
            depends=["dbgate/_wbuf.h", "dbgate/pii/_blake2b.h"],
            libraries=["crypto"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
