"""The gate's ``generation``: what makes every session forget its remembered verdicts.

A verdict the relay remembers (``Allow(repeatable=True)``) was taken from the rules
and from catalog snapshots (unique keys, the PII schema). When any of them changes
the generation must change, or a session would keep allowing a text the gate now
judges differently.
"""

from __future__ import annotations

import asyncio

from dbgate.gate import Gate
from dbgate.gate.keys import KeyCatalogs
from dbgate.gate.schema_loads import SchemaLoads
from dbgate.policy.classify import classify, seen_exactly
from dbgate.policy.keys import KeyCatalog, Relation
from dbgate.policy.rules import load_rules


def _catalog(token: str) -> KeyCatalog:
    columns = frozenset({"id", "v"})
    return KeyCatalog(
        {"public.t": Relation((frozenset({"id"}),), False, columns)}, ("public",), token
    )


def _keys(loads: SchemaLoads[KeyCatalog]) -> KeyCatalogs:
    keys = object.__new__(KeyCatalogs)
    keys.loads = loads
    return keys


def test_every_load_of_a_catalog_and_every_new_ruleset_is_a_new_generation() -> None:
    versions = iter(("v1", "v2"))

    async def load(database: str) -> KeyCatalog:
        return _catalog(next(versions))

    loads: SchemaLoads[KeyCatalog] = SchemaLoads("the unique keys", load)
    gate = Gate(load_rules(), keys=_keys(loads))
    seen = [gate.generation]

    async def scenario() -> None:
        await loads.ensure("db")
        seen.append(gate.generation)
        loads.refresh_soon("db")  # after DDL
        await loads.reload_since("db", 0.0)
        seen.append(gate.generation)

    asyncio.run(scenario())
    gate.use_ruleset(load_rules())
    seen.append(gate.generation)
    assert len(set(seen)) == 4, seen


def test_a_text_classified_under_a_key_catalog_is_seen_exactly_under_it() -> None:
    sql = "SELECT v FROM t WHERE id = 41 /* seen-exactly */"
    first, second = _catalog("first"), _catalog("second")
    assert not seen_exactly(sql, keys=first)
    classify(sql, keys=first)
    assert seen_exactly(sql, keys=first)
    assert not seen_exactly(sql, keys=second)  # cached per catalog
    assert not seen_exactly(sql)
