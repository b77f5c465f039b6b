"""``recsys bench gpu``: the accelerator path end to end, one device, one run.

1. **Training throughput** (sequences/s) of a sequence model (SASRec) through the
   framework (the :class:`~recsys.training.sequence.module.SequentialRecModule` in a
   Lightning ``Trainer``, bf16 autocast on CUDA), eager and ``torch.compile``d,
   against a bare PyTorch loop over the same net class, loss, batches (the same data
   module's bucketed loader), optimizer and gradient clipping, in the same run
   (:func:`train_throughput`). Each run builds its net from the same seed, trains
   ``warmup_epochs`` untimed epochs (compilation, allocator warm-up), then
   ``epochs`` timed ones (device synchronised at both ends of every epoch).
2. **Full-ranking evaluation** (:func:`evaluate_on`): the trained weights scored by
   the module's ``score_sequences`` and ranked exactly by
   :func:`~recsys.evaluation.ranking.evaluate_ranking` on the device and on the CPU;
   best-of-``repeats`` milliseconds and metric equality.
3. **Exact top-k** (:func:`exact_topk`): :class:`~recsys.retrieval.gpu.TorchExactIndex`
   over ``n_items`` clustered vectors (:mod:`recsys.retrieval.clustered`), queries in
   batches of ``query_batch``; checked against faiss ``Flat`` on a few queries.
4. **IVF** (:func:`ivf_search`): one ``IVF{nlist},Flat`` index, searched on the CPU
   (the baseline) and, where faiss sees a GPU (``select_backend("auto") ==
   "faiss-gpu"``), on the GPU; recall@k against the exact rows of step 3.
5. **ONNX Runtime** (:func:`ort_provider`): a ranker (random weights) exported with
   the project's exporter, scored by the CUDA provider (or any ``provider``) and the
   CPU provider on the same requests: max |difference|, p50 / p99 latency.

Nothing here reads a config: ``recsys.cli.bench_cmd`` builds the objects.
"""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as L
import torch

from recsys.bench.export import time_calls
from recsys.evaluation.ranking import evaluate_ranking
from recsys.training.sequence.data import SequenceDataModule, padded_histories
from recsys.training.sequence.module import SequentialRecModule
from recsys.utils.errors import RecsysError

#: the goals on an H100-class card: key -> (comparison, threshold, what it measures)
GOALS = {
    "framework_vs_bare": (">=", 0.8, "framework / bare loop, seq/s (best mode)"),
    "train_seq_per_s_compiled": (">=", 30_000.0, "framework seq/s, torch.compile"),
    "eval_beauty_ms": ("<=", 20.0, "full-ranking evaluation, ms"),
    "exact_qps": (">=", 100_000.0, "exact top-10, queries/s"),
}


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement a run does (``configs/bench_gpu.yaml``: ``sizes.full``
    on a GPU, ``sizes.tiny`` for the same code in seconds on a CPU).

    Args:
        warmup_epochs, epochs: untimed then timed training epochs per run.
        modes: ``eager`` and / or ``compiled`` (``torch.compile`` with ``compile_backend``).
        eval_repeats: timed evaluations (best kept) after one untimed call.
        eval_tolerance: largest |device - CPU| difference of a metric still called equal.
        n_items, dim, n_queries, query_batch, k: the retrieval problem (clustered vectors).
        repeats: passes over the queries per retrieval timing (best kept).
        nlist, nprobe, ivf_train_size: the IVF index and its probe count.
        ort_batch_sizes, ort_requests: ONNX Runtime requests (rows per call, timed calls).
        threads: torch CPU threads for the whole run (None: torch's default); 1 keeps a
            tiny run on a shared 2-core machine from stalling in OpenMP barriers.
    """

    warmup_epochs: int = 1
    epochs: int = 3
    modes: Sequence[str] = ("eager", "compiled")
    compile_backend: str = "inductor"
    eval_repeats: int = 10
    eval_tolerance: float = 1e-6
    n_items: int = 1_000_000
    dim: int = 64
    n_queries: int = 8192
    query_batch: int = 1024
    k: int = 10
    repeats: int = 3
    nlist: int = 4096
    nprobe: int = 32
    ivf_train_size: int | None = 262_144
    ort_batch_sizes: Sequence[int] = (1, 256)
    ort_requests: int = 500
    threads: int | None = None


def resolve_device(requested: str) -> torch.device:
    """``auto`` (CUDA when torch sees it, else CPU), ``cuda`` or ``cpu``."""
    if requested not in ("auto", "cuda", "cpu"):
        raise RecsysError(f"device={requested!r}: expected auto, cuda or cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RecsysError("device=cuda: torch sees no CUDA device here (device=auto falls back to the CPU)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


# ----------------------------------------------------------------------------- training

class _EpochTimer(L.Callback):
    """Seconds and sequences of every training epoch (device synchronised)."""

    def __init__(self, device: torch.device):
        self.device, self.epochs, self._t0, self._n = device, [], 0.0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        self._t0, self._n = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._n += len(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        self.epochs.append((time.perf_counter() - self._t0, self._n))


def _rate(epochs: list[tuple[float, int]], warmup: int) -> dict[str, Any]:
    timed = epochs[warmup:]
    secs, n = sum(s for s, _ in timed), sum(k for _, k in timed)
    return {"seq_per_s": n / secs if secs > 0 else float("nan"), "timed_s": secs, "timed_sequences": n,
            "warmup_s": sum(s for s, _ in epochs[:warmup]), "epoch_s": [s for s, _ in epochs]}


def framework_run(module: SequentialRecModule, dm: SequenceDataModule, device: torch.device, precision: str,
                  warmup_epochs: int, epochs: int, gradient_clip_val: float | None) -> dict[str, Any]:
    """Train ``module`` for ``warmup_epochs + epochs`` epochs in a Lightning ``Trainer``
    (no validation, checkpoints, logger or progress bar); the timed epochs' rate."""
    timer = _EpochTimer(device)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                        max_epochs=warmup_epochs + epochs, gradient_clip_val=gradient_clip_val, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                        log_every_n_steps=50, callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    return _rate(timer.epochs, warmup_epochs)


def bare_run(net: torch.nn.Module, loss: torch.nn.Module, optimizer: Callable, dm: SequenceDataModule,
             device: torch.device, bf16: bool, warmup_epochs: int, epochs: int,
             gradient_clip_val: float | None) -> dict[str, Any]:
    """The same training as the module's ``training_step`` in a plain loop: the data
    module's batches, loss on the labelled positions only, ``optimizer(net.parameters())``,
    gradient norm clipped, bf16 autocast when ``bf16``."""
    net.to(device).train()
    loss.to(device)
    if hasattr(loss, "set_item_counts"):
        loss.set_item_counts(dm.item_counts)
    opt = optimizer(net.parameters())
    out = []
    for epoch in range(warmup_epochs + epochs):
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(epoch)
        synchronize(device)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                hidden = net(batch.input)  # B, T, D
                real = batch.labels > 0
                value = loss(hidden[real], batch.labels[real], net.output_embeddings())
            opt.zero_grad(set_to_none=True)
            value.backward()
            if gradient_clip_val:
                torch.nn.utils.clip_grad_norm_(net.parameters(), gradient_clip_val)
            opt.step()
            n += len(batch)
        synchronize(device)
        out.append((time.perf_counter() - t0, n))
    return _rate(out, warmup_epochs)


def train_throughput(make_net: Callable[[], torch.nn.Module], make_module: Callable[..., SequentialRecModule],
                     make_loss: Callable[[], torch.nn.Module], optimizer: Callable, dm: SequenceDataModule,
                     device: torch.device, *, precision: str, modes: Sequence[str] = ("eager", "compiled"),
                     compile_backend: str = "inductor", warmup_epochs: int = 1, epochs: int = 3,
                     gradient_clip_val: float | None = 1.0, seed: int = 0,
                     log: Callable[[str], None] = print) -> tuple[dict[str, Any], torch.nn.Module]:
    """Framework vs bare loop per mode (``eager``, ``compiled``), framework first, each
    net from ``torch.manual_seed(seed)``. ``make_module(net, loss, compile=...)`` wraps a
    net in the Lightning module. Returns the per-mode figures and the eager framework
    run's trained net (for the evaluation)."""
    bf16 = precision.startswith("bf16")
    res: dict[str, Any] = {}
    trained = None
    for mode in modes:
        if mode not in ("eager", "compiled"):
            raise RecsysError(f"train mode {mode!r}: expected eager or compiled")
        compiled = mode == "compiled"
        torch._dynamo.reset()  # compilations (in the warm-up epochs) start afresh in every mode
        torch.manual_seed(seed)
        module = make_module(make_net(), make_loss(), compile=compiled, compile_backend=compile_backend)
        fw = framework_run(module, dm, device, precision, warmup_epochs, epochs, gradient_clip_val)
        if trained is None or not compiled:
            trained = module.net
        torch.manual_seed(seed)
        net = make_net()
        if compiled:
            net.compile(backend=compile_backend)
        bare = bare_run(net, make_loss(), optimizer, dm, device, bf16, warmup_epochs, epochs, gradient_clip_val)
        del net, module
        if device.type == "cuda":
            torch.cuda.empty_cache()
        res[mode] = {"framework": fw, "bare": bare, "framework_vs_bare": fw["seq_per_s"] / bare["seq_per_s"]}
        log(f"train {mode}: framework {fw['seq_per_s']:.0f} seq/s, bare {bare['seq_per_s']:.0f} seq/s "
            f"(x{res[mode]['framework_vs_bare']:.3f}); warm-up {fw['warmup_s']:.1f}s / {bare['warmup_s']:.1f}s")
    return res, trained


# ----------------------------------------------------------------------------- evaluation

def evaluate_on(module: SequentialRecModule, es: Any, n_items: int, ks: Sequence[int], device: torch.device,
                repeats: int = 5) -> tuple[float, dict[str, float]]:
    """(best-of-``repeats`` ms, metrics) of the exact full-ranking evaluation of
    ``es`` (an EvalSet) on ``device``: histories scored by the module's
    ``score_sequences`` (fp32, history excluded), ranked by ``evaluate_ranking``
    (chunk size chosen for the device). One untimed call first."""
    module = module.to(device).eval()
    max_len = module.net.max_len

    def score(users: np.ndarray, hist: Any) -> torch.Tensor:
        return module.score_sequences(padded_histories(hist, max_len), hist)

    def once() -> dict[str, float]:
        return evaluate_ranking(score, es.users, es.history, es.targets, n_items, ks, device=device).metrics

    metrics = once()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        again = once()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
        if again != metrics:
            raise RecsysError(f"evaluation on {device} is not repeatable: {again} != {metrics}")
    return best * 1e3, metrics


def eval_equality(device_metrics: dict[str, float], cpu_metrics: dict[str, float],
                  tolerance: float) -> dict[str, Any]:
    """Every metric of the device run against the CPU run: max |difference|, bitwise
    equality and equality within ``tolerance`` (fp32 scores computed by other kernels
    may reorder items whose scores differ by ~1e-7)."""
    if set(device_metrics) != set(cpu_metrics):
        return {"equal": False, "exact": False, "max_abs_diff": float("inf"), "tolerance": tolerance}
    diff = max((abs(device_metrics[k] - cpu_metrics[k]) for k in device_metrics), default=0.0)
    return {"equal": bool(diff <= tolerance), "exact": device_metrics == cpu_metrics, "max_abs_diff": diff,
            "tolerance": tolerance}


def cpu_copy(net: torch.nn.Module, make_net: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A fresh eager net of the same class with ``net``'s weights, on the CPU."""
    twin = make_net()
    twin.load_state_dict({k: v.detach().to("cpu") for k, v in net.state_dict().items()})
    return twin


# ----------------------------------------------------------------------------- retrieval

def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, query_batch: int, device: torch.device,
               repeats: int = 3, check_queries: int = 64) -> tuple[dict[str, Any], np.ndarray]:
    """Queries/s of the torch exact top-``k`` on ``device`` (best of ``repeats`` passes
    over ``queries`` in batches of ``query_batch``, results back in host memory), and
    its rows; the first ``check_queries`` rows compared with faiss ``Flat`` on the CPU."""
    from recsys.retrieval.build import exact_search, recall_at_k
    from recsys.retrieval.gpu import TorchExactIndex
    from recsys.retrieval.tune import time_search

    ix = TorchExactIndex(vectors, "ip", device=str(device), query_batch=query_batch)
    ix.search(queries[:query_batch], k)  # warm-up
    secs, rows = time_search(ix.search, queries, k, repeats=repeats, batch=query_batch)
    flat_rows = exact_search(vectors, queries[:check_queries], k, "ip")[1]
    del ix
    return {"qps": len(queries) / secs, "seconds": secs, "n_items": len(vectors), "dim": vectors.shape[1],
            "n_queries": len(queries), "query_batch": query_batch, "k": k, "backend": "torch exact top-k",
            f"recall_at_{k}_vs_faiss_flat": recall_at_k(rows[:check_queries], flat_rows, k)}, rows


def ivf_search(vectors: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray, *, nlist: int, nprobe: int,
               k: int, query_batch: int, repeats: int = 3, train_size: int | None = None,
               seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(faiss_cpu, faiss_gpu)``: an ``IVF{nlist},Flat`` index (built on the GPU when
    faiss sees one) searched with ``nprobe`` on the CPU and, where available, on the
    GPU: recall@k against ``exact_rows``, queries/s. ``faiss_gpu`` is
    ``{"available": False, "reason": ...}`` without a GPU build of faiss."""
    import faiss

    from recsys.retrieval.build import IndexSpec, build_index, recall_at_k
    from recsys.retrieval.bundle import set_search_params
    from recsys.retrieval.gpu import select_backend, to_faiss_gpu
    from recsys.retrieval.tune import time_search

    backend = select_backend("auto")
    spec = IndexSpec(name="ivf_flat", factory=f"IVF{nlist},Flat", train_size=train_size,
                     search_params={"nprobe": nprobe})
    index, info = build_index(vectors, spec, "ip", backend="faiss-gpu" if backend == "faiss-gpu" else "faiss-cpu",
                              seed=seed)
    set_search_params(index, {"nprobe": nprobe})
    secs, rows = time_search(index.search, queries, k, repeats=repeats, batch=query_batch)
    common = {"index": info["factory"], "nlist": nlist, "nprobe": nprobe, "build_s": info["build_s"],
              "build_backend": info["build_backend"], "n_queries": len(queries), "query_batch": query_batch}
    cpu = {**common, f"recall_at_{k}": recall_at_k(rows, exact_rows, k), "qps": len(queries) / secs,
           "threads": faiss.omp_get_max_threads()}
    if backend != "faiss-gpu":
        gpu = unavailable(f"faiss {faiss.__version__} sees no GPU (faiss.get_num_gpus() == 0: a CPU build, "
                          f"or no CUDA device); the gpu extra installs faiss-gpu-cu12")
        return cpu, gpu
    gpu_index, res = to_faiss_gpu(index)  # keep res alive as long as the index
    faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
    gpu_index.search(queries[:query_batch], k)  # warm-up
    secs, rows = time_search(gpu_index.search, queries, k, repeats=repeats, batch=query_batch)
    gpu = {"available": True, **common, f"recall_at_{k}": recall_at_k(rows, exact_rows, k),
           "qps": len(queries) / secs, "speedup_vs_cpu": (len(queries) / secs) / cpu["qps"]}
    del gpu_index, res
    return cpu, gpu


# ----------------------------------------------------------------------------- ONNX Runtime

def _ranker_requests(net: torch.nn.Module, vocab_sizes: dict[str, int], batch: int, n: int,
                     rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    cat = set(net.features.categorical)
    return [{name: (rng.integers(0, vocab_sizes[name], batch) if name in cat
                    else rng.standard_normal(batch).astype(np.float32)) for name in net.input_names}
            for _ in range(n)]


def ort_provider(make_ranker: Callable[..., torch.nn.Module], vocab_sizes: dict[str, int],
                 dense_features: Sequence[str], workdir: Any, *, provider: str = "CUDAExecutionProvider",
                 batch_sizes: Sequence[int] = (1, 256), n_requests: int = 500, seed: int = 0) -> dict[str, Any]:
    """A ranker (``make_ranker(vocab_sizes=..., dense_features=...)``, weights from
    ``seed``) exported by :func:`~recsys.export.onnx_ranker.export_onnx` into
    ``workdir``, scored by ONNX Runtime's ``provider`` and by its CPU provider (one
    thread each) on the same random requests: ``max_abs_diff``, p50 / p99 ms per
    batch size for both, and the CPU / provider p50 ratio. ``available: False`` with
    the reason when onnxruntime lacks the provider (checked before exporting)."""
    from pathlib import Path

    import onnxruntime as ort

    from recsys.export.onnx_ranker import MODEL_FILE, export_onnx, onnx_scores, onnx_session
    from recsys.serving.bundle import BundleError, open_session

    have = ort.get_available_providers()
    if provider not in have:
        return unavailable(f"onnxruntime {ort.__version__} has no {provider} (available: {', '.join(have)}); "
                           f"the gpu extra installs onnxruntime-gpu")
    torch.manual_seed(seed)
    net = make_ranker(vocab_sizes=dict(vocab_sizes), dense_features=list(dense_features)).eval()
    rng = np.random.default_rng(seed)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    export_onnx(net, _ranker_requests(net, vocab_sizes, 8, 1, rng)[0], Path(workdir) / MODEL_FILE)
    cpu = onnx_session(Path(workdir) / MODEL_FILE, threads=1)
    try:
        dev = open_session(Path(workdir), {"model": {"file": MODEL_FILE}}, 1, [provider])
    except BundleError as e:
        return unavailable(f"onnxruntime could not open a {provider} session: {e}")
    if dev.get_providers()[0] != provider:
        return unavailable(f"onnxruntime fell back to {dev.get_providers()} instead of {provider} "
                           f"(its libraries did not load)")
    out: dict[str, Any] = {"available": True, "provider": provider, "model": type(net).__name__,
                           "p50_ms": {}, "p99_ms": {}, "cpu_p50_ms": {}, "cpu_p99_ms": {}, "cpu_over_provider_p50": {},
                           "n_requests": n_requests, "max_abs_diff": 0.0}
    for b in batch_sizes:
        reqs = _ranker_requests(net, vocab_sizes, b, n_requests, rng)
        diff = max(float(np.abs(onnx_scores(dev, r).astype(np.float64) - onnx_scores(cpu, r)).max()) for r in reqs[:20])
        out["max_abs_diff"] = max(out["max_abs_diff"], diff)
        ms, cms = time_calls(lambda r: onnx_scores(dev, r), reqs), time_calls(lambda r: onnx_scores(cpu, r), reqs)
        key = str(b)
        out["p50_ms"][key], out["p99_ms"][key] = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        out["cpu_p50_ms"][key], out["cpu_p99_ms"][key] = float(np.percentile(cms, 50)), float(np.percentile(cms, 99))
        out["cpu_over_provider_p50"][key] = out["cpu_p50_ms"][key] / out["p50_ms"][key]
    return out


# ----------------------------------------------------------------------------- report

def goal_checks(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal of :data:`GOALS` with the measured value and pass / fail. ``applies``:
    the run was on a CUDA device at full size (the goals are for an H100-class card)."""
    applies = res["device_type"] == "cuda" and res["size"] == "full"
    values = {"framework_vs_bare": res["framework_vs_bare"],
              "train_seq_per_s_compiled": res["train_seq_per_s_by_mode"].get("compiled", float("nan")),
              "eval_beauty_ms": res["eval_beauty_ms"], "exact_qps": res["exact_qps"]}
    out = {}
    for key, (op, threshold, what) in GOALS.items():
        v = values[key]
        ok = bool(v >= threshold) if op == ">=" else bool(v <= threshold)
        out[key] = {"what": what, "goal": f"{op} {threshold:g}", "measured": v, "pass": ok, "applies": applies}
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def report_lines(res: dict[str, Any]) -> list[str]:
    """The table ``recsys bench gpu`` prints: every measure, its goal and pass / fail."""
    g, k = res["goals"], res["exact"]["k"]
    rows = [("train seq/s, framework, eager", res["train_seq_per_s_by_mode"].get("eager"), None)]
    rows += [("train seq/s, framework, compiled", res["train_seq_per_s_by_mode"].get("compiled"),
              "train_seq_per_s_compiled")]
    rows += [(f"train seq/s, bare loop, {m}", v, None) for m, v in res["bare_seq_per_s_by_mode"].items()]
    rows += [(f"framework / bare, {m}", v, "framework_vs_bare" if m == res["train_best_mode"] else None)
             for m, v in res["framework_vs_bare_by_mode"].items()]
    rows += [(f"eval ms ({res['eval_data']}, {res['eval_users']} users)", res["eval_beauty_ms"], "eval_beauty_ms"),
             ("eval ms on the CPU (same weights)", res["eval_cpu_ms"], None),
             ("eval metrics equal to the CPU's", res["eval_equal_cpu"], None),
             (f"exact top-{k} q/s ({res['exact']['n_items']:,} x {res['exact']['dim']}, batch "
              f"{res['exact']['query_batch']})", res["exact_qps"], "exact_qps")]
    for name in ("faiss_cpu", "faiss_gpu"):
        f = res[name]
        if f.get("available", True):
            rows.append((f"{name} {f['index']} nprobe {f['nprobe']}: recall@{k} / q/s",
                         f"{f[f'recall_at_{k}']:.4f} / {_fmt(f['qps'])}", None))
        else:
            rows.append((f"{name}", "unavailable", None))
    o = res["ort_cuda"]
    if o.get("available"):
        for b in o["p50_ms"]:
            rows.append((f"ORT CUDA batch {b}: p50 / p99 ms", f"{o['p50_ms'][b]:.4g} / {o['p99_ms'][b]:.4g}", None))
        rows.append(("ORT CUDA vs CPU provider, max |diff|", o["max_abs_diff"], None))
    else:
        rows.append(("ort_cuda", "unavailable", None))
    w = max(len(r[0]) for r in rows)
    head = f"{'measure':<{w}}  {'measured':>20}  {'goal':>12}  pass"
    lines = [f"recsys bench gpu: size={res['size']} device={res['device']} torch {res['torch']}", head,
             "-" * len(head)]
    for name, v, goal in rows:
        gl, ok = (g[goal]["goal"], ("pass" if g[goal]["pass"] else "FAIL")) if goal else ("", "")
        lines.append(f"{name:<{w}}  {_fmt(v) if v is not None else '-':>20}  {gl:>12}  {ok}")
    if not next(iter(g.values()))["applies"]:
        lines.append(f"(goals are for an H100-class GPU at size=full; this run: {res['device_type']}, size="
                     f"{res['size']}: not comparable)")
    for name in ("faiss_gpu", "ort_cuda"):
        if not res[name].get("available", True):
            lines.append(f"{name}: {res[name]['reason']}")
    return lines


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def run_bench(data: Any, split: Any, dm: SequenceDataModule, *, make_net: Callable[[], torch.nn.Module],
              make_module: Callable[..., SequentialRecModule], make_loss: Callable[[], torch.nn.Module],
              optimizer: Callable, make_ranker: Callable[..., torch.nn.Module], ranker_vocab: dict[str, int],
              ranker_dense: Sequence[str], sizes: Sizes, size: str, device: torch.device, precision: str,
              gradient_clip_val: float | None, ks: Sequence[int], workdir: Any, seed: int = 0,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement of the module docstring, in that order; the summary's
    numbers (see ``docs/benchmarks.md`` for each key)."""
    from recsys.retrieval.clustered import clustered_embeddings, clustered_queries

    t_start = time.perf_counter()
    if sizes.threads is not None:
        torch.set_num_threads(int(sizes.threads))
    name = device_name(device)
    log(f"device {name}, torch {torch.__version__}, precision {precision}, size {size}; data {data.name}: "
        f"{len(dm.train_set)} training sequences, {data.n_items} items, batch {dm.batch_size}")
    train, trained = train_throughput(make_net, make_module, make_loss, optimizer, dm, device, precision=precision,
                                      modes=sizes.modes, compile_backend=sizes.compile_backend,
                                      warmup_epochs=sizes.warmup_epochs, epochs=sizes.epochs,
                                      gradient_clip_val=gradient_clip_val, seed=seed, log=log)
    fw = {m: r["framework"]["seq_per_s"] for m, r in train.items()}
    best_mode = max(fw, key=fw.get)

    es = split.test
    twin = cpu_copy(trained, make_net)
    eval_ms, dev_metrics = evaluate_on(make_module(trained, make_loss()), es, data.n_items, ks, device,
                                       sizes.eval_repeats)
    cpu_ms, cpu_metrics = evaluate_on(make_module(twin, make_loss()), es, data.n_items, ks, torch.device("cpu"),
                                      max(1, min(3, sizes.eval_repeats)))
    equal = eval_equality(dev_metrics, cpu_metrics, sizes.eval_tolerance)
    log(f"eval: {eval_ms:.2f} ms on {device.type}, {cpu_ms:.1f} ms on the CPU; equal: {equal}")
    del trained, twin

    t0 = time.perf_counter()
    X = clustered_embeddings(sizes.n_items, sizes.dim, seed=seed)
    Q = clustered_queries(sizes.n_queries, sizes.dim, seed=seed)
    gen_s = time.perf_counter() - t0
    exact, exact_rows = exact_topk(X, Q, sizes.k, sizes.query_batch, device, repeats=sizes.repeats)
    log(f"exact top-{sizes.k}: {exact['qps']:.0f} q/s over {sizes.n_items} x {sizes.dim} ({gen_s:.1f}s to draw)")
    faiss_cpu, faiss_gpu = ivf_search(X, Q, exact_rows, nlist=sizes.nlist, nprobe=sizes.nprobe, k=sizes.k,
                                      query_batch=sizes.query_batch, repeats=sizes.repeats,
                                      train_size=sizes.ivf_train_size, seed=seed)
    log(f"IVF: cpu {faiss_cpu}; gpu {faiss_gpu}")
    del X, Q, exact_rows

    ort_res = ort_provider(make_ranker, ranker_vocab, ranker_dense, workdir, batch_sizes=sizes.ort_batch_sizes,
                           n_requests=sizes.ort_requests, seed=seed)
    res: dict[str, Any] = {
        "size": size, "device": name, "device_type": device.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "precision": precision, "sizes": asdict(sizes),
        "torch_threads": torch.get_num_threads(),
        "data": {"name": data.name, "n_users": data.n_users, "n_items": data.n_items,
                 "train_sequences": len(dm.train_set), "batch_size": dm.batch_size, "max_len": dm.max_len},
        "train": train, "train_best_mode": best_mode,
        "train_seq_per_s": fw[best_mode], "train_seq_per_s_by_mode": fw,
        "bare_seq_per_s": train[best_mode]["bare"]["seq_per_s"],
        "bare_seq_per_s_by_mode": {m: r["bare"]["seq_per_s"] for m, r in train.items()},
        "framework_vs_bare": train[best_mode]["framework_vs_bare"],
        "framework_vs_bare_by_mode": {m: r["framework_vs_bare"] for m, r in train.items()},
        "eval_beauty_ms": eval_ms, "eval_cpu_ms": cpu_ms, "eval_equal_cpu": equal["equal"], "eval_equality": equal,
        "eval_data": data.name, "eval_users": int((es.targets.lengths() > 0).sum()), "eval_metrics": dev_metrics,
        "eval_cpu_metrics": cpu_metrics,
        "exact_qps": exact["qps"], "exact": exact, "faiss_cpu": faiss_cpu, "faiss_gpu": faiss_gpu, "ort_cuda": ort_res,
        "peak_memory_mb": peak_memory_mb(device), "total_s": time.perf_counter() - t_start,
    }
    res["goals"] = goal_checks(res)
    return res
