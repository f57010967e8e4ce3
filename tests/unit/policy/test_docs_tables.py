"""The SQL tables in docs/classifier.md and docs/rules.md say what dbgate does.

Every row of a table whose header is one of those below is classified and decided
with the default pack, so a behaviour change that forgets the documentation fails
here, and so does documentation that drifts from the code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from dbgate.policy import Identity, load_rules
from dbgate.policy.classify import classify, clear_cache

DOCS = Path(__file__).resolve().parents[3] / "docs"
PACK = load_rules()
AGENT = Identity("agent")


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row; a ``|`` inside backticks is not a separator."""
    cells, cell, quoted = [], [], False
    for ch in line.strip().strip("|"):
        if ch == "`":
            quoted = not quoted
        if ch == "|" and not quoted:
            cells.append("".join(cell).strip())
            cell = []
        else:
            cell.append(ch)
    cells.append("".join(cell).strip())
    return cells


def _tables(header: str) -> list[Any]:
    """Rows (as cell lists) of every table in docs/ whose header row is ``header``."""
    rows = []
    for path in sorted(DOCS.glob("*.md")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if _cells(line) != _cells(header):
                continue
            for n, body in enumerate(lines[i + 2 :], start=i + 3):
                if not body.startswith("|"):
                    break
                rows.append(pytest.param(_cells(body), id=f"{path.name}:{n}"))
    return rows


def _sql(cell: str) -> str:
    m = re.fullmatch(r"`(.*)`", cell)
    assert m, f"not a SQL cell: {cell!r}"
    return m.group(1)


AT_A_GLANCE = _tables("| SQL | Categories | Default pack |")
REASONS = _tables("| SQL (default pack) | Action, rule | `Decision.reasons` |")
PARSE_ERRORS = _tables("| Query | `parse_error` | `parse_error_position` |")
LIMITS = _tables("| SQL (default pack, no key catalog) | Action | `limits` |")


def test_the_tables_were_found() -> None:
    assert len(AT_A_GLANCE) >= 30 and len(REASONS) >= 8 and len(PARSE_ERRORS) >= 4
    assert len(LIMITS) >= 5


@pytest.mark.parametrize("cells", LIMITS)
def test_documented_limits(cells: list[str]) -> None:
    clear_cache()
    sql, outcome, limits = cells
    d = PACK.decide(AGENT, classify(_sql(sql)))
    action, _, rule = outcome.partition(" ")
    assert d.action.value == action
    if rule:
        assert f"(`{d.rule}`)" == rule
    documented = re.match(r"`(\{.*\})`|null", limits)
    assert documented, limits
    if documented.group(1) is None:
        assert d.limits is None
    else:
        assert d.limits == json.loads(documented.group(1))


@pytest.mark.parametrize("cells", AT_A_GLANCE)
def test_categories_and_default_action(cells: list[str]) -> None:
    clear_cache()
    sql, categories, outcome = cells
    c = classify(_sql(sql))
    assert sorted(x.value for x in c.categories) == sorted(categories.replace(" ", "").split(","))
    d = PACK.decide(AGENT, c)
    action, _, rule = outcome.partition(" ")
    assert d.action.value == action
    if rule:
        assert f"(`{d.rule}`)" == rule


@pytest.mark.parametrize("cells", REASONS)
def test_documented_reasons(cells: list[str]) -> None:
    clear_cache()
    sql, outcome, reasons = cells
    d = PACK.decide(AGENT, classify(_sql(sql)))
    assert f"{d.action.value}, `{d.rule}`" == outcome
    documented = set(re.findall(r"(\w+) `([\w-]+)`:", reasons))
    assert documented, reasons
    assert documented == {(r.category.value, r.code) for r in d.reasons}
    for message in re.findall(r"`[\w-]+`: ([^;(…]+)", reasons):
        assert any(r.message.startswith(message.strip()) for r in d.reasons), message


@pytest.mark.parametrize("cells", PARSE_ERRORS)
def test_documented_parse_errors(cells: list[str]) -> None:
    clear_cache()
    sql, message, position = cells
    c = classify(_sql(sql))
    assert (c.parse_error, c.parse_error_position) == (_sql(message), int(position))
