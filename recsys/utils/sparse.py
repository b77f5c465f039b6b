"""A minimal compressed-sparse-row container for ragged per-user lists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CSR:
    """Row ``r`` holds ``indices[indptr[r]:indptr[r+1]]`` (order preserved).

    Example::

        >>> c = CSR.from_lists([[3, 1], [], [2]])
        >>> c.row(0).tolist(), c.lengths().tolist()
        ([3, 1], [2, 0, 1])
    """

    indptr: np.ndarray  # (R+1,) int64
    indices: np.ndarray  # (nnz,) int64

    def __post_init__(self) -> None:
        assert self.indptr.ndim == 1 and self.indices.ndim == 1
        assert self.indptr[0] == 0 and self.indptr[-1] == len(self.indices)

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r] : self.indptr[r + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def slice(self, start: int, stop: int) -> "CSR":
        lo, hi = self.indptr[start], self.indptr[stop]
        return CSR(self.indptr[start : stop + 1] - lo, self.indices[lo:hi])

    def take(self, rows: np.ndarray) -> "CSR":
        rows = np.asarray(rows, dtype=np.int64)
        lens = self.lengths()[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        if len(rows) == 0 or indptr[-1] == 0:
            return CSR(indptr, np.zeros(0, dtype=self.indices.dtype))
        starts = np.repeat(self.indptr[rows], lens)
        offsets = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lens)
        return CSR(indptr, self.indices[starts + offsets])

    def row_ids(self) -> np.ndarray:
        """The row of every stored element (``nnz,``)."""
        return np.repeat(np.arange(self.n_rows), self.lengths())

    def to_lists(self) -> list[list[int]]:
        return [self.row(r).tolist() for r in range(self.n_rows)]

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> "CSR":
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        flat = [x for r in rows for x in r]
        return cls(indptr, np.asarray(flat, dtype=np.int64))

    @classmethod
    def from_sorted_rows(cls, row: np.ndarray, values: np.ndarray, n_rows: int) -> "CSR":
        """Build from parallel arrays already grouped by ``row`` (ascending)."""
        counts = np.bincount(row, minlength=n_rows)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, np.asarray(values, dtype=np.int64))


def left_pad(rows: CSR, length: int) -> np.ndarray:
    """``(R, length)`` int64: the last ``length`` items of each row, left-padded with 0."""
    out = np.zeros((rows.n_rows, length), dtype=np.int64)
    lens = np.minimum(rows.lengths(), length)
    r = np.repeat(np.arange(rows.n_rows), lens)
    starts = np.cumsum(lens) - lens
    within = np.arange(lens.sum()) - np.repeat(starts, lens)  # 0.. among the kept items
    pos_from_end = np.repeat(lens, lens) - 1 - within
    src = np.repeat(rows.indptr[1:], lens) - 1 - pos_from_end
    out[r, length - 1 - pos_from_end] = rows.indices[src]
    return out
