"""``recsys export`` (run dir -> ONNX bundle with manifest and parity check) and
``recsys export bench`` (latency of a bundle, ORT vs torch eager)."""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from recsys.cli.common import write_summary
from recsys.utils.errors import RecsysError


def _bundle_dir(cfg: DictConfig, name: str) -> Path:
    p = Path(name)
    return p if p.is_dir() and (p / "manifest.json").is_file() else Path(cfg.paths.export_dir) / name


def export(cfg: DictConfig) -> dict:
    from recsys.export.onnx_ranker import export_ranker

    run_dir = Path(cfg.run)
    if not (run_dir / "model").is_dir():
        raise RecsysError(f"run={run_dir}: no model/ folder (expected a `recsys rank train` run directory)")
    out = Path(cfg.paths.export_dir) / str(cfg.name)
    t0 = time.perf_counter()
    manifest = export_ranker(run_dir, out, name=str(cfg.name), opset=int(cfg.opset),
                             tolerance=float(cfg.parity.tolerance), min_rows=int(cfg.parity.min_rows),
                             batch_sizes=list(cfg.parity.batch_sizes))
    p = manifest["parity"]
    print(f"exported {out}: {p['rows']} parity rows, max |torch - onnx| = {p['max_abs_diff']:.3g} "
          f"(tolerance {p['tolerance']:g}), opset {manifest['opset']}")
    result = {"bundle": str(out), "parity_max_abs_diff": p["max_abs_diff"], "parity_rows": p["rows"],
              "opset": manifest["opset"], "feature_set_version": manifest["feature_set_version"]}
    path = write_summary(cfg, {"command": "export", **result, "files": manifest["files"],
                               "timings": {"total_s": time.perf_counter() - t0}})
    print(f"summary: {path}")
    return result


def bench(cfg: DictConfig) -> dict:
    import json

    from safetensors.numpy import load_file

    from recsys.export.bench import bench_bundle
    from recsys.export.onnx_ranker import rebuild_net

    bundle = _bundle_dir(cfg, str(cfg.bundle))
    if not (bundle / "manifest.json").is_file():
        raise RecsysError(f"bundle={cfg.bundle}: no manifest.json in {bundle}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    model_dir = Path(manifest["model"]["run_dir"]) / "model"
    names = [i["name"] for i in manifest["inputs"]]
    rows_path = model_dir / "parity_rows.safetensors"
    if not rows_path.is_file():
        raise RecsysError(f"{rows_path}: missing (the bench draws its requests from the model's saved test rows)")
    saved = load_file(str(rows_path))
    rows = {k: saved[k] for k in names}
    net = rebuild_net(model_dir)[0] if cfg.torch else None
    res = bench_bundle(bundle, rows, net, sizes=list(cfg.sizes), n_requests=int(cfg.n_requests),
                       throughput_batch=int(cfg.throughput_batch), seed=int(cfg.seed))
    res["parity_max_abs_diff"] = manifest["parity"]["max_abs_diff"]
    if cfg.get("int8"):
        from recsys.export.bench import int8_comparison

        q_path = Path(cfg.paths.output_dir) / "ranker.int8.onnx"
        res["int8"] = int8_comparison(bundle / manifest["model"]["file"], q_path, rows, saved.get("label"),
                                      sizes=list(cfg.sizes), seed=int(cfg.seed))
        print(f"int8: {json.dumps({k: v for k, v in res['int8'].items() if not k.startswith('bytes')})}")
    res["bundle"] = str(bundle)
    print(f"{'candidates':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
    for n in res["p50_ms"]:
        print(f"{n:>10}  {res['p50_ms'][n]:8.4f}  {res['p99_ms'][n]:8.4f}")
    for k in ("throughput_rows_per_s", "onnx_speedup_vs_torch_batch1", "parity_max_abs_diff"):
        if k in res:
            print(f"{k}: {res[k]}")
    path = write_summary(cfg, {"command": "export bench", **res, "model": manifest["model"]["class"]})
    print(f"summary: {path}")
    return res
