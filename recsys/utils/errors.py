"""Errors that the CLI turns into one line on stderr and exit code 2."""
from __future__ import annotations

from pathlib import Path


class RecsysError(Exception):
    """A user-facing error: bad input, bad config, missing artifact."""

    exit_code = 2


class DataError(RecsysError):
    """Bad input data. ``str(err)`` is one line: ``path:line: column 'c': what``."""

    def __init__(
        self,
        path: str | Path | None,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.message = message
        where = self.path or "<data>"
        if line is not None:
            where += f":{line}"
        what = f"column '{column}': {message}" if column else message
        super().__init__(f"{where}: {what}")
