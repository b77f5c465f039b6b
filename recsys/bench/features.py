"""``recsys features bench``: batch and online throughput on synthetic clickstreams,
beside a naive pandas groupby baseline on the same data (docs/features.md)."""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.features import batch
from recsys.features.definitions import BEHAVIOURAL, FeatureSet, seconds
from recsys.features.online import OnlineFeatures
from recsys.utils.errors import RecsysError

DAY = 86400.0


def _ids(n: int, prefix: str) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), "")


def synthetic_clickstream(n_events: int, n_users: int = 200_000, n_items: int = 50_000, n_categories: int = 50,
                          seed: int = 0, start: float = 1_700_000_000.0, days: float = 90.0) -> pa.Table:
    """``n_events`` events shaped like EVENT_SCHEMA (+ ``category``), vectorised:
    sessions of ~8 events per user, Zipf item popularity, view -> click -> cart ->
    purchase funnel, lognormal dwell on views, sorted by time."""
    rng = np.random.default_rng(seed)
    n_sess = max(1, n_events // 8)
    sess_user = rng.zipf(1.3, n_sess) % n_users
    sess_start = start + rng.random(n_sess) * days * DAY
    ev_sess = np.sort(rng.integers(0, n_sess, n_events))
    offset = rng.exponential(60.0, n_events)
    t = sess_start[ev_sess] + np.cumsum(offset) - np.repeat(
        np.cumsum(offset)[np.r_[0, np.flatnonzero(np.diff(ev_sess)) + 1]],
        np.diff(np.r_[0, np.flatnonzero(np.diff(ev_sess)) + 1, n_events]))
    item = (rng.zipf(1.2, n_events) - 1) % n_items
    kind = rng.choice(5, n_events, p=[0.62, 0.22, 0.09, 0.04, 0.03]).astype(np.int8)
    value = np.where(kind == 0, np.clip(rng.lognormal(np.log(25.0), 0.6, n_events), 1.0, 1200.0), np.nan)
    order = np.argsort(t, kind="stable")
    types = pa.array(["view", "click", "add_to_cart", "purchase", "login"])
    cat_of = rng.integers(0, n_categories, n_items)
    u = sess_user[ev_sess][order]
    return pa.table({
        "user_id": _ids(n_users, "u").take(pa.array(u)),
        "item_id": _ids(n_items, "i").take(pa.array(item[order])),
        "timestamp": pa.array(t[order]),
        "event_type": types.take(pa.array(kind[order])),
        "value": pa.array(value[order], mask=np.isnan(value[order])),
        "session_id": _ids(n_sess, "s").take(pa.array(ev_sess[order])),
        "channel": pa.array(np.array(["web", "app", "email"])[rng.integers(0, 3, n_sess)][ev_sess[order]]),
        "device_id": _ids(n_users * 2, "d").take(pa.array(u * 2 + rng.integers(0, 2, n_events))),
        "category": _ids(n_categories, "c").take(pa.array(cat_of[item[order]])),
    })


def _pandas_baseline(path: Path, fs: FeatureSet, as_of: float, n_rows: int) -> dict[str, Any]:
    """Naive pandas: read the Parquet, one ``groupby().agg`` per entity over the same
    per-event weights (numpy-vectorised columns), sessions by groupby, write Parquet."""
    try:
        import pandas as pd
    except ImportError:  # pandas serves this baseline only
        raise RecsysError("recsys features bench: its baseline needs pandas (pip install pandas)") from None

    t0 = time.perf_counter()
    df = pd.read_parquet(path).iloc[:n_rows]
    df = df[(df["timestamp"] < as_of) & df["event_type"].isin(BEHAVIOURAL)]
    t, et, val = df["timestamp"].to_numpy(), df["event_type"].to_numpy(), df["value"].to_numpy(dtype=np.float64)
    is_view = et == "view"
    cols = {"event": np.ones(len(df)), "view": is_view * 1.0, "click": (et == "click") * 1.0,
            "add_to_cart": (et == "add_to_cart") * 1.0, "purchase": (et == "purchase") * 1.0,
            "dwell": np.where(is_view, np.nan_to_num(val), 0.0), "dwell_n": (is_view & ~np.isnan(val)) * 1.0}
    cols["dwell_sq"] = cols["dwell"] ** 2
    for h in fs.config.get("half_lives", ["1d", "7d"]):
        d = np.exp2(-(as_of - t) / seconds(h))
        for s in ("event", "view", "click", "dwell"):
            cols[f"{s}_decay_{h}"] = cols[s] * d
    for w in fs.config.get("windows", [{"size": "1h"}, {"size": "1d"}, {"size": "7d"}, {"size": "28d"}]):
        m = t >= as_of - seconds(w["size"])
        for s in ("event", "view", "click"):
            cols[f"{s}_{w['size']}"] = cols[s] * m
    df = df.assign(**cols, dwell_max=np.where(is_view, val, np.nan))
    names = list(cols)
    outs = {}
    for entity, keys in (("user", ["user_id"]), ("item", ["item_id"]), ("user_item", ["user_id", "item_id"]),
                         ("user_category", ["user_id", "category"])):
        g = df.groupby(keys, sort=False)
        agg = g[names].sum()
        agg["dwell_max"] = g["dwell_max"].max()
        agg["last_t"] = g["timestamp"].max()
        agg["ctr"] = agg["click"] / agg["view"].where(agg["view"] > 0)
        agg["dwell_mean"] = agg["dwell"] / agg["dwell_n"].where(agg["dwell_n"] > 0)
        outs[entity] = agg
    sess = df.groupby(["user_id", "session_id"], sort=False).agg(
        n=("event", "sum"), cart=("add_to_cart", "max"), buy=("purchase", "max"))
    sess["abandon"] = (sess["cart"] > 0) & (sess["buy"] == 0)
    su = sess.groupby(level=0).agg(sessions=("n", "size"), depth=("n", "mean"), abandon=("abandon", "sum"))
    outs["user"] = outs["user"].join(su)
    out_dir = path.parent / "baseline_features"
    out_dir.mkdir(exist_ok=True)
    for entity, agg in outs.items():
        agg.reset_index().to_parquet(out_dir / f"{entity}.parquet")
    secs = time.perf_counter() - t0
    return {"rows": int(n_rows), "seconds": secs, "events_per_s": n_rows / secs}


#: figures of the first implementation (polars group-by on string keys, per-accumulator
#: online columns), same bench, same 2-core shared machine - kept in every summary
BEFORE = {"batch_events_per_s": 724_046, "batch_seconds": 13.81, "online_events_per_s": 160_973,
          "online_single_event_updates_per_s": 1_163, "online_read_p99_ms": 4.53, "online_read_cpu_p99_ms": 0.54,
          "load_average": 5.2, "run": "runs/features_bench/2026-11-27_10-39-49"}


def _p(x: Any, q: float) -> float:
    return float(np.percentile(np.asarray(x), q) * 1e3) if len(x) else float("nan")


def per_event_stream(on: Any, rows: list[tuple], read_every: int, known_users: list[Any], q: float,
                     seed: int = 0) -> dict[str, Any]:
    """The per-event API: one ``ingest`` per event, and every ``read_every`` events a
    ``read_user`` - alternately of the user whose event just arrived (its events
    are still buffered: the read pays the flush) and of a random known user.
    Wall-clock and thread-CPU latency per read; throughput includes the reads."""
    rng = np.random.default_rng(seed)
    own_w, own_c, rnd_w, rnd_c = [], [], [], []
    ingest, read_user = on.ingest, on.read_user
    perf, cpu = time.perf_counter, time.thread_time
    load = os.getloadavg()
    t0, c_start = perf(), time.process_time()
    for j, (u, i, t, e, v, s, c) in enumerate(rows):
        ingest(u, i, t, e, v, s, c)
        if j % read_every == read_every - 1:
            own = (j // read_every) % 2 == 0
            user = u if own else known_users[int(rng.integers(len(known_users)))]
            c0, s0 = cpu(), perf()
            read_user(user, q)
            w, cc = perf() - s0, cpu() - c0
            (own_w if own else rnd_w).append(w)
            (own_c if own else rnd_c).append(cc)
    on.flush()
    secs, cpu_s = perf() - t0, time.process_time() - c_start
    lat, lat_cpu = own_w + rnd_w, own_c + rnd_c
    return {"events": len(rows), "seconds": secs, "events_per_s": len(rows) / secs,
            "events_per_cpu_s": len(rows) / cpu_s, "read_every": read_every, "reads": len(lat),
            "read_p50_ms": _p(lat, 50), "read_p99_ms": _p(lat, 99), "read_p99_cpu_ms": _p(lat_cpu, 99),
            "read_own_user_p99_ms": _p(own_w, 99), "read_own_user_p99_cpu_ms": _p(own_c, 99),
            "read_random_user_p99_ms": _p(rnd_w, 99), "read_random_user_p99_cpu_ms": _p(rnd_c, 99),
            "load_average": [*load, *os.getloadavg()]}


def run_bench(fs: FeatureSet, out_dir: str | Path, n_events: int = 10_000_000, n_online: int = 1_000_000,
              micro_batch: int = 1000, n_reads: int = 10_000, baseline_rows: int | None = None,
              n_users: int = 200_000, n_items: int = 50_000, seed: int = 0, read_every: int = 100,
              buffer_size: int = 1024, threads: int | None = None, log: Any = print) -> dict[str, Any]:
    """The numbers of ``recsys features bench`` (see docs/features.md). ``threads``:
    the batch's worker threads (None: every core, :func:`recsys.features.batch.worker_threads`)."""
    import polars as pl

    threads = batch.worker_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    table = synthetic_clickstream(n_events, n_users=n_users, n_items=n_items, seed=seed)
    path = out_dir / "events.parquet"
    pq.write_table(table, path, compression="lz4")
    gen_s = time.perf_counter() - t0
    as_of = float(pc.max(table.column("timestamp")).as_py()) + 1.0
    log(f"generated {n_events:,} events ({path.stat().st_size / 1e6:.0f} MB Parquet) in {gen_s:.1f}s")
    online_events = table.slice(0, n_online)
    del table
    gc.collect()

    # batch: read Parquet -> every feature family (fitted priors included) -> write Parquet
    # (threads inside: process CPU counts every thread; no child processes)
    load_batch = os.getloadavg()
    timer = batch.StageTimer()
    t0, c0 = time.perf_counter(), time.process_time()
    frames, params = batch.snapshot_and_params(path, fs, as_of, "fit", timer=timer, threads=threads)
    with timer("write"):
        written = batch.write_features(frames, out_dir / "features", threads=threads)
    batch_s, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
    write_s = timer.stages["write"]["wall_s"]
    rows = {e: f.height for e, f in frames.items()}
    del frames
    gc.collect()
    stages = ", ".join(f"{k} {v['wall_s']:.2f}/{v['cpu_s']:.2f}" for k, v in timer.stages.items())
    log(f"batch: {n_events / batch_s:,.0f} events/s ({batch_s:.2f}s, write {write_s:.2f}s, process CPU "
        f"{batch_cpu:.2f}s; load {load_batch[0]:.1f}; stages wall/CPU s: {stages}; rows {rows})")

    # naive pandas baseline on the same file (first baseline_rows events)
    base_rows = int(min(baseline_rows or n_events, n_events))
    base = _pandas_baseline(path, fs, as_of, base_rows)
    log(f"pandas baseline: {base['events_per_s']:,.0f} events/s on {base_rows:,} events ({base['seconds']:.2f}s)")

    # online: micro-batched updates over a time-ordered stream, then reads
    on = OnlineFeatures(fs, params, capacity=1 << 16)
    t0 = time.perf_counter()
    for s in range(0, online_events.num_rows, micro_batch):
        on.update(online_events.slice(s, micro_batch))
    online_s = time.perf_counter() - t0
    single = OnlineFeatures(fs, params)
    n_single = min(5000, online_events.num_rows)
    t0 = time.perf_counter()
    for s in range(n_single):
        single.update(online_events.slice(s, 1))
    single_s = time.perf_counter() - t0
    # the per-event API over the same stream, reads interleaved (flush cost inside the reads)
    cols = [online_events.column(c).to_pylist() if c in online_events.column_names else [None] * online_events.num_rows
            for c in ("user_id", "item_id", "timestamp", "event_type", "value", "session_id", "category")]
    stream = list(zip(*cols))
    del cols
    per_event = OnlineFeatures(fs, params, capacity=1 << 16, buffer_size=buffer_size)
    gc.collect()
    gc.freeze()
    try:
        pe = per_event_stream(per_event, stream, read_every, sorted(on.tables["user"].index), on.watermark + 1.0,
                              seed)
    finally:
        gc.unfreeze()
    del stream, per_event
    log(f"online per-event API: {pe['events_per_s']:,.0f} events/s ({pe['events_per_cpu_s']:,.0f} per CPU-second), "
        f"read every {read_every} events: p99 {pe['read_p99_ms']:.3f} ms wall / {pe['read_p99_cpu_ms']:.3f} ms CPU "
        f"(own user, flush included: {pe['read_own_user_p99_ms']:.3f} / {pe['read_own_user_p99_cpu_ms']:.3f}; "
        f"random user: {pe['read_random_user_p99_ms']:.3f} / {pe['read_random_user_p99_cpu_ms']:.3f}); "
        f"load {pe['load_average'][0]:.1f}")
    users = list(on.tables["user"].index)
    rng = np.random.default_rng(seed)
    pick = [users[i] for i in rng.integers(0, len(users), n_reads)]
    q = on.watermark + 1.0
    lat, cpu = np.empty(n_reads), np.empty(n_reads)
    gc.collect()
    gc.freeze()  # long-lived state out of the collector's way, as a serving process would do
    try:
        for i, u in enumerate(pick):
            c0, s0 = time.thread_time(), time.perf_counter()
            on.read_user(u, q)
            lat[i], cpu[i] = time.perf_counter() - s0, time.thread_time() - c0
    finally:
        gc.unfreeze()
    n_user_features = len(on.read_user(pick[0], q))
    online_rate = online_events.num_rows / online_s
    log(f"online: {online_rate:,.0f} events/s (micro-batches of {micro_batch}), single-event updates "
        f"{n_single / single_s:,.0f}/s; read of {n_user_features} user features p50 "
        f"{np.percentile(lat, 50) * 1e3:.3f} ms, p99 {np.percentile(lat, 99) * 1e3:.3f} ms "
        f"(thread CPU time p99 {np.percentile(cpu, 99) * 1e3:.3f} ms)")
    return {
        "before": BEFORE,
        "n_events": n_events, "batch_seconds": batch_s, "batch_events_per_s": n_events / batch_s,
        "batch_cpu_seconds": batch_cpu, "batch_write_seconds": write_s, "batch_load_average": list(load_batch),
        "batch_stages": timer.stages, "batch_threads": threads,
        "batch_rows": rows, "batch_files": written, "n_features": len(fs.features), "feature_set": fs.version,
        "baseline": {"engine": "pandas groupby (naive)", **base},
        "baseline_events_per_s": base["events_per_s"],
        "batch_vs_baseline": (n_events / batch_s) / base["events_per_s"],
        "online_events": online_events.num_rows, "online_micro_batch": micro_batch,
        "online_events_per_s": online_rate, "online_single_event_updates_per_s": n_single / single_s,
        # reads interleaved with the per-event stream (flush cost included): the headline p99
        "online_per_event_api_events_per_s": pe["events_per_s"], "online_per_event": pe,
        "online_read_p99_ms": pe["read_p99_ms"], "online_read_p99_cpu_ms": pe["read_p99_cpu_ms"],
        "load_average": pe["load_average"][:3],
        # reads of an idle state (no pending events), as the first bench measured them
        "online_read_p50_ms": float(np.percentile(lat, 50) * 1e3), "online_reads": n_reads,
        "online_read_idle_p99_ms": float(np.percentile(lat, 99) * 1e3),
        "online_read_cpu_p99_ms": float(np.percentile(cpu, 99) * 1e3),
        "online_user_features": n_user_features,
        "generate_seconds": gen_s, "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(), "polars_threads": pl.thread_pool_size(),
    }


def summary_line(res: dict[str, Any]) -> str:
    """The one line ``recsys features bench`` prints."""
    return (f"batch {res['batch_events_per_s']:,.0f} events/s vs pandas {res['baseline_events_per_s']:,.0f} "
            f"({res['batch_vs_baseline']:.1f}x); online {res['online_events_per_s']:,.0f} events/s, "
            f"(per-event API {res['online_per_event_api_events_per_s']:,.0f} events/s), read p99 "
            f"{res['online_read_p99_ms']:.3f} ms wall / {res['online_read_p99_cpu_ms']:.3f} ms CPU; "
            f"load avg {res['loadavg_before'][0]:.1f}")
