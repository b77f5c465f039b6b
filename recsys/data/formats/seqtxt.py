"""One line per user, ``user item item ...`` in time order (S3-Rec Amazon files)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.data.base import LoadedData
from recsys.data.formats._common import build_events, check_event_type
from recsys.data.formats._text import check_trailing_newline, read_file_bytes
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID
from recsys.utils.errors import DataError

#: A whole file of integer tokens: the happy path is one regex match.
_ONLY_INTS = re.compile(rb"[0-9 \t\r\n]*")
_INT = re.compile(r"[0-9]+")


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(path, "invalid UTF-8 (ids must be integers)", line=line) from None


def _find_bad_token(path: Path, lines: list[str]) -> None:
    """Error path: raise for the first token that is not a non-negative integer."""
    for lineno, line in enumerate(lines, start=1):
        for pos, tok in enumerate(line.split()):
            if not _INT.fullmatch(tok):
                column = USER_ID if pos == 0 else ITEM_ID
                what = f"expected an integer id, got token {tok!r} (token {pos + 1})"
                raise DataError(path, what, line=lineno, column=column)


def _parse_lines(path: Path, lines: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Users, sequence lengths and the flat item list, in file order."""
    users: list[str] = []
    lengths: list[int] = []
    items: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        toks = line.split()
        if len(toks) < 2:
            if not toks:
                raise DataError(path, "blank line (expected 'user item item ...')", line=lineno)
            raise DataError(path, f"user {toks[0]!r} has no items", line=lineno, column=ITEM_ID)
        users.append(toks[0])
        lengths.append(len(toks) - 1)
        items += toks[1:]
    return users, lengths, items


def _check_unique_users(path: Path, users: list[str]) -> None:
    if len(set(users)) == len(users):
        return
    first: dict[str, int] = {}
    for lineno, user in enumerate(users, start=1):
        if user in first:
            what = f"duplicate user {user!r} (first at line {first[user]})"
            raise DataError(path, what, line=lineno, column=USER_ID)
        first[user] = lineno


class SeqTxtLoader:
    """Sequences of integer ids, one user per line, items in time order.

    Events get ``timestamp`` = position in the user's line (0, 1, 2, ...) and
    ``timestamp_kind = "ordinal"``; ids stay the original token strings.

    Args:
        path: the ``.txt`` file.
        event_type: event type given to every event.
    """

    def __init__(self, path: str | Path, event_type: str = "click") -> None:
        self.path = Path(path)
        self.event_type = event_type

    def load(self) -> LoadedData:
        """Read and validate the file."""
        check_event_type(self.path, self.event_type)
        data = read_file_bytes(self.path)
        if not data.strip():
            raise DataError(self.path, "no data rows (only blank lines)")
        check_trailing_newline(self.path, data)
        lines = _decode(self.path, data).split("\n")
        lines.pop()  # after the final newline
        if not _ONLY_INTS.fullmatch(data):
            _find_bad_token(self.path, lines)
        users, lengths, items = _parse_lines(self.path, lines)
        _check_unique_users(self.path, users)
        return LoadedData(events=self._events(users, lengths, items), timestamp_kind="ordinal")

    def _events(self, users: list[str], lengths: list[int], items: list[str]) -> pa.Table:
        lens = np.asarray(lengths, dtype=np.int64)
        starts = np.cumsum(lens) - lens
        positions = np.arange(len(items), dtype=np.float64) - np.repeat(starts, lens)
        user_rows = np.repeat(np.arange(len(users)), lens)
        cols = {
            USER_ID: pa.array(users, type=pa.string()).take(pa.array(user_rows)),
            ITEM_ID: pa.array(items, type=pa.string()),
            TIMESTAMP: pa.array(positions, type=pa.float64()),
        }
        return build_events(cols, len(items), self.event_type)

    def source_files(self) -> list[Path]:
        """The one input file."""
        return [self.path]

    def fingerprint_config(self) -> dict[str, Any]:
        """Parameters that change the output."""
        return {"format": "seqtxt", "event_type": self.event_type}
