"""Load and validate ``rules/*.yaml`` with errors that name ``file:line``.

We walk PyYAML's *node* graph (``yaml.compose``) rather than the constructed
Python objects, because only nodes remember where they came from. Every problem
is collected (not just the first) so an operator fixes a file in one pass, and
each unknown name comes with the valid alternatives and a "did you mean".

Validation is hand-written rather than pydantic: the schema is small, and
mapping pydantic's error locations back to YAML marks would cost more code than
checking the dozen keys directly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from dbgate.file_problems import FileProblem, FileProblems
from dbgate.policy.catalog_settings import parse_time_ms
from dbgate.policy.model import GUARD_SETTINGS, Action, Category
from dbgate.policy.rules_match import Glob, Match, Rule, command_key
from dbgate.policy.session_guards import GuardEntry

#: Names the engine itself uses in ``Decision.rule``; a pack may not reuse them.
RESERVED_RULE_NAMES = frozenset({"default", "internal-error", "parse-error", "empty-query"})

TOP_LEVEL_KEYS = ("version", "rules", "session_guards")
GUARD_KEYS = (
    "name",
    "description",
    "match",
    *GUARD_SETTINGS,
    "set_to_zero",
    "approver_groups",
    "approvals_needed",
    "wait_seconds",
    "expires_after",
)
#: What a guard entry's ``match`` may name: only who is asking (a guard is per session).
GUARD_MATCH_KEYS = ("identities", "groups", "application_names")
SET_TO_ZERO = {"clamp": Action.ALLOW, "hold": Action.HOLD}
RULE_KEYS = (
    "name",
    "description",
    "match",
    "action",
    "message",
    "approver_groups",
    "approvals_needed",
    "wait_seconds",
    "expires_after",
    "max_rows",
    "max_rows_changed",
    "max_rows_per_window",
    "window",
    "over_limit",
)
HOLD_ONLY_KEYS = ("approver_groups", "approvals_needed", "wait_seconds", "expires_after")
#: Keys of an allow rule's run-time limits (docs/rules.md, "Run-time limits").
LIMIT_KEYS = ("max_rows", "max_rows_changed", "max_rows_per_window", "window", "over_limit")
#: What ``over_limit`` may say: refuse (SQLSTATE 54000) or hold for a human.
OVER_LIMIT = {"refuse": Action.DENY, "hold": Action.HOLD}
MATCH_KEYS = (
    "categories",
    "all_categories",
    "tables",
    "schemas",
    "functions",
    "identities",
    "groups",
    "application_names",
    "statements",
)
CATEGORY_NAMES = tuple(c.value for c in Category)
ACTION_NAMES = tuple(a.value for a in Action)

_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_STR_TAG = "tag:yaml.org,2002:str"
#: Longest wait a rule may ask for (a week): beyond it a typo, not a policy.
_MAX_WAIT = 7 * 86400


class RuleProblem(FileProblem):
    """One thing wrong with a rules directory. ``line`` is 1-based; 0 = whole file."""

    __slots__ = ()


class RulesError(FileProblems):
    """A rules directory could not be loaded. Carries every problem found."""


def suggest(word: str, valid: tuple[str, ...] | list[str]) -> str:
    """``"; did you mean 'x'?"`` when something is close, then the valid choices."""
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (valid: {', '.join(valid)})"


def parse_duration(text: str) -> int | None:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"`` -> seconds; None if malformed or zero."""
    m = _DURATION.match(text.strip())
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    total = ((d * 24 + h) * 60 + mi) * 60 + s
    return total or None


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "null":
        return "nothing (null)"
    return f"{tag} {node.value!r}"


def _check_glob(pattern: str, *, max_dots: int) -> str | None:
    """Return why ``pattern`` is not a usable glob, or None when it is fine."""
    if not pattern.strip():
        return "empty pattern"
    if pattern != pattern.strip():
        return f"pattern {pattern!r} has leading or trailing whitespace"
    if pattern.count(".") > max_dots:
        if max_dots == 0:
            return f"pattern {pattern!r} may not contain '.' (schema names only)"
        return f"pattern {pattern!r} has too many '.' parts (use 'schema.name' or 'name')"
    i = pattern.find("[")
    while i != -1:
        j = i + 1
        if pattern[j : j + 1] == "!":
            j += 1
        if pattern[j : j + 1] == "]":
            j += 1
        close = pattern.find("]", j)
        if close == -1:
            return f"pattern {pattern!r} has an unclosed '['"
        i = pattern.find("[", close + 1)
    if any(q in pattern for q in "\"'`"):
        return f"pattern {pattern!r} contains quotes; write names as PostgreSQL stores them, without quotes"
    return None


class _FileLoader:
    """Validates one YAML file, appending problems instead of raising."""

    def __init__(self, path: Path, display: str, problems: list[RuleProblem]) -> None:
        self.path = path
        self.display = display
        self.problems = problems
        self._constructor = yaml.constructor.SafeConstructor()
        self.guards: list[GuardEntry] = []

    def problem(self, node: yaml.Node | int, message: str) -> None:
        line = node if isinstance(node, int) else _line(node)
        self.problems.append(RuleProblem(self.display, line, message))

    # -- scalar helpers ---------------------------------------------------------------
    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node)
        except Exception:  # e.g. "2024-13-45" resolves as a timestamp and fails: keep text
            return str(node.value)

    def string(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG:
            return str(node.value)
        self.problem(node, f"{what} must be a string, got {_describe(node)}")
        return None

    def string_list(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]] | None:
        """A list of strings; a single string is accepted as a one-element list."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG:
            return [(node, str(node.value))]
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{what} must be a list of strings, got {_describe(node)}")
            return None
        if not node.value:
            self.problem(node, f"{what} is an empty list, which matches nothing; remove the key")
            return None
        out: list[tuple[yaml.Node, str]] = []
        for item in node.value:
            s = self.string(item, f"each entry of {what}")
            if s is not None:  # bad entries are reported; keep checking the rest
                out.append((item, s))
        return out

    def mapping(
        self, node: yaml.MappingNode, what: str, valid: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys -> (key node, value node); reports unknown and duplicate keys."""
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            key = self.scalar(knode)
            if not isinstance(key, str):
                self.problem(knode, f"{what} keys must be strings, got {_describe(knode)}")
                continue
            if key in out:
                self.problem(
                    knode, f"duplicate key '{key}' in {what} (first on line {_line(out[key][0])})"
                )
                continue
            if key not in valid:
                self.problem(knode, f"unknown key '{key}' in {what}{suggest(key, valid)}")
                continue
            out[key] = (knode, vnode)
        return out

    # -- structure --------------------------------------------------------------------
    def load(self) -> list[Rule]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.problem(0, f"cannot read file: {e}")
            return []
        try:
            docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark is not None else 0
            self.problem(line, f"invalid YAML: {e.problem or e.context}")
            return []
        except yaml.YAMLError as e:  # pragma: no cover - unmarked errors are rare
            self.problem(0, f"invalid YAML: {e}")
            return []
        docs = [d for d in docs if d is not None]
        if not docs:
            self.problem(1, "file is empty; expected a mapping with a 'rules' list")
            return []
        if len(docs) > 1:
            self.problem(docs[1], "only one YAML document per rules file (found '---')")
        root = docs[0]
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, f"expected a mapping with a 'rules' list, got {_describe(root)}")
            return []
        keys = self.mapping(root, "the top level", TOP_LEVEL_KEYS)
        if "version" in keys:
            vnode = keys["version"][1]
            if self.scalar(vnode) != 1 or isinstance(self.scalar(vnode), bool):
                self.problem(
                    vnode, f"unsupported version {_describe(vnode)}; this dbgate reads version 1"
                )
        if "session_guards" in keys:
            self.guard_entries(keys["session_guards"][1])
        if "rules" not in keys:
            if "session_guards" in keys:
                return []  # a file of guards only
            self.problem(root, "missing key 'rules' (a list of rules)")
            return []
        rnode = keys["rules"][1]
        if not isinstance(rnode, yaml.SequenceNode):
            self.problem(rnode, f"'rules' must be a list of rules, got {_describe(rnode)}")
            return []
        if not rnode.value:
            self.problem(rnode, "'rules' is empty; a rules file must define at least one rule")
            return []
        rules = []
        for item in rnode.value:
            rule = self.rule(item)
            if rule is not None:
                rules.append(rule)
        return rules

    def rule(self, node: yaml.Node) -> Rule | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                node, f"each rule must be a mapping with 'name' and 'action', got {_describe(node)}"
            )
            return None
        before = len(self.problems)
        keys = self.mapping(node, "a rule", RULE_KEYS)
        name = None
        if "name" not in keys:
            self.problem(node, "rule is missing 'name'")
        else:
            name = self.string(keys["name"][1], "'name'")
            if name is not None and not _RULE_NAME.match(name):
                self.problem(
                    keys["name"][1], f"rule name {name!r} must be letters, digits, '-', '_' or '.'"
                )
                name = None
            elif name in RESERVED_RULE_NAMES:
                self.problem(
                    keys["name"][1],
                    f"rule name '{name}' is reserved for the engine; choose another",
                )
                name = None
        label = f"rule '{name}'" if name else "rule"

        action: Action | None = None
        if "action" not in keys:
            self.problem(node, f"{label} is missing 'action'{suggest('', ACTION_NAMES)}")
        else:
            a = self.string(keys["action"][1], "'action'")
            if a is not None:
                try:
                    action = Action(a)
                except ValueError:
                    self.problem(
                        keys["action"][1], f"unknown action '{a}'{suggest(a, ACTION_NAMES)}"
                    )

        description = ""
        if "description" in keys:
            description = self.string(keys["description"][1], "'description'") or ""
        message = ""
        if "message" in keys:
            message = self.string(keys["message"][1], "'message'") or ""

        limits = self.limits(keys, action, label)
        over_hold = limits.get("over_limit") is Action.HOLD
        if action is not None and action is not Action.HOLD and not over_hold:
            for k in HOLD_ONLY_KEYS:
                if k in keys:
                    why = (
                        f"({label} is '{action.value}')"
                        if action is not Action.ALLOW
                        else f"or to an allow rule with 'over_limit: hold' ({label} has none)"
                    )
                    self.problem(keys[k][0], f"'{k}' only applies to 'action: hold' {why}")

        approver_groups, approvals_needed = self.approvers(keys)
        wait = self.wait_seconds(keys)
        match = Match()
        if "match" in keys:
            mnode = keys["match"][1]
            if isinstance(mnode, yaml.ScalarNode) and mnode.tag.endswith(":null"):
                pass  # `match:` with nothing = match everything, same as omitting it
            elif not isinstance(mnode, yaml.MappingNode):
                self.problem(mnode, f"'match' must be a mapping, got {_describe(mnode)}")
            else:
                match = self.match(mnode, case_insensitive=action is not Action.ALLOW)

        if len(self.problems) != before or name is None or action is None:
            return None
        return Rule(
            name=name,
            action=action,
            match=match,
            description=description,
            message=message,
            approver_groups=approver_groups,
            approvals_needed=approvals_needed,
            wait_seconds=wait,
            file=self.display,
            line=_line(node),
            **limits,
        )

    def limits(
        self, keys: dict[str, tuple[yaml.Node, yaml.Node]], action: Action | None, label: str
    ) -> dict[str, Any]:
        """The run-time limit keys of a rule, validated; only an allow rule has them."""
        out: dict[str, Any] = {}
        present = [k for k in LIMIT_KEYS if k in keys]
        if not present:
            return out
        if action is not None and action is not Action.ALLOW:
            for k in present:
                self.problem(
                    keys[k][0],
                    f"'{k}' only applies to 'action: allow' ({label} is '{action.value}'): "
                    "a limit lets a statement run up to it",
                )
            return out
        for k in ("max_rows", "max_rows_changed", "max_rows_per_window"):
            if k in keys:
                vnode = keys[k][1]
                v = self.scalar(vnode)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    self.problem(vnode, f"'{k}' must be an integer >= 1, got {_describe(vnode)}")
                else:
                    out[k] = v
        if "window" in keys:
            vnode = keys["window"][1]
            v = self.scalar(vnode)
            seconds = v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
            if seconds is None and isinstance(v, str):
                seconds = parse_duration(v)
            if seconds is None:
                self.problem(
                    vnode,
                    f"bad duration {_describe(vnode)} for 'window'; use e.g. 15m, 1h, 1d",
                )
            elif "max_rows_per_window" not in keys:
                self.problem(keys["window"][0], "'window' needs 'max_rows_per_window'")
            else:
                out["window_seconds"] = seconds
        elif "max_rows_per_window" in out:
            out["window_seconds"] = 3600
        if "over_limit" in keys:
            vnode = keys["over_limit"][1]
            v = self.string(vnode, "'over_limit'")
            if v is not None and v not in OVER_LIMIT:
                self.problem(vnode, f"unknown over_limit '{v}'{suggest(v, tuple(OVER_LIMIT))}")
            elif v is not None:
                if "max_rows" not in keys and "max_rows_changed" not in keys:
                    self.problem(
                        keys["over_limit"][0],
                        "'over_limit' needs 'max_rows' or 'max_rows_changed' (what is past it?)",
                    )
                out["over_limit"] = OVER_LIMIT[v]
        return out

    def guard_entries(self, node: yaml.Node) -> None:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(
                node, f"'session_guards' must be a non-empty list of entries, got {_describe(node)}"
            )
            return
        for item in node.value:
            entry = self.guard_entry(item)
            if entry is not None:
                self.guards.append(entry)

    def guard_entry(self, node: yaml.Node) -> GuardEntry | None:
        """One ``session_guards`` entry: a name, who it is for, and ceilings."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"each session guard must be a mapping, got {_describe(node)}")
            return None
        before = len(self.problems)
        keys = self.mapping(node, "a session guard", GUARD_KEYS)
        name = None
        if "name" not in keys:
            self.problem(node, "session guard is missing 'name'")
        else:
            name = self.string(keys["name"][1], "'name'")
            if name is not None and not _RULE_NAME.match(name):
                self.problem(
                    keys["name"][1], f"guard name {name!r} must be letters, digits, '-', '_' or '.'"
                )
                name = None
            elif name in RESERVED_RULE_NAMES:
                self.problem(keys["name"][1], f"guard name '{name}' is reserved; choose another")
                name = None
        ceilings: dict[str, int] = {}
        for setting in GUARD_SETTINGS:
            if setting not in keys:
                continue
            vnode = keys[setting][1]
            text = str(vnode.value) if isinstance(vnode, yaml.ScalarNode) else None
            ms = parse_time_ms(text) if text is not None and vnode.tag == _STR_TAG else None
            if ms is None or ms == 0:
                self.problem(
                    vnode,
                    f"'{setting}' must be a time with a unit, as PostgreSQL writes it "
                    f"(e.g. 500ms, 30s, 5min, 1h), above 0; got {_describe(vnode)}",
                )
            else:
                ceilings[setting] = ms
        if not ceilings and len(self.problems) == before:
            self.problem(
                node,
                f"session guard sets no ceiling; give at least one of {', '.join(GUARD_SETTINGS)}",
            )
        zero = Action.ALLOW
        if "set_to_zero" in keys:
            v = self.string(keys["set_to_zero"][1], "'set_to_zero'")
            if v is not None and v not in SET_TO_ZERO:
                self.problem(
                    keys["set_to_zero"][1],
                    f"unknown set_to_zero '{v}'{suggest(v, tuple(SET_TO_ZERO))}",
                )
            elif v is not None:
                zero = SET_TO_ZERO[v]
        approver_groups, approvals_needed = self.approvers(keys)
        expires = self.wait_seconds(keys)
        match = Match()
        if "match" in keys:
            mnode = keys["match"][1]
            if not isinstance(mnode, yaml.MappingNode):
                self.problem(mnode, f"'match' must be a mapping, got {_describe(mnode)}")
            else:
                for knode, _ in mnode.value:
                    if self.scalar(knode) not in GUARD_MATCH_KEYS:
                        self.problem(
                            knode,
                            f"a session guard matches only who is asking: "
                            f"{', '.join(GUARD_MATCH_KEYS)}",
                        )
                match = self.match(mnode, case_insensitive=False)
        if len(self.problems) != before or name is None:
            return None
        return GuardEntry(
            name,
            ceilings,
            match,
            zero,
            approver_groups,
            approvals_needed,
            expires,
            self.display,
            _line(node),
        )

    def approvers(
        self, keys: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> tuple[tuple[str, ...], int]:
        """``approver_groups`` and ``approvals_needed`` of a rule or an approval entry."""
        approver_groups: tuple[str, ...] = ()
        if "approver_groups" in keys:
            items = self.string_list(keys["approver_groups"][1], "'approver_groups'")
            approver_groups = tuple(s for _, s in items or [])
        approvals_needed = 1
        if "approvals_needed" in keys:
            vnode = keys["approvals_needed"][1]
            v = self.scalar(vnode)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self.problem(
                    vnode, f"'approvals_needed' must be an integer >= 1, got {_describe(vnode)}"
                )
            else:
                approvals_needed = v
        return approver_groups, approvals_needed

    def wait_seconds(self, keys: dict[str, tuple[yaml.Node, yaml.Node]]) -> float | None:
        """How long a held statement waits: ``wait_seconds`` (seconds >= 0, or a
        duration; 0 = approve-then-retry), or its older spelling ``expires_after``
        (a duration > 0). None: the config's ``approvals.default_wait_seconds``."""
        if "wait_seconds" in keys and "expires_after" in keys:
            self.problem(
                keys["expires_after"][0],
                "'expires_after' and 'wait_seconds' say the same thing; keep only 'wait_seconds'",
            )
            return None
        if "wait_seconds" in keys:
            vnode = keys["wait_seconds"][1]
            v = self.scalar(vnode)
            seconds: float | None = None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
                seconds = float(v)
            elif isinstance(v, str) and parse_duration(v) is not None:
                seconds = float(parse_duration(v) or 0)
            if seconds is not None and seconds <= _MAX_WAIT:
                return seconds
            self.problem(
                vnode,
                f"bad 'wait_seconds' {_describe(vnode)}: a number of seconds from 0 to "
                f"{_MAX_WAIT} (0: answer at once and let the agent retry once approved) "
                "or a duration such as 90s, 15m, 1h",
            )
            return None
        if "expires_after" in keys:
            vnode = keys["expires_after"][1]
            v = self.scalar(vnode)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return float(v)
            if isinstance(v, str) and parse_duration(v) is not None:
                return float(parse_duration(v) or 0)
            self.problem(
                vnode,
                f"bad duration {_describe(vnode)} for 'expires_after'; use e.g. 90s, 15m, 1h, 1h30m, 2d",
            )
        return None

    def match(self, node: yaml.MappingNode, *, case_insensitive: bool) -> Match:
        keys = self.mapping(node, "'match'", MATCH_KEYS)
        fields: dict[str, Any] = {}
        for key in ("categories", "all_categories"):
            if key in keys:
                items = self.string_list(keys[key][1], f"'{key}'")
                cats: set[Category] = set()
                for inode, s in items or []:
                    try:
                        cats.add(Category(s))
                    except ValueError:
                        self.problem(inode, f"unknown category '{s}'{suggest(s, CATEGORY_NAMES)}")
                if cats:
                    fields[key] = frozenset(cats)
        globs: dict[str, tuple[int, bool]] = {
            # key: (max dots, force case-insensitive)
            "tables": (1, False),
            "schemas": (0, False),
            "functions": (1, True),  # PostgreSQL function names are effectively lower-case
            "identities": (99, False),
            "groups": (99, False),
            "application_names": (99, False),
            "statements": (99, True),  # see command_key: "ALTER SYSTEM" == "AlterSystem"
        }
        for key, (max_dots, force_ci) in globs.items():
            if key not in keys:
                continue
            items = self.string_list(keys[key][1], f"'{key}'")
            compiled: list[Glob] = []
            for inode, s in items or []:
                why = _check_glob(s, max_dots=max_dots)
                if why:
                    self.problem(inode, f"bad glob in '{key}': {why}")
                    continue
                value = command_key(s) if key == "statements" else s
                compiled.append(Glob.compile(value, case_insensitive=case_insensitive or force_ci))
            if compiled:
                fields[key] = tuple(compiled)
        return Match(**fields)


#: Files of a rules directory that are not rule files: the PII catalog lives beside
#: the pack it goes with (dbgate/pii/catalog_load.py reads it).
NOT_RULE_FILES = frozenset({"pii.yaml", "pii.yml"})


def rule_files(directory: Path) -> list[Path]:
    """``*.yaml`` and ``*.yml`` in lexical order of file name; dot-files and the PII
    catalog (``pii.yaml``) skipped."""
    return sorted(
        (
            p
            for p in directory.iterdir()
            if p.suffix in (".yaml", ".yml")
            and not p.name.startswith(".")
            and p.name not in NOT_RULE_FILES
            and p.is_file()
        ),
        key=lambda p: p.name,
    )


def load_directory(directory: Path) -> tuple[list[Rule], list[Path], list[GuardEntry]]:
    """Validate every rules file of ``directory``; raise :class:`RulesError` on any problem.

    Returns the rules and the session guard entries, each in pack order."""
    problems: list[RuleProblem] = []
    shown = str(directory)
    if not directory.exists():
        raise RulesError([RuleProblem(shown, 0, "rules directory does not exist")])
    if not directory.is_dir():
        # Accept a single file too: handy for `dbgate rules check rules/default.yaml`.
        files = [directory]
    else:
        files = rule_files(directory)
        if not files:
            raise RulesError([RuleProblem(shown, 0, "no *.yaml rule files in directory")])
    rules: list[Rule] = []
    guards: list[GuardEntry] = []
    seen: dict[str, Rule | GuardEntry] = {}
    for path in files:
        file_problems: list[RuleProblem] = []
        loader = _FileLoader(path, str(path), file_problems)
        loaded = loader.load()
        problems.extend(sorted(file_problems, key=lambda p: p.line))  # read top to bottom
        for entry in loader.guards:
            if entry.name in seen:
                first = seen[entry.name]
                problems.append(
                    RuleProblem(
                        entry.file,
                        entry.line,
                        f"duplicate name '{entry.name}' (first defined at {first.file}:{first.line})",
                    )
                )
                continue
            seen[entry.name] = entry
            guards.append(entry)
        for rule in loaded:
            if rule.name in seen:
                first = seen[rule.name]
                problems.append(
                    RuleProblem(
                        rule.file,
                        rule.line,
                        f"duplicate rule name '{rule.name}' (first defined at {first.file}:{first.line})",
                    )
                )
                continue
            seen[rule.name] = rule
            rules.append(rule)
    if problems:
        raise RulesError(problems)
    return [_with_index(r, i) for i, r in enumerate(rules)], files, guards


def _with_index(rule: Rule, index: int) -> Rule:
    return replace(rule, index=index)


def iter_problems(error: RulesError) -> Iterator[str]:
    """The ``file:line: message`` lines, for printing."""
    for p in error.problems:
        yield str(p)
