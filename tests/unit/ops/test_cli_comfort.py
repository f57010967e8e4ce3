"""The command line as people use it: SQL from anywhere, version, completion, an
example in every --help, and config check listing every problem."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from dbgate.cli import EXAMPLES, app

runner = CliRunner()


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group) or hasattr(cmd, "commands"):
            out += _commands(cmd, f"{path} ")
        else:
            out.append((path, cmd))
    return out


ALL_COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_the_command_list_is_known() -> None:
    paths = {p for p, _ in ALL_COMMANDS}
    assert {"serve", "demo", "classify", "version", "config check", "rules check"} <= paths
    assert set(EXAMPLES) <= paths  # no example for a command that does not exist


@pytest.mark.parametrize("path", [p for p, _ in ALL_COMMANDS])
def test_every_help_has_an_example(path: str) -> None:
    result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    for example in EXAMPLES[path]:
        assert example.split()[1] in result.output  # the subcommand appears in its example


def _classify(args: list[str], stdin: str | None = None) -> dict[str, object]:
    result = runner.invoke(app, ["classify", "--json", *args], input=stdin)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_classify_reads_an_argument_a_file_or_stdin(tmp_path: Path) -> None:
    sql = "-- monthly report\nselect * from customers"
    path = tmp_path / "q.sql"
    path.write_text(sql)
    from_arg = _classify([sql])
    from_file = _classify(["-f", str(path)])
    from_stdin = _classify(["-"], stdin=sql)
    assert from_arg == from_file == from_stdin
    assert from_arg["action"] == "hold" and "dump" in from_arg["categories"]


def test_classify_reads_long_sql_from_stdin() -> None:
    sql = "select id from orders where id in (" + ", ".join(str(i) for i in range(40_000)) + ")"
    assert len(sql) > 128 * 1024  # longer than one command-line argument may be
    assert _classify(["-"], stdin=sql)["action"] == "allow"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jsn"], "no such option: --jsn"),
        ([], "give the SQL as an argument, with -f FILE, or - for standard input"),
        (["select 1", "-f", "x.sql"], "either as an argument or with -f FILE, not both"),
        (["-f", "/nonexistent/q.sql"], "cannot read /nonexistent/q.sql"),
    ],
)
def test_classify_input_mistakes(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["classify", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_version() -> None:
    from importlib.metadata import version

    for args in (["version"], ["--version"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0
        assert result.stdout.splitlines()[0] == f"dbgate {version('dbgate')}"
    doc = json.loads(runner.invoke(app, ["version", "--json"]).stdout)
    assert doc["dbgate"] == version("dbgate")
    assert doc["sql_grammar"].startswith("PostgreSQL ")


def test_shell_completion_is_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    # typer finds the shell among the process's ancestors (shellingham); a test run
    # started detached from any shell has none, so the shell is bash here, as given.
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    result = runner.invoke(app, ["--show-completion"], prog_name="dbgate")
    assert result.exit_code == 0, (result.output, repr(result.exception), result.exc_info)
    assert "_DBGATE_COMPLETE" in result.stdout


def test_config_check_ok_and_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dbgate.pii.keys import generate_key

    monkeypatch.delenv("DBGATE_PII_KEY", raising=False)
    good = tmp_path / "good.yaml"
    good.write_text(
        "identities:\n  - name: agent\n    password: pw\n"
        f"pii:\n  keys:\n    - id: k1\n      secret: {generate_key()[0]}\n"
    )
    result = runner.invoke(app, ["config", "check", "-c", str(good)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {good}: listen 127.0.0.1:6432, upstream 127.0.0.1:5432")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listn: x\nupstream:\n  port: 0\nrules_dir: /nonexistent/rules\n")
    result = runner.invoke(app, ["config", "check", "-c", str(bad)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{bad}:1: listn: unknown key; did you mean listen?"
    assert lines[1].startswith(
        f"{bad}:3: upstream.port: Input should be greater than or equal to 1"
    )
    assert "2 problems found" in result.stderr


def test_config_check_reports_what_the_schema_cannot_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBGATE_PII_KEY", raising=False)
    path = tmp_path / "c.yaml"
    (tmp_path / "afile").write_text("")
    path.write_text(
        "tls:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/server.key\n"
        f"logging:\n  file: {tmp_path}/afile/dbgate.log\n"
        f"pii:\n  catalog: {tmp_path}/no-catalog.yaml\n"
    )
    result = runner.invoke(app, ["config", "check", "-c", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "tls.cert_file /nonexistent/server.crt does not exist: create it or fix tls.cert_file",
        # what `dbgate serve` would refuse at its PII step: both, not the first only
        "PII tokenization needs a key: set pii.keys in the config or the environment "
        "variable DBGATE_PII_KEY (generate one with: dbgate pii keygen)",
        f"pii.catalog: {tmp_path}/no-catalog.yaml: cannot read catalog: [Errno 2] No such "
        f"file or directory: '{tmp_path}/no-catalog.yaml'",
        f"logging.file {tmp_path}/afile/dbgate.log: {tmp_path}/afile is not a directory: "
        "fix logging.file",
    ]


def test_serve_with_a_bad_config_says_what_and_where(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream:\n  hots: db\n")
    result = runner.invoke(app, ["serve", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"dbgate: {path}:2: upstream.hots: unknown key; did you mean host? "
        "(dbgate config check -c FILE lists every problem)"
    )
