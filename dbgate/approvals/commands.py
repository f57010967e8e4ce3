"""``dbgate approvals …`` and ``dbgate approvers …``: approvals from a shell.

Operators with access to the state database decide held statements
(``dbgate approvals approve 17 --as alice --dsn STATE_DSN``) and manage approver
accounts and their API tokens. The same rules as the API apply — the approver named
by ``--as`` must exist, be in the rule's groups, and be neither the requesting
identity nor one of its owners — because both go through
:class:`~dbgate.approvals.store.ApprovalStore`.

The state database comes from ``--dsn``, from ``-c CONFIG`` (``state.dsn``, and
the identities' ``owners``), or from ``DBGATE__STATE__DSN``. It is migrated first
when needed, so a fresh database works.

Exit status: 0 done; 1 refused (no such request, not allowed, already decided,
bad value); 2 the state database or the config cannot be used.
Heavy imports (asyncpg, pglast) stay inside the functions: ``dbgate --help`` and
``dbgate classify`` do not pay for them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from dbgate.approvals.accounts import AccountStore
    from dbgate.approvals.store import ApprovalStore, RequestRecord

T = TypeVar("T")

approvals_app = typer.Typer(help="List, show and decide held statements.", no_args_is_help=True)
approvers_app = typer.Typer(help="Approver accounts and their API tokens.", no_args_is_help=True)

Dsn = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        envvar="DBGATE__STATE__DSN",
        help="State database URL (postgresql://…). Default: state.dsn of --config.",
        show_envvar=True,
    ),
]
ConfigPath = Annotated[
    Path | None, typer.Option("-c", "--config", help="dbgate config (state.dsn, owners).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class _Refused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _run(
    dsn: str | None,
    config: Path | None,
    work: Callable[[Any, Any], Awaitable[T]],
    *,
    recorded: bool = False,
) -> T:
    """Open the stores, run ``work(store, accounts)``, turn refusals into exit codes.
    ``recorded``: the work decides requests, and each step goes to the audit trail."""
    import asyncio

    from dbgate.approvals.errors import ApprovalError, StateUnavailable
    from dbgate.config import ConfigError, load_config
    from dbgate.state.migrate import MigrationError

    owners: dict[str, tuple[str, ...]] = {}
    if config is not None:
        try:
            cfg = load_config(config)
        except ConfigError as e:
            _fail(str(e), 2)
        owners = cfg.owners()
        if dsn is None and cfg.state is not None:
            dsn = cfg.state.dsn
    if not dsn:
        _fail("give the state database with --dsn, -c CONFIG or DBGATE__STATE__DSN", 2)
    try:
        return asyncio.run(_with_stores(dsn, owners, work, recorded))
    except StateUnavailable as e:
        _fail(str(e), 2)
    except MigrationError as e:
        _fail(f"the state database cannot be migrated: {e}", 2)
    except ApprovalError as e:
        _fail(e.message, 1)
    except _Refused as e:
        _fail(str(e), e.code)


async def _with_stores(
    dsn: str,
    owners: dict[str, tuple[str, ...]],
    work: Callable[[Any, Any], Awaitable[T]],
    recorded: bool,
) -> T:
    async with _stores(dsn, owners, recorded) as (store, accounts):
        return await work(store, accounts)


@asynccontextmanager
async def _stores(
    dsn: str, owners: dict[str, tuple[str, ...]], recorded: bool = False
) -> AsyncIterator[tuple[ApprovalStore, AccountStore]]:
    from dbgate.approvals.accounts import AccountStore
    from dbgate.approvals.db import StateDB, create_pool
    from dbgate.approvals.store import ApprovalStore
    from dbgate.state.migrate import apply_migrations

    pool = await create_pool(dsn, max_size=2)
    writer = None
    try:
        db = StateDB(pool)
        async with db.connection() as conn:
            await apply_migrations(conn)
        store = ApprovalStore(db, owners=owners)
        writer = await _audit_writer(dsn) if recorded else None
        if writer is not None:
            from dbgate.audit.approval_steps import recorder

            store.on_event = recorder(writer)
        yield store, AccountStore(db)
    finally:
        if writer is not None:
            await writer.stop()
        await pool.close()


async def _audit_writer(dsn: str) -> Any:
    """A decision made from a shell is recorded in the audit like one made on the page:
    this process writes its own short chain (``cli-<host>``)."""
    import socket

    from dbgate.audit import AuditError, AuditWriter
    from dbgate.config import AuditConfig

    writer = AuditWriter(dsn, AuditConfig(), replica=f"cli-{socket.gethostname()}")
    try:
        await writer.start()
    except AuditError as e:
        _fail(f"the audit trail cannot be written, so nothing is decided: {e}", 2)
    return writer


def _fail(message: str, code: int) -> Any:
    typer.echo(f"dbgate: {message}", err=True)
    raise typer.Exit(code)


def _request_id(raw: str) -> int:
    if not raw.isdigit() or int(raw) >= 2**63:
        raise _Refused(f"{raw!r} is not a request id", 1)
    return int(raw)


# -- output ----------------------------------------------------------------------------


def _one_line(text: str, width: int) -> str:
    from dbgate.approvals.notify.messages import reveal_hidden

    flat = " ".join(reveal_hidden(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _print_list(records: list[RequestRecord]) -> None:
    if not records:
        typer.echo("no approval requests")
        return
    typer.echo(f"{'id':>6}  {'status':<9}  {'identity':<16}  {'waited':>8}  statement")
    for r in records:
        waited = f"{r.waited_seconds:.0f}s"
        typer.echo(
            f"{r.id:>6}  {r.status:<9}  {_one_line(r.identity, 16):<16}  {waited:>8}  "
            f"{_one_line(r.statement, 70)}"
        )


def _print_detail(r: RequestRecord) -> None:
    groups = ", ".join(r.approver_groups) or "any approver"
    lines = [
        f"request     {r.id}  ({r.status}, {r.mode})",
        f"identity    {r.identity}  groups: {', '.join(r.identity_groups) or '-'}",
        f"client      {r.client_addr or '-'}  application: {r.application_name or '-'}  "
        f"session: {r.session_id}  replica: {r.replica}",
        f"purpose     {r.purpose or '-'}  model: {r.model or '-'}",
        f"rule        {r.rule or '-'}: {r.rule_message or '-'}",
        f"needs       {r.approvals_needed} approval(s) from {groups}; has {r.approvals}",
        f"categories  {', '.join(r.categories) or '-'}",
        f"tables      {', '.join(r.tables) or '-'}",
        f"rows        {r.estimated_rows if r.estimated_rows is not None else '?'}"
        + (f"  ({r.estimate_note})" if r.estimate_note else ""),
        f"created     {r.created_at.isoformat()}  waited {r.waited_seconds:.1f}s  "
        f"deadline {r.deadline.isoformat()}",
    ]
    for code, text in r.reasons:
        lines.append(f"reason      [{code}] {text}")
    lines.append("statement")
    from dbgate.approvals.notify.messages import reveal_hidden

    # an escape sequence or a right-to-left override in a literal would redraw the
    # terminal: such characters are shown as their code points
    lines.extend("    " + line for line in reveal_hidden(r.statement).split("\n"))
    if r.params:
        lines.append(
            "parameters  "
            + ", ".join("NULL" if p is None else repr(reveal_hidden(p)) for p in r.params)
        )
    for d in r.decisions:
        lines.append(
            f"decision    {d.decision} by {d.approver} via {d.via} at {d.decided_at.isoformat()}"
            + (f": {d.reason}" if d.reason else "")
        )
    if r.status != "pending" and r.reason:
        lines.append(f"outcome     {r.reason}")
    typer.echo("\n".join(lines))


def _detail_json(r: RequestRecord) -> dict[str, Any]:
    from dbgate.web.serialize import request_detail

    return request_detail(r, "", may_decide="shown by the CLI")


# -- dbgate approvals -------------------------------------------------------------------


@approvals_app.command("list")
def approvals_list(
    dsn: Dsn = None,
    config: ConfigPath = None,
    status: Annotated[
        str, typer.Option(help="Status, several separated by commas, or 'all'.")
    ] = "pending",
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: AsJson = False,
) -> None:
    """Approval requests, newest first (statements are PII-masked)."""
    statuses = [] if status == "all" else [s.strip() for s in status.split(",") if s.strip()]

    async def work(store: ApprovalStore, _: AccountStore) -> list[RequestRecord]:
        return await store.list(statuses=statuses, identity=identity, limit=limit)

    records = _run(dsn, config, work)
    if as_json:
        from dbgate.web.serialize import request_summary

        typer.echo(json.dumps([request_summary(r, "") for r in records], indent=2))
    else:
        _print_list(records)


@approvals_app.command("show")
def approvals_show(
    request_id: Annotated[str, typer.Argument(help="Request id.")],
    dsn: Dsn = None,
    config: ConfigPath = None,
    as_json: AsJson = False,
) -> None:
    """Everything an approver is shown about one request."""

    async def work(store: ApprovalStore, _: AccountStore) -> RequestRecord:
        return await store.get(_request_id(request_id))

    record = _run(dsn, config, work)
    if as_json:
        typer.echo(json.dumps(_detail_json(record), indent=2))
    else:
        _print_detail(record)


def _decide(
    request_id: str, approver: str, reason: str, dsn: str | None, config: Path | None, approve: bool
) -> None:
    async def work(store: ApprovalStore, accounts: AccountStore) -> RequestRecord:
        from dbgate.approvals.store import clean_reason

        who = await accounts.get(approver)
        text = clean_reason(reason, required=not approve)
        return await store.decide(
            _request_id(request_id), who, approve=approve, reason=text, via="cli"
        )

    record = _run(dsn, config, work, recorded=True)
    if record.status == "pending":
        typer.echo(
            f"request {record.id}: approval by {approver} recorded; "
            f"{record.approvals} of {record.approvals_needed} approvals"
        )
    else:
        typer.echo(f"request {record.id} {record.status} by {', '.join(record.decided_by)}")


@approvals_app.command("approve")
def approvals_approve(
    request_id: Annotated[str, typer.Argument(help="Request id.")],
    approver: Annotated[str, typer.Option("--as", help="Approver name deciding.")],
    reason: Annotated[str, typer.Option(help="Why (shown to the agent and recorded).")] = "",
    dsn: Dsn = None,
    config: ConfigPath = None,
) -> None:
    """Approve a request (one of N when the rule needs several approvers)."""
    _decide(request_id, approver, reason, dsn, config, approve=True)


@approvals_app.command("reject")
def approvals_reject(
    request_id: Annotated[str, typer.Argument(help="Request id.")],
    approver: Annotated[str, typer.Option("--as", help="Approver name deciding.")],
    reason: Annotated[str, typer.Option(help="Why (required: the agent is told).")] = "",
    dsn: Dsn = None,
    config: ConfigPath = None,
) -> None:
    """Reject a request; the agent's statement fails with 42501 and this reason."""
    _decide(request_id, approver, reason, dsn, config, approve=False)


# -- dbgate approvers -------------------------------------------------------------------


def _read_password(password_stdin: bool, no_password: bool) -> str | None:
    if no_password:
        if password_stdin:
            raise _Refused("--password-stdin and --no-password exclude each other", 1)
        return None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        raise _Refused("give --password-stdin (or --no-password for a token-only account)", 1)
    if len(password) < 8:
        raise _Refused("the password must have at least 8 characters", 1)
    return password


@approvers_app.command("add")
def approvers_add(
    name: Annotated[str, typer.Argument(help="Approver name (how they sign decisions).")],
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="A group (repeatable).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="Token-only account (no web login).")
    ] = False,
    dsn: Dsn = None,
    config: ConfigPath = None,
) -> None:
    """Create an approver account (the password is stored as an scrypt hash)."""
    try:
        password = _read_password(password_stdin, no_password)
    except _Refused as e:
        _fail(str(e), e.code)

    async def work(_: ApprovalStore, accounts: AccountStore) -> None:
        await accounts.add(name, group or [], password)

    _run(dsn, config, work)
    typer.echo(f"approver {name} added (groups: {', '.join(sorted(set(group or []))) or 'none'})")


@approvers_app.command("token")
def approvers_token(
    name: Annotated[str, typer.Argument(help="Approver name.")],
    days: Annotated[int, typer.Option(min=0, help="Valid for this many days; 0: no expiry.")] = 30,
    label: Annotated[str, typer.Option(help="A note to recognise the token by.")] = "",
    dsn: Dsn = None,
    config: ConfigPath = None,
) -> None:
    """Issue an API token (printed once; only its hash is stored)."""
    from datetime import timedelta

    lifetime = timedelta(days=days) if days else None

    async def work(_: ApprovalStore, accounts: AccountStore) -> tuple[int, str]:
        return await accounts.issue_token(name, label=label, lifetime=lifetime)

    token_id, token = _run(dsn, config, work)
    typer.echo(f"token {token_id} for {name}" + (f", valid {days} days" if days else ""), err=True)
    typer.echo(token)


@approvers_app.command("revoke-token")
def approvers_revoke_token(
    token: Annotated[
        str | None, typer.Argument(help="Token id (from 'approvers list') or the token itself.")
    ] = None,
    all_of: Annotated[
        str | None, typer.Option("--all", help="Revoke every token of this approver.")
    ] = None,
    dsn: Dsn = None,
    config: ConfigPath = None,
) -> None:
    """Revoke a token at once (its next API call gets 401)."""
    if (token is None) == (all_of is None):
        _fail("name one token, or --all NAME", 1)

    async def work(_: ApprovalStore, accounts: AccountStore) -> str:
        if all_of is not None:
            await accounts.get(all_of)  # a clear error for an unknown name
            n = await accounts.revoke_all(all_of)
            return f"{n} token(s) of {all_of} revoked"
        assert token is not None
        return f"token {await accounts.revoke_token(token)} revoked"

    typer.echo(_run(dsn, config, work))


@approvers_app.command("list")
def approvers_list(dsn: Dsn = None, config: ConfigPath = None, as_json: AsJson = False) -> None:
    """Approvers, their groups and tokens (never the tokens themselves)."""

    async def work(_: ApprovalStore, accounts: AccountStore) -> Any:
        return await accounts.list()

    infos = _run(dsn, config, work)
    if as_json:
        out = [
            {
                "name": i.approver.name,
                "groups": sorted(i.approver.groups),
                "disabled": i.approver.disabled,
                "password": i.has_password,
                "created_at": i.created_at.isoformat(),
                "tokens": [
                    {
                        "id": t.id,
                        "label": t.label,
                        "created_at": t.created_at.isoformat(),
                        "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                        "revoked": t.revoked_at is not None,
                        "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                    }
                    for t in i.tokens
                ],
            }
            for i in infos
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    if not infos:
        typer.echo("no approvers (add one with: dbgate approvers add NAME --group G)")
    for i in infos:
        flags = [] if i.has_password else ["token-only"]
        if i.approver.disabled:
            flags.append("disabled")
        extra = f"  [{', '.join(flags)}]" if flags else ""
        typer.echo(
            f"{i.approver.name}  groups: {', '.join(sorted(i.approver.groups)) or '-'}{extra}"
        )
        for t in i.tokens:
            state = "revoked" if t.revoked_at else "active"
            expires = t.expires_at.date().isoformat() if t.expires_at else "never"
            label = f" {t.label!r}" if t.label else ""
            typer.echo(f"    token {t.id}{label}: {state}, expires {expires}")
