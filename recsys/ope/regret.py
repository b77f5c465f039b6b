"""The study behind ``recsys ope regret``: policies served online in the synthetic
world (bandits learn after every batch), cumulative regret against the oracle slate.

With ``log_dir`` every policy's interactions are also written as a log in the
logged-feedback format (:mod:`recsys.data.bandit_logs`, docs/ope.md): one Parquet
file per policy, ``<log_dir>/<policy>.parquet``, with the columns ``request_id``
(0..T-1), ``user_id``, ``timestamp`` (the request's number: simulated time),
``position`` (0-based), ``item_id``, ``click``, ``propensity`` (the policy's own
probability of the shown item at that position when it was drawn: exact for
epsilon-greedy and the Monte-Carlo distribution Thompson samplers act on, 1.0 for a
deterministic slate) and ``logging_policy`` (the policy name), plus
``click_probability`` (the world's true click probability of that row, for checks;
readers ignore it). The folder is written atomically (all files or none), so
``recsys ope logs=<log_dir>/<policy>.parquet data=synthetic policy=...`` can evaluate
any policy on a bandit's log."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.ope.policies import PolicyFactory
from recsys.ope.setup import Setup
from recsys.policies import oracle_value, simulate
from recsys.policies.simulation import SimulationResult
from recsys.utils.errors import RecsysError
from recsys.utils.io import atomic_dir

CHECKPOINTS = (1000, 5000, 10000, 50000)


def log_table(s: Setup, sim: SimulationResult, policy: str) -> pa.Table:
    """One simulated run as a logged-feedback table (columns: see the module docstring)."""
    t, k = sim.actions.shape
    req = np.repeat(np.arange(t, dtype=np.int64), k)
    pos = np.tile(np.arange(k, dtype=np.int64), t)
    users = np.repeat(sim.users, k)
    items = sim.actions.ravel()
    if (items <= 0).any():
        raise RecsysError(f"policy {policy!r} showed the padding action 0: its distribution is not over the catalogue")
    props = sim.propensities.ravel().astype(np.float64)
    truth = s.world.click_probability(users, items, pos) if s.world is not None else np.full(len(items), np.nan)
    return pa.table({
        "request_id": pa.array(req),
        "user_id": pa.array(s.log.user_ids[users].astype(str), pa.string()),
        "timestamp": pa.array(req.astype(np.float64)),
        "position": pa.array(pos),
        "item_id": pa.array(s.log.item_ids[items].astype(str), pa.string()),
        "click": pa.array(sim.clicks.ravel().astype(np.int64)),
        "propensity": pa.array(props),
        "logging_policy": pa.array([policy] * len(req), pa.string()),
        "click_probability": pa.array(np.asarray(truth, dtype=np.float64)),
    })


def _check_log_dir(path: Path) -> None:
    """Refuse a ``log_dir`` that exists and holds anything but a previous run's logs
    (it is replaced as a whole)."""
    if path.exists() and not path.is_dir():
        raise RecsysError(f"regret.log_dir={path}: exists and is not a folder")
    if path.is_dir():
        other = [p.name for p in path.iterdir() if p.suffix != ".parquet"]
        if other:
            raise RecsysError(f"regret.log_dir={path}: exists and holds {other[0]!r}, not a bandit-log folder "
                              "(it would be replaced); name a new or empty folder")


def run_regret(s: Setup, policies: Mapping[str, PolicyFactory], n_requests: int, batch_size: int, seed: int,
               plot_path: str | Path | None = None, log_dir: str | Path | None = None) -> dict[str, Any]:
    """Serve ``n_requests`` requests (users drawn from the log with ``seed``) with each
    policy, built untrained by its factory (name -> ``make(setup, seed)``).

    Returns a JSON-ready dict: ``regret`` (name -> cumulative regret at the checkpoints
    ``regret@<n>`` and ``value_end``, expected clicks per slate over the last 10% of
    requests), ``oracle_value`` (the same for the oracle), ``n_requests``,
    ``batch_size``, ``slate_size``, ``plot``, ``timings``, and with ``log_dir`` the
    written ``logs`` (name -> path, rows, realised mean clicks per request).
    """
    t0 = time.perf_counter()
    if s.world is None:
        raise RecsysError("`recsys ope regret` needs data=synthetic")
    if log_dir is not None:
        _check_log_dir(Path(log_dir))
    m, k = s.n_actions, s.slate_size
    users = np.random.default_rng(seed).choice(s.log.users, n_requests)
    checkpoints = sorted({c for c in CHECKPOINTS if c < n_requests} | {n_requests})
    tail = max(1, len(users) // 10)
    curves, rows, tables = {}, {}, {}
    for name, make in policies.items():
        sim = simulate(make(s, seed), s.world, users, m, k, batch_size=batch_size, seed=seed)
        if log_dir is not None:
            tables[name] = log_table(s, sim, name)
        cum = sim.cumulative_regret
        curves[name] = cum
        rows[name] = {f"regret@{c}": float(cum[c - 1]) for c in checkpoints}
        rows[name]["value_end"] = float(sim.expected_reward[-tail:].mean())
    oracle = float(np.mean(oracle_value(s.world, users[-tail:], m, k)))
    out: dict[str, Any] = {"regret": rows, "oracle_value": oracle, "n_requests": n_requests,
                           "batch_size": batch_size, "slate_size": k}
    if plot_path is not None:
        from recsys.evaluation.ope_report import plot_regret

        out["plot"] = str(plot_regret(plot_path, curves))
    if log_dir is not None:
        out["logs"] = write_logs(log_dir, tables)
    out["timings"] = {"total_s": time.perf_counter() - t0}
    return out


def write_logs(log_dir: str | Path, tables: Mapping[str, pa.Table]) -> dict[str, dict[str, Any]]:
    """``<log_dir>/<name>.parquet`` per table, the folder replaced atomically; returns
    name -> ``{path, rows, requests, clicks_per_request}``."""
    log_dir = Path(log_dir)
    _check_log_dir(log_dir)
    out = {}
    with atomic_dir(log_dir) as tmp:
        for name, table in tables.items():
            pq.write_table(table, tmp / f"{name}.parquet")
            n_req = len(set(table.column("request_id").to_numpy().tolist()))
            out[name] = {"path": str(log_dir / f"{name}.parquet"), "rows": table.num_rows, "requests": n_req,
                         "clicks_per_request": float(pc.sum(table.column("click")).as_py()) / max(n_req, 1)}
    return out
