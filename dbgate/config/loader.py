"""Reading a config: YAML, ``DBGATE__…`` overrides, references, validation, and
every problem reported at once as ``file:line: key: what is wrong``.

The order is the one docs/config.md states: the YAML file, then environment
variables ``DBGATE__SECTION__KEY`` (double underscore separates levels), then the
overrides the CLI passes; then ``${…}`` references are expanded (:mod:`.refs`) and
pydantic validates the result against :class:`~dbgate.config.root.Config`. Each
problem names the file, the line of the key (or of its nearest ancestor in the
file) and the key path, with "did you mean" for a misspelt key; values under keys
that look secret are never echoed.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from dbgate.config.base import Loc
from dbgate.config.refs import expand_refs
from dbgate.config.root import Config


class ConfigError(Exception):
    """Configuration problems, phrased for the operator who has to fix them.

    ``problems`` holds one line per problem (``file:line: key: what is wrong``);
    ``str()`` joins them with newlines.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message)


#: Keys whose values are never echoed in an error message.
_SECRET_WORDS = ("password", "secret", "key", "token", "dsn", "verifier")


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _apply_env_overrides(data: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[str, Any]:
    for key, value in environ.items():
        if not key.startswith("DBGATE__"):
            continue
        path = [p.lower() for p in key[len("DBGATE__") :].split("__") if p]
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[path[-1]] = value
    return data


def _line_of(text: str, loc: Loc) -> int | None:
    """Line of ``loc`` in the YAML text, or of its deepest ancestor that is there."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    found: int | None = None
    for i, part in enumerate(loc):
        if node is None:
            break
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    nxt = k if i == len(loc) - 1 else v
                    found = k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            nxt = node.value[part]
            found = nxt.start_mark.line + 1
        node = nxt
    return found


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config section model inside ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (
        typing.Union,
        list,
    ):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _section_keys(loc: Loc) -> list[str]:
    """The keys allowed in the section at ``loc`` (for "did you mean")."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_of(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _is_secret(loc: Loc) -> bool:
    return any(w in str(p).lower() for p in loc for w in _SECRET_WORDS)


def _explain(err: Any) -> str:
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _section_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean {close[0]}?"
        return f"unknown key; this section takes: {', '.join(allowed)}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    given = err.get("input")
    if isinstance(given, str | int | float | bool) and not _is_secret(loc):
        shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
        msg += f" (got {shown})"
    return msg


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Read, expand, override and validate. Raises ConfigError listing every problem.

    ``environ`` (default ``os.environ``) supplies both ``DBGATE__…`` overrides and
    ``${NAME}`` references.
    """
    text = ""
    data: dict[str, Any] = {}
    where = "config"
    base_dir = Path.cwd()
    env = os.environ if environ is None else environ
    if path is not None:
        where = str(path)
        base_dir = Path(path).expanduser().absolute().parent
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not a UTF-8 text file") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{where}{line}: invalid YAML: {getattr(e, 'problem', e)}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: the top level must be a mapping")
        data = loaded
    data = _apply_env_overrides(data, env)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value

    def located(loc: Loc, message: str) -> tuple[int, str]:
        line = _line_of(text, loc) if text else None
        prefix = f"{where}:{line}" if line else where
        return line or 0, f"{prefix}: {_dotted(loc)}: {message}"

    ref_problems: list[tuple[Loc, str]] = []
    data = expand_refs(data, (), ref_problems, env, base_dir)
    found = [located(loc, msg) for loc, msg in ref_problems]
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            # A reference that could not be resolved was replaced by "": the section
            # around it may now fail too, which would only repeat the same problem.
            if any(bad[: len(loc)] == loc for bad, _ in ref_problems):
                continue
            found.append(located(loc, _explain(err)))
    if found:
        problems = [p for _, p in sorted(found, key=lambda f: f[0])]
        raise ConfigError("\n".join(problems), problems)
    return config
