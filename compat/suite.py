"""Obtain asyncpg's own test suite and lay it out so it tests the *installed* driver.

The suite ships only in asyncpg's source distribution. We download the sdist of
exactly the installed version (a test suite from another release would test code
we do not run), unpack it once, and copy just ``tests/`` into a fresh directory
for every run. Copying only ``tests/`` matters: next to the sdist's ``asyncpg/``
source tree, ``import asyncpg`` would pick up the unbuilt package (no compiled
protocol) instead of the wheel in the virtualenv. A small conftest placed next to
the copy refuses to run if that ever happens anyway, and streams per-test events
so a run that has to be killed still leaves results behind.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

COMPAT_DIR = Path(__file__).resolve().parent
WORK_DIR = COMPAT_DIR / ".work"
_CONFTEST_SOURCE = COMPAT_DIR / "suite_conftest.py"

# Test selection. Keep this list short and every entry justified in docs/compat.md.
DESELECTED: dict[str, str] = {
    "tests/test_connect.py::TestConnectionAttributes": (
        "starts its own primary and hot-standby clusters with initdb/pg_ctl and never "
        "connects to the server under test, so it says nothing about dbgate; it also "
        "cannot run as root (pg_ctl refuses), which is how make compat runs here"
    ),
}

# pytest configuration for the copied suite. Written as its own ini file so that
# dbgate's pyproject settings (asyncio_mode=auto, testpaths, timeouts) do not leak
# into a unittest-based suite that manages its own event loops. The runner also sets
# PYTEST_DISABLE_PLUGIN_AUTOLOAD: of the plugins installed in dbgate's virtualenv
# (pytest-asyncio, hypothesis, ...) only pytest-timeout is loaded, explicitly.
_PYTEST_INI = """\
[pytest]
# Written by compat/suite.py; the copied asyncpg suite runs with these settings only.
addopts = --strict-markers --tb=short -p pytest_timeout -p no:cacheprovider
junit_family = xunit1
filterwarnings = default
"""


class SuiteError(RuntimeError):
    """The asyncpg test suite could not be obtained or prepared."""


@dataclass(frozen=True)
class Suite:
    """A ready-to-run copy of asyncpg's tests."""

    asyncpg_version: str
    root: Path  # pytest rootdir: holds pytest.ini, conftest.py and tests/

    @property
    def ini(self) -> Path:
        return self.root / "pytest.ini"


def installed_asyncpg_version() -> str:
    """Version of the asyncpg wheel in this interpreter's environment."""
    try:
        return importlib.metadata.version("asyncpg")
    except importlib.metadata.PackageNotFoundError as e:
        raise SuiteError("asyncpg is not installed in this environment (run make install)") from e


def fetch_sdist(version: str, work_dir: Path = WORK_DIR) -> Path:
    """Path of ``asyncpg-<version>.tar.gz`` in ``work_dir``, downloaded with pip if missing."""
    work_dir.mkdir(parents=True, exist_ok=True)
    sdist = work_dir / f"asyncpg-{version}.tar.gz"
    if sdist.exists():
        return sdist
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"asyncpg=={version}",
        "-d",
        str(work_dir),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not sdist.exists():
        raise SuiteError(
            f"could not download the asyncpg {version} source distribution:\n"
            f"$ {' '.join(cmd)}\n{result.stderr.strip() or result.stdout.strip()}"
        )
    return sdist


def unpack_tests(sdist: Path, version: str, work_dir: Path = WORK_DIR) -> Path:
    """Unpack the sdist's ``tests/`` directory (once) and return its path."""
    top = f"asyncpg-{version}"
    dest = work_dir / f"asyncpg-{version}-src"
    tests = dest / top / "tests"
    if (tests / "__init__.py").exists():
        return tests
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
        if not members:
            raise SuiteError(f"{sdist} has no {top}/tests/ directory")
        # "data" filter: no absolute paths, no links outside the tree, no devices.
        tar.extractall(dest, members=members, filter="data")
    return tests


def prepare_suite(work_dir: Path = WORK_DIR) -> Suite:
    """Fresh copy of the installed version's tests under ``work_dir/suite``."""
    version = installed_asyncpg_version()
    tests = unpack_tests(fetch_sdist(version, work_dir), version, work_dir)
    root = work_dir / "suite"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copytree(tests, root / "tests")
    (root / "pytest.ini").write_text(_PYTEST_INI)
    shutil.copyfile(_CONFTEST_SOURCE, root / "conftest.py")
    return Suite(asyncpg_version=version, root=root)
