"""Each shipped deployment's files, laid out under a temporary root as its dbgate sees them.

``deploy/`` ships three ways to run dbgate; each puts a config, secrets, the rule
pack and the PII catalog at paths under ``/etc/dbgate`` that the config then names.
A test cannot write ``/etc/dbgate``, so these functions build the same tree under
a temporary root — read from the manifests themselves (the Deployment's volume
mounts and kustomize's ConfigMap generators, the compose file's volumes and
secrets, the unit's ``LoadCredential=`` lines), so a file a manifest forgets to
ship is missing here too — and rewrite the config's absolute paths under that
root. Relative ``${file:...}`` references need nothing: the tree is the same.

The result goes through dbgate's own config loader and start-up checks
(``tests/unit/ops/test_deploy_manifests.py``, ``tests/integration/test_deploy_image.py``).
"""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "dbgate.service"

#: Where deploy/systemd/dbgate.yaml is installed (the unit's ExecStart= reads it).
SYSTEMD_CONFIG = "/etc/dbgate/dbgate.yaml"
#: Where the unit's header says to install the shipped rule pack and PII catalog.
SYSTEMD_RULES = "/etc/dbgate/rules"
#: Where systemd puts the credentials of dbgate.service ($CREDENTIALS_DIRECTORY).
SYSTEMD_CREDENTIALS = "/run/credentials/dbgate.service"
#: A pod's name, the value of ``fieldRef: metadata.name`` in the Deployment's env.
POD_NAME = "dbgate-7d9c8b6f5-x2x4q"


@dataclass(frozen=True)
class Layout:
    """One deployment's files under ``root``, and how its dbgate is started."""

    root: Path
    config: Path  # the file dbgate serve -c reads
    environ: dict[str, str]  # the process environment the deployment gives dbgate
    pii_key: Path  # the file dbgate reads its PII tokenization key from


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def dash_c(args: list[str]) -> str:
    return args[args.index("-c") + 1]


def unit_sections() -> dict[str, dict[str, list[str]]]:
    """deploy/systemd/dbgate.service: section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _reroot(text: str, root: Path, paths: Iterable[str]) -> str:
    """``text`` with each absolute path in ``paths`` (and anything below it) moved
    under ``root``: one pass, longest first, so a mount inside another moves once
    and a path already under ``root`` is never moved again."""
    ordered = sorted({p.rstrip("/") for p in paths}, key=len, reverse=True)
    if not ordered:
        return text
    alternatives = "|".join(re.escape(p) for p in ordered)
    pattern = rf"(?<![\w./-])({alternatives})(?![\w.-])"
    return re.sub(pattern, lambda m: str(_under(root, m.group(1))), text)


def _projected(mount: Path, files: Mapping[str, bytes]) -> None:
    """A ConfigMap or Secret volume as the kubelet writes it: each file a symlink
    into a hidden, timestamped directory reached through ``..data``."""
    data = mount / "..2025_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    for name, content in files.items():
        (data / name).write_bytes(content)
    (mount / "..data").symlink_to(data.name)
    for name in files:
        (mount / name).symlink_to(f"..data/{name}")


def _generator_files(generator: dict[str, Any]) -> dict[str, bytes]:
    """A kustomize configMapGenerator's files: key (``key=path`` or the file name)
    -> content."""
    out = {}
    for entry in generator.get("files", []):
        key, _, path = entry.rpartition("=")
        out[key or Path(path).name] = (K8S / path).read_bytes()
    return out


def kubernetes(root: Path, secrets: Mapping[str, str]) -> Layout:
    """The pod of deploy/kubernetes: every volume the Deployment mounts, filled from
    the kustomization's ConfigMap generators and from Secret ``dbgate-secrets``
    (secret.example.yaml's keys, with ``secrets`` in place of its placeholders)."""
    (deployment,) = yaml_docs(K8S / "deployment.yaml")
    (secret,) = yaml_docs(K8S / "secret.example.yaml")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generators = {g["name"]: g for g in kustomization.get("configMapGenerator", [])}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_values = {**secret["stringData"], **secrets}
    mounts = []
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        target = _under(root, mount["mountPath"])
        mounts.append(mount["mountPath"])
        if "configMap" in volume:
            _projected(target, _generator_files(generators[volume["configMap"]["name"]]))
        elif "secret" in volume:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            _projected(target, {k: f"{v}\n".encode() for k, v in secret_values.items()})
        elif "emptyDir" in volume:
            target.mkdir(parents=True)
        else:
            raise AssertionError(f"volume {mount['name']}: a kind this layout does not know")
    config = _under(root, dash_c(container["args"]))
    real = config.resolve()  # the ConfigMap's file behind its symlink
    real.write_text(_reroot(real.read_text(), root, mounts))
    environ = {}
    for var in container.get("env", []):
        if "value" in var:
            environ[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            environ[var["name"]] = POD_NAME
        else:
            raise AssertionError(f"env {var['name']}: a source this layout does not know")
    secrets_mount = next(
        m["mountPath"] for m in container["volumeMounts"] if "secret" in volumes[m["name"]]
    )
    return Layout(root, config, environ, _under(root, secrets_mount) / "pii-key")


def compose(root: Path, service: str = "dbgate-1") -> Layout:
    """One dbgate service of deploy/docker-compose.yml: its bind mounts, its secrets
    (the demo files, as shipped) and its tmpfs, under ``root``."""
    spec = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    svc = spec["services"][service]
    mounts = []
    for volume in svc.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts.append(target)
        src, dst = (DEPLOY / source).resolve(), _under(root, target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
    key_file = None
    for entry in svc.get("secrets", []):
        target = (
            entry["target"]
            if entry["target"].startswith("/")
            else f"/run/secrets/{entry['target']}"
        )
        mounts.append(target)
        dst = _under(root, target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEPLOY / spec["secrets"][entry["source"]]["file"], dst)
        if Path(target).name == "pii-key":
            key_file = dst
    for path in svc.get("tmpfs", []):
        mounts.append(path)
        _under(root, path).mkdir(parents=True, exist_ok=True)
    config = _under(root, dash_c(svc["command"]))
    config.write_text(_reroot(config.read_text(), root, mounts))
    environ = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
    return Layout(root, config, environ, key_file or _under(root, "/etc/dbgate/secrets/pii-key"))


def shipped_rule_files() -> list[Path]:
    """The YAML files the wheel installs under <prefix>/share/dbgate/rules."""
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"
    ]
    return [ROOT / f for f in data_files["share/dbgate/rules"] if f.endswith(".yaml")]


def systemd(root: Path, credentials: Mapping[str, str]) -> Layout:
    """deploy/systemd installed as the unit's header says: the config at
    /etc/dbgate/dbgate.yaml, the shipped rules in /etc/dbgate/rules, each
    ``LoadCredential=`` source file holding ``credentials[name]`` (default
    ``<name>-value``), copied by "systemd" into $CREDENTIALS_DIRECTORY."""
    service = unit_sections()["Service"]
    config = _under(root, SYSTEMD_CONFIG)
    config.parent.mkdir(parents=True)
    rules = _under(root, SYSTEMD_RULES)
    rules.mkdir(parents=True)
    for f in shipped_rule_files():
        shutil.copy(f, rules / f.name)
    creds = _under(root, SYSTEMD_CREDENTIALS)
    creds.mkdir(parents=True)
    for line in service.get("LoadCredential", []):
        name, source = line.split(":", 1)
        src = _under(root, source)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(credentials.get(name, f"{name}-value") + "\n")
        shutil.copy(src, creds / name)
    runtime = [f"/run/{d}" for d in service.get("RuntimeDirectory", [])]
    for d in runtime:
        _under(root, d).mkdir(parents=True, exist_ok=True)
    text = (DEPLOY / "systemd" / "dbgate.yaml").read_text()
    config.write_text(_reroot(text, root, ["/etc/dbgate", *runtime]))
    return Layout(root, config, {"CREDENTIALS_DIRECTORY": str(creds)}, creds / "pii-key")
