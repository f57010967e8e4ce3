"""The ``dbgate`` command line. Thin: parses flags, then calls into the package.

Imports are local to each command so that ``dbgate classify`` does not pay for
asyncio/uvloop/asyncpg and ``dbgate serve`` does not pay for the demo's Faker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dbgate.audit.commands import audit_app

app = typer.Typer(
    name="dbgate",
    help="PostgreSQL gateway that holds risky statements for human approval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
rules_app = typer.Typer(help="Work with rule packs (rules/*.yaml).", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(audit_app, name="audit")


@app.command()
def serve(
    config: Annotated[Path, typer.Option("-c", "--config", help="YAML config file.")],
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to accept agents on.")] = None,
    rules: Annotated[Path | None, typer.Option(help="Rules directory.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error")] = None,
) -> None:
    """Run the proxy in front of an existing PostgreSQL server."""
    from dbgate.config import ConfigError, load_config
    from dbgate.proxy.server import run_serve

    try:
        cfg = load_config(
            config, overrides={"listen": listen, "rules_dir": rules, "log_level": log_level}
        )
    except ConfigError as e:
        typer.echo(f"dbgate: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_serve(cfg))


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


@app.command()
def classify(
    sql: Annotated[str, typer.Argument(help="SQL text (one or more statements).")],
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
    from dbgate.policy.commands import classify_command
    from dbgate.policy.model import Identity

    who = Identity(name=identity, application_name=application_name, groups=frozenset(group or ()))
    raise typer.Exit(classify_command(sql, rules, as_json, identity=who))


@rules_app.command("check")
def rules_check(
    directory: Annotated[Path | None, typer.Argument(help="Rules directory.")] = None,
) -> None:
    """Validate a rules directory; errors name file:line."""
    from dbgate.policy.commands import rules_check_command

    raise typer.Exit(rules_check_command(directory))


def main() -> None:
    app()
