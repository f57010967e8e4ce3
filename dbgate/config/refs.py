"""``${NAME}`` and ``${file:PATH}`` in config strings: secrets kept out of the file.

Any string may reference an environment variable as ``${NAME}`` or a file's content
as ``${file:/run/secrets/name}`` (one trailing newline removed; a relative path is
relative to the config file's directory). Problems are collected, not raised, so
that the loader reports them with every other problem, each at its key.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from dbgate.config.base import Loc

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FILE_REF = re.compile(r"\$\{file:([^}]+)\}")
#: A secret file is small; a larger one is almost certainly the wrong file.
MAX_SECRET_FILE_BYTES = 64 * 1024


def _read_secret_file(ref: str, base_dir: Path) -> str:
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        size = path.stat().st_size
        if size > MAX_SECRET_FILE_BYTES:
            raise ValueError(
                f"secret file {path} is {size} bytes (at most {MAX_SECRET_FILE_BYTES}): "
                "is it the right file?"
            )
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read secret file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"secret file {path} is not UTF-8 text") from e
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return text


def expand_refs(
    value: Any,
    loc: Loc,
    problems: list[tuple[Loc, str]],
    environ: typing.Mapping[str, str],
    base_dir: Path,
) -> Any:
    """``${NAME}`` from the environment, then ``${file:PATH}``; problems are collected."""
    if isinstance(value, str):

        def env(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in environ:
                problems.append((loc, f"environment variable {name} is not set"))
                return ""
            return environ[name]

        def file(m: re.Match[str]) -> str:
            try:
                return _read_secret_file(m.group(1), base_dir)
            except ValueError as e:
                problems.append((loc, str(e)))
                return ""

        # One pass each: a secret's own text is never expanded again.
        return _FILE_REF.sub(file, _ENV_REF.sub(env, value))
    if isinstance(value, dict):
        return {
            k: expand_refs(v, (*loc, str(k)), problems, environ, base_dir) for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_refs(v, (*loc, i), problems, environ, base_dir) for i, v in enumerate(value)]
    return value
