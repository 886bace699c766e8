"""Exceptions with messages that name the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: the message names the file, the offending field and how to fix it."""

    def __init__(self, path: str | Path | None, field: str, problem: str, fix: str) -> None:
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{field}: {problem}. Fix: {fix}")
        self.path = None if path is None else str(path)
        self.field = field
