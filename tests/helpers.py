"""Small builders shared by tests (tests only; library code never imports this)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from recsys.data.base import LoadedData
from recsys.data.prepare import PreparedData, build
from recsys.schema import conform_events


def events_table(rows: list[tuple[str, str, float]], event_type: str = "click") -> pa.Table:
    users, items, ts = zip(*rows) if rows else ((), (), ())
    return conform_events(pa.table({
        "user_id": pa.array(users, pa.string()),
        "item_id": pa.array(items, pa.string()),
        "timestamp": pa.array(ts, pa.float64()),
        "event_type": pa.array([event_type] * len(rows), pa.string()),
    }))


def prepared(rows: list[tuple[str, str, float]], timestamp_kind: str = "unix") -> PreparedData:
    data = build(LoadedData(events_table(rows), timestamp_kind=timestamp_kind), "t", {})
    data.meta["fingerprint"] = "test"
    return data


ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None, env: dict | None = None, fresh: bool = False
        ) -> subprocess.CompletedProcess:
    """``python -m recsys <args>`` as its own process (real exit codes, argv, working
    directory, environment, stdout / stderr): forked from the worker's fork server
    (``tests/forkserver.py``: torch and Lightning imported once), or with ``fresh``
    (a test of what a command imports or prints while importing) a new interpreter."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    from tests.forkserver import server

    fs = None if fresh else server()
    if fs is not None:
        return fs.run(list(args), cwd or ROOT, full_env, timeout=600)
    return subprocess.run([sys.executable, "-m", "recsys", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=600)


def ranker_run(run_dir: Path, n_parity_rows: int = 1200, train_steps: int = 30, seed: int = 0,
               behavioural: bool = False) -> Path:
    """A small `recsys rank train`-like run directory (model/, summary.json) on a
    tiny synthetic world, without the CLI: a few Adam steps on a DCN-v2
    (``behavioural``: plus the world's behavioural features as of each request)."""
    from recsys.data.synthetic import SyntheticConfig
    from recsys.training.ranker.quick import quick_ranker_run

    return quick_ranker_run(run_dir, SyntheticConfig(n_users=120, n_items=80, n_categories=4, n_requests=2000,
                                                     seed=seed),
                            deep=(32, 16), train_steps=train_steps, seed=seed, n_parity_rows=n_parity_rows,
                            behavioural=behavioural,
                            summary={"data": {"fingerprint": "tiny-world"}, "test/auc": float("nan")})
