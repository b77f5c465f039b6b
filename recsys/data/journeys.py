"""Customer journeys over marketing channels: the file format, its reader, and a
synthetic generator whose true per-channel causal credit is known exactly.

File format (Parquet, or CSV with a header), one row per touch:

=============  ===================================================================
column         meaning
=============  ===================================================================
journey_id     the journey (a user's path up to conversion or the end of the
               window); int or string
timestamp      number; orders the touches of a journey (ties keep file order)
channel        the channel of the touch (string, e.g. ``web``); empty or null:
               a journey without any touch (then its only row)
converted      0 or 1, the journey's outcome, the same on every row of the journey
=============  ===================================================================

Journeys without touches matter: their conversion rate is the baseline that the
data-driven methods subtract (without them every conversion is credited to some
channel). At most :data:`MAX_CHANNELS` distinct channels (the Shapley method
enumerates channel subsets). Bad input raises :class:`~recsys.utils.errors.DataError`
naming the file, line (CSV, header = line 1) or row (Parquet, 0-based) and column.

Generative model (:class:`JourneyWorld`). Each journey is touched by channel ``c``
independently with probability ``reach[c]``, ``1 + Poisson(extra_touches[c])``
times, at times ``stage[c] + N(0, stage_sd)`` (web and email early in the funnel,
push and app late), sorted. It converts with probability

    f(S) = base_rate + sum_{c in S} effect[c] + sum_{{c, d} in S} synergy[c, d]

where ``S`` is the set of channels that touched it: order and repeats do not
change the outcome. **Truth**: a channel's causal credit in a journey is its Shapley
value in the game ``v(T) = f(T) - f(empty)`` over ``T`` within ``S`` (additive
effects are their own contribution; a pair's synergy is split equally), which
sums to the journey's incremental conversion probability ``f(S) - f(empty)``. The
true credit of a channel is the sum over the generated journeys; its **share** is
that over the total (:meth:`Journeys.truth_shares` are filled in by the generator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.utils.errors import DataError

CHANNELS = ("web", "app", "email", "push")
MAX_CHANNELS = 12
COLUMNS = ("journey_id", "timestamp", "channel", "converted")


@dataclass
class Journeys:
    """Paths as a CSR: journey ``j`` touched ``channels[touches[offsets[j]:offsets[j + 1]]]`` in order.

    ``truth_shares`` (per channel, summing to 1) is known only for generated journeys."""

    channels: tuple[str, ...]
    offsets: np.ndarray  # (n + 1,) int64
    touches: np.ndarray  # (n_touches,) int64 channel index
    converted: np.ndarray  # (n,) bool
    truth_shares: np.ndarray | None = None  # (C,)
    source: str = "<synthetic>"
    journey_ids: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_journeys(self) -> int:
        return len(self.converted)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def channel_sets(self) -> np.ndarray:
        """``(n,)`` bit mask of the channels each journey touched (bit ``c`` = channel ``c``)."""
        rows = np.repeat(np.arange(self.n_journeys), self.lengths())
        mask = np.zeros(self.n_journeys, dtype=np.int64)
        np.bitwise_or.at(mask, rows, np.left_shift(1, self.touches))
        return mask

    def table(self) -> pa.Table:
        """The journeys in the file format (a journey without touches is one row with channel "")."""
        n, lens = self.n_journeys, self.lengths()
        reps = np.maximum(lens, 1)
        jid = np.repeat(np.arange(n), reps)
        pos = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        names = np.array(self.channels + ("",), dtype=object)
        ch = np.full(len(jid), len(self.channels), dtype=np.int64)
        has = np.repeat(lens > 0, reps)
        ch[has] = self.touches
        return pa.table({"journey_id": pa.array(jid), "timestamp": pa.array(pos.astype(np.float64)),
                         "channel": pa.array(names[ch].tolist(), pa.string()),
                         "converted": pa.array(np.repeat(self.converted.astype(np.int64), reps))})


@dataclass(frozen=True)
class JourneyConfig:
    """The generator's parameters (one entry per channel of ``channels``); see the module docstring."""

    n_journeys: int = 200_000
    channels: tuple[str, ...] = CHANNELS
    reach: tuple[float, ...] = (0.7, 0.35, 0.45, 0.55)
    effect: tuple[float, ...] = (0.02, 0.05, 0.06, 0.01)
    synergy: tuple[tuple[str, str, float], ...] = (("app", "push", 0.02),)
    base_rate: float = 0.02
    stage: tuple[float, ...] = (0.2, 0.6, 0.3, 0.85)
    stage_sd: float = 0.15
    extra_touches: tuple[float, ...] = (1.0, 0.5, 0.8, 1.0)
    seed: int = 0


class JourneyWorld:
    """The known conversion function ``f`` of a :class:`JourneyConfig` and its sampler."""

    def __init__(self, config: JourneyConfig = JourneyConfig()):
        c = self.config = config
        n = len(c.channels)
        if not 1 <= n <= MAX_CHANNELS or len(set(c.channels)) != n:
            raise DataError(None, f"journeys: expected 1..{MAX_CHANNELS} distinct channel names, got {list(c.channels)}")
        for name in ("reach", "effect", "stage", "extra_touches"):
            if len(getattr(c, name)) != n:
                raise DataError(None, f"journeys.{name}: expected {n} values (one per channel), "
                                f"got {len(getattr(c, name))}")
        self.effect = np.asarray(c.effect, dtype=np.float64)
        self.synergy = np.zeros((n, n))
        for a, b, g in c.synergy:
            if a not in c.channels or b not in c.channels or a == b:
                raise DataError(None, f"journeys.synergy: ({a}, {b}) must name two different channels of {list(c.channels)}")
            i, j = c.channels.index(a), c.channels.index(b)
            self.synergy[i, j] = self.synergy[j, i] = float(g)
        f = self.conversion_probability(np.arange(1 << n))
        if f.max() > 1 or f.min() < 0 or max(c.reach) > 1 or min(c.reach) < 0:
            raise DataError(None, "journeys: conversion probabilities and reaches must stay within [0, 1]")

    def _member(self, masks: np.ndarray) -> np.ndarray:
        n = len(self.config.channels)
        return (np.asarray(masks, dtype=np.int64)[:, None] >> np.arange(n)) & 1  # (b, C)

    def conversion_probability(self, masks: np.ndarray) -> np.ndarray:
        """``f(S)`` for channel-set bit masks ``(b,)``."""
        x = self._member(masks).astype(np.float64)
        return self.config.base_rate + x @ self.effect + 0.5 * np.einsum("bi,ij,bj->b", x, self.synergy, x)

    def shapley(self, masks: np.ndarray) -> np.ndarray:
        """Exact per-journey credit ``(b, C)``: the Shapley values of ``f(T) - f(empty)`` within each set
        (effect of each member plus half of each synergy with another member)."""
        x = self._member(masks).astype(np.float64)
        return x * (self.effect[None, :] + 0.5 * x @ self.synergy)

    def sample(self, seed: int | None = None, n_journeys: int | None = None) -> Journeys:
        """Draw journeys (see the module docstring); ``truth_shares`` set from :meth:`shapley`."""
        c = self.config
        n = c.n_journeys if n_journeys is None else n_journeys
        rng = np.random.default_rng([c.seed, c.seed if seed is None else seed, 13])
        k = len(c.channels)
        touched = rng.random((n, k)) < np.asarray(c.reach)  # (n, C)
        counts = np.where(touched, 1 + rng.poisson(np.asarray(c.extra_touches), (n, k)), 0)
        rows = np.repeat(np.arange(n), counts.sum(axis=1))
        chan = np.concatenate([np.repeat(np.arange(k), r) for r in counts]) if n else np.zeros(0, np.int64)
        times = np.asarray(c.stage)[chan] + rng.normal(0, c.stage_sd, len(chan))
        order = np.lexsort((times, rows))
        masks = (touched.astype(np.int64) << np.arange(k)).sum(axis=1)
        converted = rng.random(n) < self.conversion_probability(masks)
        offsets = np.concatenate([[0], np.cumsum(counts.sum(axis=1))]).astype(np.int64)
        credit = self.shapley(masks).sum(axis=0)
        return Journeys(tuple(c.channels), offsets, chan[order].astype(np.int64), converted,
                        credit / credit.sum(), f"synthetic journeys (seed {seed})")


def _where(row: int, csv: bool) -> tuple[int | None, str]:
    return (row + 2, "") if csv else (None, f"row {row}: ")


def read_journeys(path: str | Path) -> Journeys:
    """Read and validate a journeys file (format: module docstring)."""
    from recsys.data.bandit_logs import read_table

    table, csv = read_table(path)
    missing = [col for col in COLUMNS if col not in table.column_names]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; a journeys file needs {list(COLUMNS)} "
                        f"(found {table.column_names})", column=missing[0])

    def fail(row: int, column: str, msg: str) -> DataError:
        line, prefix = _where(row, csv)
        return DataError(path, prefix + msg, line=line, column=column)

    jid_col = table.column("journey_id")
    if jid_col.null_count:
        raise fail(int(np.flatnonzero(jid_col.is_null().to_numpy(zero_copy_only=False))[0]), "journey_id",
                   "missing value")
    jid = np.asarray(pc.cast(jid_col, pa.string()).to_pylist(), dtype=object)
    try:
        ts = np.asarray(pc.cast(table.column("timestamp"), pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(path, "expected numbers", column="timestamp") from None
    if not np.all(np.isfinite(ts)):
        raise fail(int(np.flatnonzero(~np.isfinite(ts))[0]), "timestamp", "expected a finite number")
    ch = np.asarray(pc.fill_null(pc.cast(table.column("channel"), pa.string()), "").to_pylist(), dtype=object)
    try:
        conv = np.asarray(pc.cast(table.column("converted"), pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(path, "expected 0 or 1", column="converted") from None
    bad = np.flatnonzero(~np.isin(conv, (0.0, 1.0)))
    if len(bad):
        raise fail(int(bad[0]), "converted", f"expected 0 or 1, got {conv[bad[0]]!r}")
    uniq, first, inv = np.unique(jid, return_index=True, return_inverse=True)
    inv = np.ravel(inv)
    n = len(uniq)
    mixed = np.flatnonzero(conv[first[inv]] != conv)  # rows that disagree with their journey's first row
    if len(mixed):
        raise fail(int(mixed[0]), "converted", f"journey {jid[mixed[0]]!r} has both 0 and 1 (one outcome per journey)")
    names = sorted(set(ch.tolist()) - {""})
    if len(names) > MAX_CHANNELS:
        raise DataError(path, f"{len(names)} distinct channels; at most {MAX_CHANNELS} are supported", column="channel")
    if not names:
        raise DataError(path, "no touches: every channel is empty", column="channel")
    rows_per = np.bincount(inv, minlength=n)
    empty = np.flatnonzero((ch == "") & (rows_per[inv] > 1))
    if len(empty):
        raise fail(int(empty[0]), "channel", f"empty channel in journey {jid[empty[0]]!r}, which has touches "
                   "(an empty channel marks a journey without touches: its only row)")
    order_j = np.argsort(first, kind="stable")  # journeys in file order of first appearance
    rank = np.empty(n, dtype=np.int64)
    rank[order_j] = np.arange(n)
    j = rank[inv]
    touch = ch != ""
    order = np.lexsort((np.arange(len(j)), ts, j))
    order = order[touch[order]]
    index = {c: i for i, c in enumerate(names)}
    touches = np.array([index[c] for c in ch[order]], dtype=np.int64)
    lens = np.bincount(j[order], minlength=n)
    outcome = np.zeros(n, dtype=bool)
    outcome[j] = conv > 0
    return Journeys(tuple(names), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), touches, outcome,
                    None, str(path), uniq[order_j])
