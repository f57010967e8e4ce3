"""Build hook for the one compiled module: dbgate.wire._scan (the relay's frame scanner).

It is optional: when it cannot be built (no compiler), dbgate falls back to the
pure-Python framer in dbgate/wire/framing.py with identical behaviour.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # pragma: no cover - depends on the machine
            print(f"warning: dbgate.wire._scan not built ({e}); using the Python framer")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # pragma: no cover
            print(f"warning: {ext.name} not built ({e}); using the Python framer")


setup(
    ext_modules=[Extension("dbgate.wire._scan", ["dbgate/wire/_scan.c"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
