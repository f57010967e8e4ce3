"""The ``dbgate`` command line. Thin: parses flags, then calls into the package.

Imports are local to each command so that ``dbgate classify`` does not pay for
asyncio/uvloop/asyncpg and ``dbgate serve`` does not pay for the demo's Faker.
Every command's ``--help`` ends with examples (:data:`EXAMPLES`; a test checks that
none is missing). Shell completion: ``dbgate --install-completion``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from dbgate.approvals.commands import approvals_app, approvers_app
from dbgate.audit.commands import audit_app
from dbgate.pii.commands import detokenize_command, pii_app

app = typer.Typer(
    name="dbgate",
    help="PostgreSQL gateway that holds risky statements for human approval.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
rules_app = typer.Typer(help="Work with rule packs (rules/*.yaml).", no_args_is_help=True)
config_app = typer.Typer(help="Work with the YAML configuration.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(audit_app, name="audit")
app.add_typer(config_app, name="config")
app.add_typer(approvals_app, name="approvals")
app.add_typer(approvers_app, name="approvers")
app.add_typer(pii_app, name="pii")
app.command("detokenize")(detokenize_command)

#: Examples shown at the end of each command's ``--help``, by command path.
EXAMPLES: dict[str, list[str]] = {
    "serve": [
        "dbgate serve -c /etc/dbgate/dbgate.yaml",
        "dbgate serve -c dbgate.yaml --listen 0.0.0.0:6432 --log-level debug",
        "dbgate serve -c /etc/dbgate/dbgate.yaml --workers 4",
        "kill -HUP $(pidof -s dbgate)   # reload rules, PII catalog, approvers",
    ],
    "demo": [
        "dbgate demo",
        "dbgate demo --info-file demo.json --data-dir /tmp/dbgate-demo",
    ],
    "classify": [
        "dbgate classify 'select * from customers'",
        "dbgate classify --json -f report.sql",
        "pbpaste | dbgate classify -",
        "dbgate classify --identity reporting --group analysts 'delete from orders where id = 7'",
    ],
    "version": ["dbgate version", "dbgate version --json"],
    "seed-demo": [
        "dbgate seed-demo --admin-dsn postgresql://postgres@db/postgres "
        "--admin-password-file /run/secrets/postgres-password "
        "--agent-password-file /run/secrets/agent-upstream-password",
    ],
    "rules check": ["dbgate rules check", "dbgate rules check /etc/dbgate/rules"],
    "config check": [
        "dbgate config check -c /etc/dbgate/dbgate.yaml",
        "dbgate config check -c dbgate.yaml --connect",
    ],
    "approvals list": [
        "dbgate approvals list -c dbgate.yaml",
        "dbgate approvals list --dsn postgresql://dbgate@state/dbgate --status all --json",
    ],
    "approvals show": ["dbgate approvals show 17 -c dbgate.yaml"],
    "approvals approve": ["dbgate approvals approve 17 --as alice -c dbgate.yaml"],
    "approvals reject": [
        "dbgate approvals reject 17 --as alice --reason 'use the reporting view' -c dbgate.yaml"
    ],
    "approvers add": [
        "dbgate approvers add alice -g dba --password-stdin -c dbgate.yaml < alice.pw"
    ],
    "approvers token": ["dbgate approvers token alice --days 7 --label ci -c dbgate.yaml"],
    "approvers revoke-token": [
        "dbgate approvers revoke-token 3 -c dbgate.yaml",
        "dbgate approvers revoke-token --all alice -c dbgate.yaml",
    ],
    "approvers list": ["dbgate approvers list -c dbgate.yaml --json"],
    "pii scan": [
        "dbgate pii scan --dsn postgresql://dba@db/app",
        "dbgate pii scan --dsn postgresql://dba@db/app --json --fail-on-suspicious",
    ],
    "pii check": ["dbgate pii check", "dbgate pii check /etc/dbgate/rules/pii.yaml"],
    "pii keygen": ["dbgate pii keygen > /run/secrets/dbgate-pii-key"],
    "detokenize": ["dbgate detokenize tok_email_s3c... -c /etc/dbgate/dbgate.yaml"],
    "audit verify": [
        "dbgate audit verify --dsn postgresql://auditor@state-db/dbgate_state",
        "dbgate audit verify --dsn postgresql://auditor@state-db/dbgate_state --heads heads.jsonl",
        "dbgate audit verify --file evidence/audit-2026-10.jsonl",
    ],
    "audit export": [
        "dbgate audit export --dsn postgresql://auditor@state-db/dbgate_state --format jsonl",
        "dbgate audit export --dsn ... --format csv --since 2026-11-01 --until 2026-12-01 -o nov.csv",
        "dbgate audit export --dsn ... --identity reporting-agent -o agent.jsonl",
    ],
    "audit archive": [
        "dbgate audit archive --dsn postgresql://dbgate@state-db/dbgate_state --month 2026-01 "
        "-o /evidence/audit-2026-01.jsonl --drop",
    ],
}


def _epilog(path: str) -> str | None:
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    # Help is rendered as rich markup: "[" would start a tag.
    return "Examples:\n\n" + "\n\n".join("  " + line.replace("[", "\\[") for line in lines)


def _add_examples(typer_app: typer.Typer, prefix: str = "") -> None:
    """Attach :data:`EXAMPLES` to commands defined here and in other modules."""
    for info in typer_app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        if info.epilog is None:
            info.epilog = _epilog(f"{prefix}{name}")
    for group in typer_app.registered_groups:
        if group.typer_instance is not None and group.name:
            _add_examples(group.typer_instance, f"{prefix}{group.name} ")


def _print_version(value: bool) -> None:
    if value:
        from dbgate.version_info import version_text

        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """PostgreSQL gateway that holds risky statements for human approval."""


@app.command()
def serve(
    config: Annotated[Path, typer.Option("-c", "--config", help="YAML config file.")],
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to accept agents on.")] = None,
    rules: Annotated[Path | None, typer.Option(help="Rules directory.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="DBGATE_WORKERS",
            show_envvar=True,
            help="Processes sharing the port (SO_REUSEPORT). Default: the number of cores.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the proxy in front of an existing PostgreSQL server.

    SIGTERM drains the sessions and stops; SIGHUP reloads the rules, the PII catalog
    and the approvers' settings without dropping a session (docs/operations.md).
    """
    import functools

    from dbgate.config import ConfigError, load_config
    from dbgate.startup_errors import explain
    from dbgate.workers import default_workers, run

    overrides = {"listen": listen, "rules_dir": rules, "log_level": log_level}
    try:
        cfg = load_config(config, overrides=overrides)
    except ConfigError as e:
        for line in explain(e, step="config").splitlines():
            typer.echo(f"dbgate: {line}", err=True)
        raise typer.Exit(2) from None
    load = functools.partial(load_config, config, overrides=overrides)
    raise typer.Exit(run(cfg, workers=workers or default_workers(), load=load))


@app.command()
def demo(
    listen: Annotated[str, typer.Option(help="HOST:PORT for the proxy.")] = "127.0.0.1:6432",
    web: Annotated[str, typer.Option(help="HOST:PORT for the web UI.")] = "127.0.0.1:8080",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where the embedded server keeps its data.")
    ] = None,
    info_file: Annotated[
        Path | None, typer.Option("--info-file", help="Write connection info as JSON when ready.")
    ] = None,
) -> None:
    """Embedded PostgreSQL + demo dataset + proxy, all in one command."""
    from dbgate.demo import run_demo

    raise typer.Exit(run_demo(listen=listen, web=web, data_dir=data_dir, info_file=info_file))


# An option name as a user would type it (``--jsn``, ``-x``, ``--rules=dir``): refused
# as an unknown option rather than classified as SQL.
_OPTION_LIKE = re.compile(r"^--?[A-Za-z][\w-]*(=\S*)?$")


@app.command(context_settings={"ignore_unknown_options": True})
def classify(
    sql: Annotated[
        str | None,
        typer.Argument(
            help="SQL text (one or more statements), or - to read standard input. "
            "SQL that starts with -- works as it is.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("-f", "--file", help="Read the SQL from this file.")
    ] = None,
    rules: Annotated[Path | None, typer.Option(help="Rules directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    identity: Annotated[
        str, typer.Option(help="Decide as this dbgate identity (rules may match it).")
    ] = "agent",
    group: Annotated[
        list[str] | None, typer.Option(help="A group of the identity (repeatable).")
    ] = None,
    application_name: Annotated[str, typer.Option(help="Client application_name.")] = "",
) -> None:
    """Show how dbgate classifies SQL and what the rules decide."""
    import sys

    from dbgate.policy.commands import SqlSourceError, classify_command, read_sql
    from dbgate.policy.model import Identity

    if sql is not None and _OPTION_LIKE.match(sql):
        typer.echo(
            f"dbgate classify: no such option: {sql} "
            "(to classify SQL that starts with '-', use -f FILE or -)",
            err=True,
        )
        raise typer.Exit(2)
    try:
        text = read_sql(sql, file, sys.stdin)
    except SqlSourceError as e:
        typer.echo(f"dbgate classify: {e}", err=True)
        raise typer.Exit(2) from None
    who = Identity(name=identity, application_name=application_name, groups=frozenset(group or ()))
    raise typer.Exit(classify_command(text, rules, as_json, identity=who))


@app.command()
def version(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the version of dbgate and of the parts that decide its behaviour."""
    import json

    from dbgate.version_info import version_text, versions

    typer.echo(json.dumps(versions(), indent=2) if as_json else version_text(verbose=True))


@app.command("seed-demo")
def seed_demo(
    admin_dsn: Annotated[
        str,
        typer.Option(
            "--admin-dsn",
            envvar="DBGATE_ADMIN_DSN",
            show_envvar=True,
            help="A superuser URL of the PostgreSQL server to seed (any database).",
        ),
    ],
    agent_password_file: Annotated[
        Path,
        typer.Option(
            "--agent-password-file",
            help="File with the password of the least-privilege role dbgate_agent.",
        ),
    ],
    admin_password_file: Annotated[
        Path | None,
        typer.Option(
            "--admin-password-file",
            help="File with the superuser's password (else the DSN's, or PGPASSWORD).",
        ),
    ] = None,
    customers: Annotated[int, typer.Option(help="How many fake customers.")] = 5000,
) -> None:
    """Load the demo dataset into an existing server (docker-compose, Kubernetes trials).

    Creates database demo with the fake customers, orders and payments, the empty
    state database dbgate_state, and the role dbgate_agent that dbgate logs in as.
    Idempotent: a loaded dataset is kept.
    """
    import asyncio

    from dbgate.demo_seed import seed, with_password
    from dbgate.startup_errors import StartupError, redact_dsn, startup_step

    try:
        password = agent_password_file.read_text().strip()
        if admin_password_file is not None:
            admin_dsn = with_password(admin_dsn, admin_password_file.read_text().strip())
    except OSError as e:
        typer.echo(f"dbgate: cannot read {e.filename}: {e.strerror}", err=True)
        raise typer.Exit(2) from None
    try:
        with startup_step("state", dsn=admin_dsn, what="the server", key="--admin-dsn"):
            counts = asyncio.run(seed(admin_dsn, password, customers=customers))
    except StartupError as e:
        typer.echo(f"dbgate: {e}", err=True)
        raise typer.Exit(1) from None
    rows = ", ".join(f"{n} {t}" for t, n in counts.items())
    typer.echo(f"demo dataset ready on {redact_dsn(admin_dsn)}: {rows}")


@rules_app.command("check")
def rules_check(
    directory: Annotated[Path | None, typer.Argument(help="Rules directory.")] = None,
) -> None:
    """Validate a rules directory; errors name file:line."""
    from dbgate.policy.commands import rules_check_command

    raise typer.Exit(rules_check_command(directory))


@config_app.command("check")
def config_check(
    config: Annotated[Path, typer.Option("-c", "--config", help="YAML config file.")],
    connect: Annotated[
        bool,
        typer.Option(help="Also connect to the upstream and the state database."),
    ] = False,
) -> None:
    """Validate a config file and what it refers to; exit 0, or 1 listing every problem.

    Checks the schema (unknown keys, types, ranges, with file:line), ${ENV} and
    ${file:PATH} references, TLS certificate and key, SCRAM verifiers, the rules
    directory and the log and metrics paths; with --connect also that the upstream
    accepts connections and that the state database logs in.
    """
    from dbgate.config_check import check_config_command

    raise typer.Exit(check_config_command(config, connect=connect))


_add_examples(app)


def main() -> None:
    app()
