"""Batch features: every entity's features as of one time ``T`` (the snapshot).

:func:`snapshot` / :func:`snapshot_and_params` - the path ``recsys features
build``, the bench and erasure use: the events are read and integer-encoded once
(:mod:`recsys.features.encode`), every accumulator of every entity comes from one
sort of the events by (user, item, type) (:mod:`recsys.features.sorted_pass`) with
the per-user session counts beside it (:mod:`recsys.features.session_counts`),
then :func:`~recsys.features.transforms.evaluate` turns them into feature values,
fitting the priors and cohort statistics on the same accumulators when asked.
Work runs on ``threads`` worker threads around numpy, pyarrow and polars calls
that release the GIL; the result has the same bits whatever the number.

Features of arbitrary (entity key, time) query rows, each seeing only events
strictly before its own time, are in :mod:`recsys.features.asof`.
"""
from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import polars as pl

from recsys.features.definitions import ENTITIES, PARAM_TRANSFORMS, SOURCES, Accumulator, FeatureSet
from recsys.features.encode import EncodedEvents, encode_events
from recsys.features.session_counts import session_counts
from recsys.features.sorted_pass import sorted_accumulators
from recsys.features.transforms import evaluate, fit_params


class StageTimer:
    """Wall-clock and process-CPU seconds (every thread) per named stage:
    ``with timer("read"): ...``; ``timer.stages`` -> {name: {"wall_s", "cpu_s"}}."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            st = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            st["wall_s"] += time.perf_counter() - t0
            st["cpu_s"] += time.process_time() - c0


def _stage(timer: StageTimer | None, name: str) -> Any:
    return timer(name) if timer is not None else contextlib.nullcontext()


def worker_threads(threads: int | None) -> int:
    """Worker threads of the snapshot: ``threads``, or every core of the machine when
    None (``threads: null`` in the features configs). They encode the id columns,
    run the sorted pass's chunk parts (at most :data:`~recsys.features.sorted_pass.PARTS`
    at once), evaluate and write the entities side by side; the session counts run
    beside the sorted pass on one more."""
    return max(int(threads or os.cpu_count() or 1), 1)


def snapshot_accumulators(events: Any, fs: FeatureSet, as_of: float, label: str = "<events>",
                          entities: list[str] | None = None, threads: int | None = None) -> dict[str, pl.DataFrame]:
    """Accumulator values of every entity key seen before ``as_of`` (key columns
    with the raw ids, one float64 column per accumulator). ``threads``: see
    :func:`worker_threads`; the result is the same whatever the number."""
    return {e: keys.with_columns(pl.Series(name, v) for name, v in vals.items())
            for e, (keys, vals) in _snapshot_arrays(events, fs, as_of, label, entities, threads).items()}


def _snapshot_arrays(events: Any, fs: FeatureSet, as_of: float, label: str = "<events>",
                     entities: list[str] | None = None, threads: int | None = None,
                     timer: StageTimer | None = None) -> dict[str, tuple[pl.DataFrame, dict[str, np.ndarray]]]:
    """entity -> (key columns with the raw ids, accumulator name -> float64 values)."""
    threads = worker_threads(threads)
    entities = entities or fs.entities
    with _stage(timer, "read_encode"):
        ev = encode_events(events, as_of, label, threads)
    accs = {e: fs.entity_accumulators(e) for e in entities}
    sess = [a for e in entities for a in accs[e] if SOURCES[a.source].session]
    with _stage(timer, "accumulate"), ThreadPoolExecutor(1) as side:  # sessions beside the sorted pass
        sessions = side.submit(session_counts, ev, sess) if sess else None
        results = sorted_accumulators(ev, accs, as_of, threads=threads)
        per_user = sessions.result() if sessions is not None else {}
    with _stage(timer, "keys"):
        return _with_keys(ev, accs, results, per_user, threads)


def _with_keys(ev: EncodedEvents, accs: dict[str, list[Accumulator]], results: dict, per_user: dict[str, np.ndarray],
               threads: int) -> dict[str, tuple[pl.DataFrame, dict[str, np.ndarray]]]:
    """Raw ids of the output keys and the session counts of their users (entities
    side by side: pyarrow ``take`` and the polars casts release the GIL)."""

    def one(entity: str) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
        vals, keys = results[entity]
        for a in accs[entity]:
            if a.name in per_user:
                vals[a.name] = per_user[a.name][keys["user_id"]]
        cols = [pl.Series(k, ev.dicts[k].take(keys[k])).cast(pl.String) for k in ENTITIES[entity]]
        return pl.DataFrame(cols), {a.name: vals[a.name] for a in accs[entity]}

    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(accs, pool.map(one, accs)))


def features_frame(fs: FeatureSet, entity: str, keys: pl.DataFrame, values: Mapping[str, np.ndarray]) -> pl.DataFrame:
    """Key columns plus one column per feature, cast to each feature's dtype."""
    cols = {}
    for f in fs.entity_features(entity):
        if f.name not in values:
            continue
        v = values[f.name]
        cols[f.name] = pl.Series(f.name, np.round(v) if f.dtype.startswith("int") else v).cast(
            {"int64": pl.Int64, "float32": pl.Float32}.get(f.dtype, pl.Float64))
    return keys.with_columns(**cols) if cols else keys


def snapshot(events: Any, fs: FeatureSet, as_of: float, params: Mapping[str, Any] | None,
             entities: list[str] | None = None, label: str | None = None,
             threads: int | None = None) -> dict[str, pl.DataFrame]:
    """Every entity's features as of ``as_of`` (events strictly before it)."""
    return snapshot_and_params(events, fs, as_of, params, entities, label, threads=threads)[0]


def snapshot_and_params(events: Any, fs: FeatureSet, as_of: float, params: Mapping[str, Any] | str | None,
                        entities: list[str] | None = None, label: str | None = None,
                        timer: StageTimer | None = None, threads: int | None = None
                        ) -> tuple[dict[str, pl.DataFrame], dict[str, Any] | None]:
    """:func:`snapshot` plus the params used. ``params``: fitted priors / cohort
    statistics, ``None`` (leave the fitted features out) or ``"fit"``: fit them on
    this very snapshot (events before ``as_of``), one pass for both. ``timer``:
    records the stages (read_encode, accumulate, keys, fit_evaluate). ``threads``:
    see :func:`worker_threads`."""
    if label is None and isinstance(events, (str, Path)):
        label = str(events)
    threads = worker_threads(threads)
    raw = _snapshot_arrays(events, fs, as_of, label or "<events>", entities, threads, timer)
    accs = {e: vals for e, (_, vals) in raw.items()}
    if isinstance(params, str) and params != "fit":
        raise ValueError(f"params={params!r}: expected a mapping, None or 'fit'")
    with _stage(timer, "fit_evaluate"), ThreadPoolExecutor(threads) as pool:  # entities side by side

        def per_entity(fn: Any) -> dict[str, Any]:
            return dict(zip(raw, pool.map(fn, raw)))

        if params == "fit":
            need = _fit_needs_features(fs)  # entities whose fit reads feature values, not only accumulators
            snaps = per_entity(lambda e: {**accs[e], **(evaluate(fs, e, accs[e], as_of, None) if e in need else {})})
            params = {**fit_params(fs, snaps), "_fit_time": float(as_of)}
        out = per_entity(lambda e: features_frame(fs, e, raw[e][0], evaluate(fs, e, accs[e], as_of, params)))
    return out, (dict(params) if params is not None else None)


def _fit_needs_features(fs: FeatureSet) -> set[str]:
    """Entities whose fitted parts read feature values (the source of a z-score or
    rank); the priors read accumulators only, so the other entities skip
    :func:`evaluate` when fitting."""
    return {f.entity for f in fs.features if f.transform in PARAM_TRANSFORMS
            and any(name not in fs.accumulators for name in (*f.inputs, f.segment) if name)}


def fit(events: Any, fs: FeatureSet, fit_time: float, label: str | None = None,
        threads: int | None = None) -> dict[str, Any]:
    """Fitted priors and cohort statistics from the events before ``fit_time``."""
    if label is None and isinstance(events, (str, Path)):
        label = str(events)
    snaps, need = {}, _fit_needs_features(fs)
    for entity, (_, accs) in _snapshot_arrays(events, fs, fit_time, label or "<events>", threads=threads).items():
        snaps[entity] = {**accs, **(evaluate(fs, entity, accs, fit_time, None) if entity in need else {})}
    params = fit_params(fs, snaps)
    params["_fit_time"] = float(fit_time)
    return params


def write_features(frames: Mapping[str, pl.DataFrame], out_dir: str | Path,
                   threads: int | None = None) -> dict[str, str]:
    """One Parquet per entity, each written atomically (entities side by side on up to
    ``threads`` threads: see :func:`worker_threads`)."""
    from recsys.utils.io import atomic_path

    def write(entity: str, df: pl.DataFrame) -> str:
        path = Path(out_dir) / f"{entity}.parquet"
        with atomic_path(path) as tmp:
            df.write_parquet(tmp, compression="lz4", statistics=False)
        return str(path)

    # the files are independent and polars writes without the GIL
    with ThreadPoolExecutor(min(len(frames), worker_threads(threads)) or 1) as pool:
        futures = {entity: pool.submit(write, entity, df) for entity, df in frames.items()}
        return {entity: f.result() for entity, f in futures.items()}
