"""SIGHUP: reload the rules, the PII catalog and the approvers' settings in place.

An operator who tightens a rule or adds a PII column must not have to drop every
agent's session to make it count, and a typo in the new file must not take the
proxy down or leave it half-changed. So a reload is all or nothing:

1. read the config file again (with the same command-line overrides);
2. load the rule pack and build the PII rooms it names — any error stops here,
   with one log line (``reload failed: ...; still using the rules, PII catalog and
   approver settings loaded at ...``) and the running ones untouched;
3. swap them in: the gate decides by the new rules
   (:meth:`dbgate.gate.Gate.use_ruleset`), the PII gate tokenizes by the new
   catalog (:meth:`dbgate.gate.pii.PiiGate.use_config`), the approval service
   uses the new ``identities[].owners`` and hold rules the new
   ``approvals.default_wait_seconds``; every open session forgets the verdicts it
   remembered, so its next statement is judged by the new rules.

What is not reloaded — listen addresses, upstream, state database, TLS,
identities' passwords, logging, metrics — is named in one warning line when it
changed: those take effect at the next start. Statements waiting for approval keep
the decision that held them. Every session takes the new PII catalog at once, and
what was judged by the old one and arrives after (results of statements in flight,
portals resumed) is tokenized whole (:meth:`dbgate.gate.pii.PiiGate.use_config`);
a result set already streaming finishes under the catalog it was planned by.

Each reload is recorded in the audit trail when there is one (``kind = 'reload'``:
what, whether it worked, the source, a checksum, ``actor = 'SIGHUP'``, the error).
Reloads never overlap: a SIGHUP during a reload runs one more reload after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbgate.config import Config

if TYPE_CHECKING:
    from dbgate.app import App
    from dbgate.policy.rules import RuleSet

log = logging.getLogger("dbgate.reload")

__all__ = ["RELOADED", "ReloadResult", "Reloader", "reload_app"]

#: Config sections a reload applies; changes elsewhere need a restart.
RELOADED = frozenset({"rules_dir", "pii", "approvals", "identities"})
#: Parts of ``identities[]`` a reload applies (owners: who may not approve whom).
_IDENTITY_RELOADED = frozenset({"owners"})


@dataclass
class ReloadResult:
    """What one reload did: ``ok``, or ``error`` (one line) with nothing changed."""

    ok: bool
    error: str = ""
    rules_version: str = ""
    restart_needed: list[str] = field(default_factory=list)


def _checksum(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with contextlib.suppress(OSError):
            h.update(str(p).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _rules_files(ruleset: RuleSet) -> list[Path]:
    return [Path(str(f)) for f in getattr(ruleset, "files", ()) if f]


def _needs_restart(old: Config, new: Config) -> list[str]:
    """Config keys that changed but only take effect at the next start."""
    out = []
    for name in type(old).model_fields:
        if name in RELOADED:
            continue
        if getattr(old, name) != getattr(new, name):
            out.append(name)
    before = {i.name: i.model_dump(exclude=set(_IDENTITY_RELOADED)) for i in old.identities}
    after = {i.name: i.model_dump(exclude=set(_IDENTITY_RELOADED)) for i in new.identities}
    if before != after:
        out.append("identities (other than owners)")
    a, b = old.approvals, new.approvals
    if a.model_dump(exclude={"default_wait_seconds"}) != b.model_dump(
        exclude={"default_wait_seconds"}
    ):
        out.append("approvals (other than default_wait_seconds)")
    return out


def _failed(
    app: App, what: str, source: Any, error: str, loaded_at: str, actor: str
) -> ReloadResult:
    log.error(
        "reload failed: %s; still using the rules, PII catalog and approver settings loaded at %s",
        error,
        loaded_at,
    )
    _audit(app, what, ok=False, source=source, reason=error, actor=actor)
    return ReloadResult(ok=False, error=error)


async def reload_app(
    app: App, config: Config, *, loaded_at: str = "start-up", actor: str = "SIGHUP"
) -> ReloadResult:
    """Apply ``config``'s rules, PII catalog and approver settings to a running ``app``.

    All or nothing (see the module docstring). Never raises for a bad file;
    ``loaded_at`` names, in the failure line, when what stays in force was loaded."""
    from dbgate.gate import Gate
    from dbgate.policy.rules import load_rules

    old = app.config
    ruleset = None
    gate = app.gate if isinstance(app.gate, Gate) else None
    if gate is not None:
        try:
            ruleset = load_rules(config.rules_dir)
        except Exception as e:
            return _failed(app, "rules", config.rules_dir, _one_line(e), loaded_at, actor)
    if app.pii is not None:
        sessions = app.proxy.session_infos() if app.proxy is not None else []
        try:
            app.pii.use_config(config, sessions)  # raises before changing anything
        except Exception as e:
            error = f"PII catalog or keys: {_one_line(e)}"
            return _failed(app, "catalog", config.pii.catalog, error, loaded_at, actor)

    version = ""
    if gate is not None and ruleset is not None:
        gate.use_ruleset(ruleset)
        version = _checksum(_rules_files(ruleset))
    if app.approvals is not None:
        owners = config.owners()
        app.approvals.owners = owners
        store = getattr(app.approvals, "store", None)
        if store is not None:
            store.owners = owners
    holds = getattr(gate, "holds", None) if gate is not None else None
    if holds is not None:
        holds.default_wait_seconds = config.approvals.default_wait_seconds
    if app.proxy is not None:
        for info in app.proxy.session_infos():
            info.forget_verdicts()
    restart = _needs_restart(old, config)
    app.config = _merged(old, config)
    sessions = app.proxy.session_count if app.proxy is not None else 0
    log.info(
        "reloaded rules (%s), PII catalog and approver settings; %d open sessions keep "
        "running under them",
        version or "policy off",
        sessions,
    )
    if restart:
        log.warning("changed but applied only at the next start: %s", ", ".join(restart))
    _audit(app, "rules", ok=True, source=config.rules_dir, version=version, actor=actor)
    if app.pii is not None:
        _audit(app, "catalog", ok=True, source=config.pii.catalog, actor=actor)
    return ReloadResult(ok=True, rules_version=version, restart_needed=restart)


def _merged(old: Config, new: Config) -> Config:
    """The running config: the old one with the reloaded sections of the new one.

    What needs a restart stays as it runs, so that the next reload compares against
    what is really in force."""
    identities = []
    owners = {i.name: i.owners for i in new.identities}
    for ident in old.identities:
        identities.append(ident.model_copy(update={"owners": owners.get(ident.name, [])}))
    approvals = old.approvals.model_copy(
        update={"default_wait_seconds": new.approvals.default_wait_seconds}
    )
    return old.model_copy(
        update={
            "rules_dir": new.rules_dir,
            "pii": new.pii,
            "approvals": approvals,
            "identities": identities,
        }
    )


def _one_line(e: BaseException) -> str:
    from dbgate.config import ConfigError

    if isinstance(e, ConfigError):
        first = e.problems[0] if e.problems else str(e)
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        return f"{first}{more}"
    problems = getattr(e, "problems", None)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"{problems[0]}{more}"
    return " ".join(str(e).split()) or type(e).__name__


def _audit(app: App, what: str, *, ok: bool, source: Any, **fields: Any) -> None:
    if app.audit is None:
        return
    from dbgate.audit import ReloadEvent

    try:
        app.audit.record(ReloadEvent(what=what, ok=ok, source=str(source or "default"), **fields))
    except Exception:  # the audit writer reports its own outages
        log.exception("reload: could not record the reload in the audit trail")


class Reloader:
    """Runs reloads for SIGHUP, one at a time; ``load`` reads the config file again."""

    def __init__(self, app: App, load: Callable[[], Config]) -> None:
        self.app = app
        self.load = load
        self._task: asyncio.Task[None] | None = None
        self._again = False
        #: The last reload's result (tests and the worker supervisor read it).
        self.last: ReloadResult | None = None
        self.count = 0
        self.loaded_at = "start-up"

    def request(self) -> None:
        """Signal handler: reload now, or once more after the reload under way."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            self.last = await self.reload()
            self.count += 1
            if not self._again:
                return

    async def reload(self) -> ReloadResult:
        log.info("SIGHUP: reloading rules, PII catalog and approver settings")
        try:
            config = self.load()
        except Exception as e:
            return _failed(self.app, "config", "", _one_line(e), self.loaded_at, "SIGHUP")
        result = await reload_app(self.app, config, loaded_at=self.loaded_at)
        if result.ok:
            self.loaded_at = time.strftime("%Y-%m-%d %H:%M:%S")
        return result

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
