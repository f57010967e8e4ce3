"""Load and validate a PII catalog file (``rules/pii.yaml``) with ``file:line`` errors.

Like the rule packs, the file is read as PyYAML *nodes* (``yaml.compose``), which
remember their line, and every problem is collected before raising, so an operator
fixes the file in one pass. Whether the columns it names exist is a different
question, answered against a live schema by :mod:`dbgate.pii.coverage` (a warning
there, not an error here: the schema may simply not have been migrated yet).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from dbgate.file_problems import FileProblem, FileProblems
from dbgate.pii.catalog import Catalog, ColumnRule, NameRule
from dbgate.pii.entities import ENTITY_NAME, KNOWN_ENTITIES, NONE

__all__ = ["CatalogError", "CatalogProblem", "default_catalog_path", "load_catalog"]

TOP_LEVEL_KEYS = ("version", "name_defaults", "names", "columns", "comments")
_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"


class CatalogProblem(FileProblem):
    """One thing wrong with a catalog file; ``line`` is 1-based, 0 for the whole file."""

    __slots__ = ()


class CatalogError(FileProblems):
    """The catalog could not be loaded; carries every problem found."""


def default_catalog_path() -> Path:
    """The shipped catalog: ``rules/pii.yaml`` of a checkout, or of a wheel install."""
    here = Path(__file__).resolve().parent.parent.parent / "rules" / "pii.yaml"
    if here.is_file():
        return here
    import sys

    return Path(sys.prefix) / "share" / "dbgate" / "rules" / "pii.yaml"


def _suggest(word: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (valid: {', '.join(valid)})"


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    return "nothing (null)" if tag == "null" else f"{tag} {node.value!r}"


def _glob_problem(pattern: str, parts: tuple[int, ...]) -> str | None:
    if not pattern or pattern != pattern.strip():
        return f"pattern {pattern!r} is empty or has surrounding whitespace"
    if any(q in pattern for q in "\"'`"):
        return f"pattern {pattern!r} contains quotes; write names as PostgreSQL stores them"
    n = pattern.count(".") + 1
    if n not in parts:
        want = " or ".join(
            {1: "'column'", 2: "'table.column'", 3: "'schema.table.column'"}[p] for p in parts
        )
        return f"pattern {pattern!r} has {n} part(s); expected {want}"
    if any(not p for p in pattern.split(".")):
        return f"pattern {pattern!r} has an empty part"
    depth = 0
    for ch in pattern:
        depth += ch == "["
        depth -= ch == "]" and depth > 0
    if depth:
        return f"pattern {pattern!r} has an unclosed '['"
    return None


class _Loader:
    def __init__(self, display: str) -> None:
        self.display = display
        self.problems: list[CatalogProblem] = []

    def problem(self, node: yaml.Node | int, message: str) -> None:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        self.problems.append(CatalogProblem(self.display, line, message))

    def entity(self, node: yaml.Node, label: str) -> str | None:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR):
            self.problem(node, f"{label}: the entity must be a string, got {_describe(node)}")
            return None
        value = str(node.value)
        # at most 63 characters: a hashed token's prefix (tok_<entity>_h) is remembered
        # with a one-byte length (dbgate/pii/_issued.c)
        if value == NONE or (len(value) <= 63 and ENTITY_NAME.match(value)):
            return value
        self.problem(
            node,
            f"{label}: bad entity name {value!r}: up to 63 lower-case letters, digits and single '_' "
            f"(known: {', '.join(KNOWN_ENTITIES)}, or 'none')",
        )
        return None

    def pairs(self, node: yaml.Node, key: str) -> list[tuple[yaml.Node, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                node, f"'{key}' must be a mapping of pattern: entity, got {_describe(node)}"
            )
            return []
        seen: dict[str, int] = {}
        out = []
        for knode, vnode in node.value:
            if not (isinstance(knode, yaml.ScalarNode) and knode.tag == _STR):
                self.problem(knode, f"'{key}' keys must be strings, got {_describe(knode)}")
                continue
            k = str(knode.value)
            if k.lower() in seen:
                self.problem(
                    knode, f"duplicate pattern {k!r} in '{key}' (first on line {seen[k.lower()]})"
                )
                continue
            seen[k.lower()] = knode.start_mark.line + 1
            out.append((knode, vnode))
        return out

    def boolean(self, node: yaml.Node, key: str, default: bool) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            return node.value.lower() in ("true", "yes", "on")
        self.problem(node, f"'{key}' must be true or false, got {_describe(node)}")
        return default

    def load(self, text: str) -> Catalog | None:
        try:
            docs = [d for d in yaml.compose_all(text, Loader=yaml.SafeLoader) if d is not None]
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            self.problem(mark.line + 1 if mark else 0, f"invalid YAML: {e.problem or e.context}")
            return None
        if not docs:
            self.problem(1, "file is empty; expected a mapping with 'columns' and/or 'names'")
            return None
        if len(docs) > 1:
            self.problem(docs[1], "only one YAML document per catalog file (found '---')")
        root = docs[0]
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, f"the top level must be a mapping, got {_describe(root)}")
            return None
        keys: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in root.value:
            k = str(getattr(knode, "value", ""))
            if k in keys:
                self.problem(
                    knode, f"duplicate key '{k}' (first on line {keys[k][0].start_mark.line + 1})"
                )
            elif k not in TOP_LEVEL_KEYS:
                self.problem(knode, f"unknown key '{k}'{_suggest(k, TOP_LEVEL_KEYS)}")
            else:
                keys[k] = (knode, vnode)
        if "version" in keys:
            v = keys["version"][1]
            if not (isinstance(v, yaml.ScalarNode) and v.tag.endswith(":int") and v.value == "1"):
                self.problem(v, f"unsupported version {_describe(v)}; this dbgate reads version 1")
        name_defaults = True
        if "name_defaults" in keys:
            name_defaults = self.boolean(keys["name_defaults"][1], "name_defaults", True)
        comments = True
        if "comments" in keys:
            comments = self.boolean(keys["comments"][1], "comments", True)
        names: list[NameRule] = []
        if "names" in keys:
            for knode, vnode in self.pairs(keys["names"][1], "names"):
                why = _glob_problem(str(knode.value), (1,))
                if why:
                    self.problem(knode, f"bad column-name glob in 'names': {why}")
                    continue
                entity = self.entity(vnode, f"names {knode.value!r}")
                if entity == NONE:
                    self.problem(
                        vnode,
                        f"names {knode.value!r}: 'none' is for 'columns' entries; to drop the "
                        "built-in name defaults set 'name_defaults: false'",
                    )
                elif entity is not None:
                    names.append(NameRule(str(knode.value), entity, builtin=False))
        columns: list[ColumnRule] = []
        if "columns" in keys:
            for knode, vnode in self.pairs(keys["columns"][1], "columns"):
                pattern = str(knode.value)
                why = _glob_problem(pattern, (2, 3))
                if why:
                    self.problem(knode, f"bad column glob in 'columns': {why}")
                    continue
                if pattern.count(".") == 1:
                    pattern = "*." + pattern
                entity = self.entity(vnode, f"columns {knode.value!r}")
                if entity is not None:
                    columns.append(
                        ColumnRule(pattern, entity, self.display, knode.start_mark.line + 1)
                    )
        if self.problems:
            return None
        return Catalog(
            columns=tuple(columns),
            names=tuple(names),
            name_defaults=name_defaults,
            comments=comments,
            source=self.display,
        )


def parse_catalog(text: str, display: str = "<catalog>") -> Catalog:
    """Validate catalog text; raise :class:`CatalogError` listing every problem."""
    loader = _Loader(display)
    catalog = loader.load(text)
    if catalog is None:
        raise CatalogError(loader.problems)
    return catalog


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load a catalog file (default: the shipped ``rules/pii.yaml``)."""
    p = Path(path) if path is not None else default_catalog_path()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogError([CatalogProblem(str(p), 0, f"cannot read catalog: {e}")]) from None
    return parse_catalog(text, str(p))
