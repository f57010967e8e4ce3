"""Debian's Chromium for browser tests, driven by Playwright for Python.

No browser build is downloaded (``playwright install`` is never run): Playwright's
driver, which ships inside its wheel, drives ``/usr/bin/chromium`` through
``executable_path``. When Chromium is missing the setup installs Debian's package
with apt-get (as root, as CI runs); when that is impossible the test *fails* with
a message saying how to install it. It is never skipped: a browser test that does
not run must not look like one that passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DBGATE_CHROMIUM", "/usr/bin/chromium")
#: As the machine notes say: without the background-networking flags Chromium keeps
#: trying to reach Google's hosts, which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
ARTIFACTS = Path(os.environ.get("DBGATE_TEST_ARTIFACTS", "test-artifacts")) / "web"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def _install() -> str:
    """Try ``apt-get install chromium``; the output's tail when it fails."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root, or no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {(done.stderr or done.stdout)[-500:]}"
    return ""


def chromium_path() -> str:
    """The Chromium binary, installing Debian's package first if needed."""
    if not Path(CHROMIUM).exists():
        why = _install()
        if not Path(CHROMIUM).exists():
            pytest.fail(
                f"the browser tests need Debian's Chromium at {CHROMIUM} and it is not "
                f"installed ({why or 'apt-get did not provide it'}). Install it with "
                "'apt-get install chromium' (.ci/run does this), or point DBGATE_CHROMIUM "
                "at a Chromium binary.",
                pytrace=False,
            )
    return CHROMIUM


def save_screenshot(name: str, data: bytes) -> Path:
    """Keep a screenshot as a test artifact; with DBGATE_UPDATE_SCREENSHOTS=1 also
    refresh the copy in docs/images (the README shows those)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(data)
    if os.environ.get("DBGATE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        (DOCS_IMAGES / name).write_bytes(data)
    return path
