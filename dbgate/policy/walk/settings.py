"""Settings and transaction modes: SET, RESET, SET TRANSACTION and their relatives.

The judgement of each setting lives in :mod:`dbgate.policy.catalog_settings`; this
module reads the values out of the parse tree (only literals count: a computed value
is unknown, which fails closed) for every statement that can change one —
``SET``/``RESET``, ``BEGIN``/``SET TRANSACTION`` options, ``ALTER ROLE/DATABASE/SYSTEM
... SET`` and ``CREATE/ALTER FUNCTION ... SET`` — plus the function options that
change who a function runs as or what language runs it.
"""

from __future__ import annotations

from typing import Any

from dbgate.policy.catalog_settings import setting_effects
from dbgate.policy.model import ADMIN, CONTROL, ESCAPE, PRIVILEGE
from dbgate.policy.walk import guards
from dbgate.policy.walk.facts import StatementFacts
from dbgate.policy.walk.nodes import KNOWN, value_of


def _var_values(body: dict[str, Any], facts: StatementFacts) -> list[str] | None:
    vals: list[str] = []
    for a in body.get("args", ()):
        state, text = value_of(a, facts)
        if state != KNOWN:
            return None
        vals.append("" if text is None else text)
    return vals


def variable_set(
    body: dict[str, Any], facts: StatementFacts, *, as_list: bool = False, session: bool = False
) -> None:
    """SET / RESET / SET TRANSACTION ... (also the body of ALTER ROLE/DATABASE/SYSTEM SET).

    ``session``: the statement changes this session (a SET, not ALTER ... SET), so a
    change to a session guard is reported for the rules to compare with its ceiling.
    """
    kind = body.get("kind", "VAR_SET_VALUE")
    name = body.get("name", "")
    if kind == "VAR_RESET_ALL":
        facts.add(
            CONTROL,
            "reset-all",
            "resets the session's settings to their defaults (RESET ALL keeps the role)",
        )
        return
    if kind == "VAR_SET_MULTI":  # SET TRANSACTION / SESSION CHARACTERISTICS
        transaction_options(body.get("args"), facts)
        return
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        values: list[str] | None = []
    elif kind == "VAR_SET_CURRENT":
        values = None
    else:
        values = _var_values(body, facts)
    if session and name.lower() in guards.GUARDS:
        guards.set_statement(name.lower(), kind, values, bool(body.get("is_local")), facts)
    effects, _ = setting_effects(name, values, as_list=as_list)
    for cat, code, msg in effects:
        facts.add(cat, code, msg)


#: Settings in which an agent declares itself to dbgate and its approvers
#: (docs/approvals.md): name -> key in the approval request. The server only stores
#: them, and nothing but dbgate reads them.
DECLARATIONS = {"dbgate.purpose": "purpose", "dbgate.model": "model"}


def declaration(body: dict[str, Any], facts: StatementFacts) -> bool:
    """``SET [LOCAL] dbgate.purpose = '...'`` / ``RESET dbgate.model``: record the
    declaration (the gate keeps it for the session) and return True; False for every
    other setting, and for ``SET ... FROM CURRENT`` (judged as any custom setting)."""
    key = DECLARATIONS.get(body.get("name", ""))
    if key is None:
        return False
    kind = body.get("kind", "VAR_SET_VALUE")
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        value = ""
    elif kind == "VAR_SET_VALUE":
        values = _var_values(body, facts)  # literal: the result is cached by exact text
        if values is None:
            return False
        value = ", ".join(values)
    else:
        return False
    facts.add(CONTROL, "declaration", f"declares the agent's {key} to dbgate (dbgate.{key})")
    facts.declares.append((key, value))
    return True


def transaction_options(opts: list[Any] | None, facts: StatementFacts) -> None:
    facts.add(CONTROL, "transaction", "begins, ends or configures a transaction")
    for o in opts or ():
        d = o.get("DefElem") or {}
        if d.get("defname") == "transaction_read_only":
            state, text = value_of(d.get("arg"), facts)
            if state == KNOWN and text not in ("0", "false"):
                continue
            facts.add(
                ESCAPE,
                "read-write-transaction",
                "asks for a read-write transaction, overriding a read-only default "
                "the operator may have set (READ WRITE)",
            )


_UNTRUSTED = frozenset({"c", "internal", "plpython3u", "plpythonu", "plperlu", "pltclu", "plsh"})


def function_options(opts: list[Any] | None, facts: StatementFacts) -> None:
    for o in opts or ():
        d = o.get("DefElem") or {}
        name = d.get("defname")
        if name == "security":
            state, text = value_of(d.get("arg"), facts)
            if state != KNOWN or text not in ("false", "0"):
                facts.add(
                    PRIVILEGE,
                    "security-definer",
                    "makes a function run with its owner's privileges (SECURITY DEFINER)",
                )
        elif name == "language":
            state, text = value_of(d.get("arg"), facts)
            if state == KNOWN and (text or "").lower() in _UNTRUSTED:
                facts.add(
                    ADMIN,
                    "untrusted-language",
                    f"uses the untrusted language {(text or '').lower()}, whose code can reach "
                    "the server's files and network",
                )
        elif name == "set":
            vs = (d.get("arg") or {}).get("VariableSetStmt")
            if vs and vs.get("name") in ("role", "session_authorization"):
                variable_set(vs, facts)
