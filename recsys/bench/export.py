"""``recsys export bench``: latency of an exported bundle, ONNX Runtime (single
thread, CPU) vs torch eager; rankers (:func:`bench_bundle`, :func:`int8_comparison`)
and query encoders (:func:`bench_encoder`).

A ranker request is one user's candidates: the user-level features (user, group,
hour, user CTR features) of one real row, repeated over ``n`` candidate items
taken from the bundle's real parity rows, all at position 0. Timings are wall
clock per ``session.run`` call (``time.perf_counter_ns``), after warm-up.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from recsys.utils.errors import RecsysError

USER_LEVEL = ("user", "user_group", "hour", "user_ctr", "user_log_imps")


def make_request(rows: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` candidates for the user of one random row (see the module docstring)."""
    total = len(next(iter(rows.values())))
    anchor = int(rng.integers(total))
    pick = rng.choice(total, n, replace=n > total)
    req = {k: np.ascontiguousarray(v[pick]) for k, v in rows.items()}
    for k in USER_LEVEL:
        if k in req:
            req[k] = np.full(n, rows[k][anchor], dtype=rows[k].dtype)
    if "position" in req:
        req["position"] = np.zeros(n, dtype=req["position"].dtype)
    return req


def time_calls(fn: Callable[[dict[str, np.ndarray]], Any], requests: Sequence[dict[str, np.ndarray]],
               warmup: int = 20) -> np.ndarray:
    """Milliseconds of ``fn(request)`` for each request (cycled after ``warmup`` calls)."""
    for i in range(warmup):
        fn(requests[i % len(requests)])
    out = np.empty(len(requests))
    for i, r in enumerate(requests):
        t0 = time.perf_counter_ns()
        fn(r)
        out[i] = (time.perf_counter_ns() - t0) / 1e6
    return out


def saved_rows(folder: Any, names: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the inputs ``names`` of the verified model folder's saved test rows, every saved
    array): the ranker bench draws its requests from them."""
    if "parity_rows.safetensors" not in folder.manifest["files"]:
        raise RecsysError(f"{folder.directory / 'parity_rows.safetensors'}: missing (the bench draws its requests "
                          f"from the model's saved test rows)")
    saved = folder.arrays("parity_rows.safetensors")
    return {k: saved[k] for k in names}, saved


def bench_bundle(bundle_dir: str | Path, rows: dict[str, np.ndarray], net: Any = None,
                 sizes: Sequence[int] = (1, 10, 100, 1000), n_requests: int = 2000,
                 throughput_batch: int = 1024, seed: int = 0) -> dict[str, Any]:
    """p50 / p99 ms per request size, throughput (rows/s) at ``throughput_batch``,
    and, with the torch ``net``, the torch-eager / ORT p50 ratio at batch 1."""
    import torch

    from recsys.export.onnx_ranker import MODEL_FILE, onnx_scores, onnx_session, torch_scores

    rng = np.random.default_rng(seed)
    session = onnx_session(Path(bundle_dir) / MODEL_FILE, threads=1)
    ort_fn = lambda r: onnx_scores(session, r)  # noqa: E731
    out: dict[str, Any] = {"p50_ms": {}, "p99_ms": {}, "mean_ms": {}, "n_requests": {}}
    for n in sizes:
        k = max(50, min(n_requests, int(n_requests * 100 / max(n, 100))))  # fewer calls for big requests
        reqs = [make_request(rows, n, rng) for _ in range(k)]
        ms = time_calls(ort_fn, reqs)
        out["p50_ms"][str(n)], out["p99_ms"][str(n)] = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        out["mean_ms"][str(n)], out["n_requests"][str(n)] = float(ms.mean()), k
    big = [make_request(rows, throughput_batch, rng) for _ in range(20)]
    ms = time_calls(ort_fn, big, warmup=5)
    out["throughput_rows_per_s"] = {str(throughput_batch): float(throughput_batch / (np.median(ms) / 1e3))}
    if net is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one = [make_request(rows, 1, rng) for _ in range(n_requests)]
            t_ms = time_calls(lambda r: torch_scores(net, r), one)
            o_ms = time_calls(ort_fn, one)
            out["torch_batch1_p50_ms"], out["onnx_batch1_p50_ms"] = float(np.median(t_ms)), float(np.median(o_ms))
            out["onnx_speedup_vs_torch_batch1"] = float(np.median(t_ms) / np.median(o_ms))
            t_big = time_calls(lambda r: torch_scores(net, r), big, warmup=5)
            # parity measured now, on this run's requests (not the figure stored at export)
            out["parity_max_abs_diff"] = max(float(np.abs(torch_scores(net, r).astype(np.float64)
                                                          - ort_fn(r)).max()) for r in big[:5])
            out["torch_throughput_rows_per_s"] = {str(throughput_batch): float(throughput_batch / (np.median(t_big) / 1e3))}
        finally:
            torch.set_num_threads(threads)
    return out


def int8_comparison(onnx_path: str | Path, out_path: str | Path, rows: dict[str, np.ndarray],
                    label: np.ndarray | None, sizes: Sequence[int] = (1, 10, 100, 1000),
                    n_requests: int = 500, seed: int = 0) -> dict[str, Any]:
    """Dynamic int8 quantisation (ONNX Runtime, int8 weights, activations
    quantised at run time) of ``onnx_path`` into ``out_path``: max |logit
    change| on ``rows``, AUC change on them when ``label`` (N,) is given, and
    p50 latency int8 vs fp32 on the same requests."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from recsys.evaluation.binary import roc_auc
    from recsys.export.onnx_ranker import onnx_scores, onnx_session

    quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8)
    fp32, int8 = onnx_session(onnx_path), onnx_session(out_path)
    a, b = onnx_scores(fp32, rows), onnx_scores(int8, rows)
    out: dict[str, Any] = {"max_abs_logit_diff": float(np.abs(a - b).max()),
                           "mean_abs_logit_diff": float(np.abs(a - b).mean()),
                           "bytes_fp32": Path(onnx_path).stat().st_size, "bytes_int8": Path(out_path).stat().st_size,
                           "p50_ms": {}, "p99_ms": {}, "speedup_p50": {}}
    if label is not None:
        out["auc_fp32"], out["auc_int8"] = roc_auc(label, a), roc_auc(label, b)
        out["auc_change"] = out["auc_int8"] - out["auc_fp32"]
        out["auc_rows"] = int(len(label))
    rng = np.random.default_rng(seed)
    for n in sizes:
        reqs = [make_request(rows, n, rng) for _ in range(max(50, min(n_requests, n_requests * 100 // max(n, 100))))]
        ms32 = time_calls(lambda r: onnx_scores(fp32, r), reqs)
        ms8 = time_calls(lambda r: onnx_scores(int8, r), reqs)
        k = str(n)
        out["p50_ms"][k], out["p99_ms"][k] = float(np.percentile(ms8, 50)), float(np.percentile(ms8, 99))
        out["speedup_p50"][k] = float(np.median(ms32) / np.median(ms8))
    return out


def bench_encoder(bundle_dir: str | Path, module: Any = None, batch_sizes: Sequence[int] = (1, 256),
                  seq_len: int | None = None, n_requests: int = 300, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """Latency of a query-encoder bundle: p50 / p99 ms of ONNX Runtime (one
    thread) per call of ``batch`` users x ``seq_len`` items (default the model's
    ``max_len``, the worst case; ids drawn uniformly from the catalogue), the
    same with the full-catalogue top-``k`` in numpy added, and, with the torch
    ``module`` (``items -> state``), torch eager on the same inputs (one thread)
    and the ratio torch p50 / ORT p50 (> 1: ORT faster; < 1: torch faster).
    Multi-input encoders (the two-tower user tower): each side input of the
    manifest gets ids drawn uniformly from ``[0, vocab_size)`` per user, and the
    torch ``module`` is called as ``module(items, *side)``."""
    import torch

    from recsys.export.onnx_encoder import onnx_states
    from recsys.utils.topk import top_k_excluding
    from recsys.export.onnx_ranker import onnx_session

    bundle_dir = Path(bundle_dir)
    from recsys.artifacts.bundle import EXPORT_FORMAT, verify_bundle

    manifest = verify_bundle(bundle_dir, format=EXPORT_FORMAT, kind="query_encoder")
    spec, side_specs = manifest["inputs"][0], manifest["inputs"][1:]
    seq_len = int(seq_len or spec.get("max_len") or 50)
    table = np.load(bundle_dir / manifest["item_embeddings"]["file"], allow_pickle=False)
    session = onnx_session(bundle_dir / manifest["model"]["file"], threads=1)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"seq_len": seq_len, "n_items": int(len(table) - 1), "by_batch": {},
                           "side_inputs": [s["name"] for s in side_specs]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for b in batch_sizes:
            n = max(20, min(n_requests, n_requests * 8 // max(b, 8)))  # fewer calls for big batches
            reqs = [(rng.integers(1, len(table), (b, seq_len)),
                     {s["name"]: rng.integers(0, int(s["vocab_size"]), b) for s in side_specs}) for _ in range(n)]

            def ort_fn(r: tuple) -> np.ndarray:
                return onnx_states(session, r[0], batch_size=b, **({"side": r[1]} if r[1] else {}))

            ort_ms = time_calls(ort_fn, reqs, warmup=5)
            topk_ms = time_calls(lambda r: top_k_excluding(ort_fn(r) @ table.T, r[0], k), reqs, warmup=5)
            row: dict[str, Any] = {"calls": n, "onnx_p50_ms": float(np.median(ort_ms)),
                                   "onnx_p99_ms": float(np.percentile(ort_ms, 99)),
                                   "onnx_plus_topk_p50_ms": float(np.median(topk_ms))}
            if module is not None:
                def torch_fn(r: tuple) -> Any:
                    with torch.inference_mode():
                        return module(torch.from_numpy(r[0]), *(torch.from_numpy(v) for v in r[1].values()))

                t_ms = time_calls(torch_fn, reqs, warmup=5)
                diff = max(float(np.abs(torch_fn(r).numpy().astype(np.float64) - ort_fn(r)).max()) for r in reqs[:5])
                out["parity_max_abs_diff"] = max(out.get("parity_max_abs_diff", 0.0), diff)
                row["torch_p50_ms"], row["torch_p99_ms"] = float(np.median(t_ms)), float(np.percentile(t_ms, 99))
                row["torch_over_onnx_p50"] = row["torch_p50_ms"] / row["onnx_p50_ms"]
                row["faster"] = "onnxruntime" if row["torch_over_onnx_p50"] > 1 else "torch"
            out["by_batch"][str(b)] = row
    finally:
        torch.set_num_threads(threads)
    return out


def ranker_report_lines(res: dict[str, Any]) -> list[str]:
    """What ``recsys export bench`` prints for a ranker bundle."""
    lines = [f"{'candidates':>10}  {'p50 ms':>8}  {'p99 ms':>8}"]
    lines += [f"{n:>10}  {res['p50_ms'][n]:8.4f}  {res['p99_ms'][n]:8.4f}" for n in res["p50_ms"]]
    lines += [f"{k}: {res[k]}" for k in ("throughput_rows_per_s", "onnx_speedup_vs_torch_batch1", "parity_max_abs_diff",
                                         "parity_max_abs_diff_at_export") if k in res]
    return lines


def encoder_report_lines(res: dict[str, Any], model_class: str) -> list[str]:
    """What ``recsys export bench`` prints for a query-encoder bundle."""
    lines = [f"query encoder {model_class}, seq_len {res['seq_len']}, {res['n_items']} items "
             f"(single thread; ratio > 1: ORT faster)",
             f"{'batch':>6}  {'ORT p50 ms':>10}  {'ORT p99 ms':>10}  {'+top10 ms':>9}  {'torch p50 ms':>12}  "
             f"{'torch/ORT':>9}"]
    for b, r in res["by_batch"].items():
        lines.append(f"{b:>6}  {r['onnx_p50_ms']:10.3f}  {r['onnx_p99_ms']:10.3f}  {r['onnx_plus_topk_p50_ms']:9.3f}  "
                     f"{r.get('torch_p50_ms', float('nan')):12.3f}  {r.get('torch_over_onnx_p50', float('nan')):9.2f}")
    if "parity_max_abs_diff" in res:
        lines.append(f"parity on these requests: max |torch - onnx| = {res['parity_max_abs_diff']:.3g} "
                     f"(at export: {res['parity_max_abs_diff_at_export']:.3g})")
    return lines
