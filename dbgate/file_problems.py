"""Problems found in a file an operator wrote (rules, the PII catalog), by line.

A loader collects every problem before it gives up, so an operator fixes a file in
one pass; each is printed as ``file:line: message`` like a compiler's.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FileProblem", "FileProblems"]


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One thing wrong with a file; ``line`` is 1-based, 0 for the whole file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.message}"
            if self.line
            else f"{self.file}: {self.message}"
        )


class FileProblems(Exception):
    """A file could not be loaded; carries every problem found, one per line."""

    def __init__(self, problems: list[FileProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
