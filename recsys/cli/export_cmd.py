"""``recsys export`` (run dir -> ONNX bundle with manifest and parity check) and
``recsys export bench`` (latency of a bundle, ORT vs torch eager).

The kind of bundle follows the run's ``model/model_args.json``: a ranker
(``recsys rank train`` run, ``ranker.onnx``) or a query encoder (a registered
sequence model of a ``recsys train`` run, ``query_encoder.onnx`` + item table;
see ``recsys/export/onnx_encoder.py``)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.cli.common import write_summary
from recsys.utils.errors import RecsysError


def _bundle_dir(cfg: DictConfig, ref: str) -> Path:
    from recsys.artifacts.bundle import resolve_bundle_ref

    return resolve_bundle_ref(ref, cfg.paths.export_dir)


def run_split(run_dir: Path) -> tuple[Any, Any, Any]:
    """``(run config, data, split)`` of a `recsys train` run, rebuilt from the
    resolved config in its summary.json."""
    from hydra.utils import instantiate

    from recsys.cli.common import load_data

    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RecsysError(f"{summary_path}: missing (the encoder parity check rebuilds the run's data split from it)")
    from recsys.artifacts.targets import check_targets, shipped_targets
    from recsys.cli.config import config_dir

    try:
        raw = json.loads(summary_path.read_text()).get("config") or {}
    except (ValueError, AttributeError):
        raise RecsysError(f"{summary_path}: not a JSON object with a 'config'") from None
    # the run's config is read from disk: every _target_ in it must be one the project's own configs use
    check_targets(raw, shipped_targets(str(config_dir())), summary_path)
    run_cfg = OmegaConf.create(raw)
    if "data" not in run_cfg or "split" not in run_cfg:
        raise RecsysError(f"{summary_path}: its config has no data/split (not a `recsys train` run?)")
    data, _ = load_data(run_cfg)
    split = instantiate(run_cfg.split).split(data)
    return run_cfg, data, split


def run_histories(run_dir: Path) -> tuple[Any, str, str | None]:
    """The test-split user histories of the data a `recsys train` run was
    trained on, a description of them, and the data fingerprint."""
    _, data, split = run_split(run_dir)
    return split.test.history, f"test-split histories of data={data.name} ({split.info.get('split')})", data.fingerprint


def _compatible_versions(cfg: DictConfig) -> list[str]:
    from recsys.serving.bundle import BundleError, declared_embedding_version

    out = []
    for ref in cfg.get("compatible_with") or []:
        try:
            out.append(declared_embedding_version(_bundle_dir(cfg, str(ref)))[0])
        except BundleError as e:
            raise RecsysError(f"compatible_with={ref}: {e}") from None
    return out


def encoder_parity_data(run_dir: Path, adapter: Any) -> Any:
    """Real users' inputs for a multi-input encoder's parity check. The run's
    datamodule (its feature encoders) is rebuilt from the run's config here, in the
    CLI layer: ``recsys.export`` itself never imports hydra or lightning."""
    from hydra.utils import instantiate

    from recsys.export.onnx_ranker import rebuild_net

    run_cfg, data, split = run_split(run_dir)
    dm = instantiate(run_cfg.datamodule, _partial_=True)(data=data, split=split)
    return adapter.parity_data(run_dir, dm, data, split, rebuild_net(run_dir / "model")[0])


def export(cfg: DictConfig) -> dict:
    from recsys.export.onnx_encoder import bundle_kind

    from recsys.artifacts.bundle import bundle_name

    run_dir = Path(cfg.run)
    if not (run_dir / "model").is_dir():
        raise RecsysError(f"run={run_dir}: no model/ folder (expected a `recsys rank train` or `recsys train` run directory)")
    out = Path(cfg.paths.export_dir) / bundle_name(cfg.name)
    overwrite = bool(cfg.get("overwrite", False))
    t0 = time.perf_counter()
    kind = bundle_kind(run_dir / "model")
    if kind == "query_encoder":
        from recsys.export.onnx_encoder import ENCODERS, export_query_encoder, model_class
        from recsys.export.onnx_ranker import rebuild_net

        adapter = ENCODERS[model_class(run_dir / "model")]
        extra: dict[str, Any] = {}
        if adapter.parity_data is None:  # single-input (sequence) encoders
            histories, source, fingerprint = run_histories(run_dir)
        else:  # multi-input encoders: histories + the users' side inputs + the adapter's context
            d = encoder_parity_data(run_dir, adapter)
            histories, source, fingerprint = d.histories, d.source, d.fingerprint
            extra = {"side": d.side, "context": d.context, "population": d.population}
        enc = cfg.encoder
        manifest = export_query_encoder(run_dir, out, histories, name=str(cfg.name), opset=int(cfg.opset),
                                        tolerance=float(enc.tolerance), min_users=int(enc.min_users),
                                        lengths=list(enc.lengths), k=int(enc.k),
                                        min_topk_agreement=float(enc.min_topk_agreement),
                                        data_fingerprint=fingerprint, history_source=source,
                                        overwrite=overwrite, **extra)
        p = manifest["parity"]
        for row in p["by_length"]:
            print(f"  length {row['length']:>3}: max |torch - onnx| = {row['max_abs_diff']:.3g}, "
                  f"top-{p['k']} identical for {row['topk_agreement']:.2%} of {row['users']} users")
        print(f"exported {out}: query encoder ({manifest['model']['class']}), embedding_version "
              f"{manifest['embedding_version']}, opset {manifest['opset']}")
        result = {"bundle": str(out), "kind": kind, "parity_max_abs_diff": p["max_abs_diff"],
                  "parity_min_topk_agreement": p["min_topk_agreement"], "parity_users": p["users"],
                  "parity_by_length": p["by_length"], "opset": manifest["opset"],
                  "embedding_version": manifest["embedding_version"]}
    else:
        from recsys.export.onnx_ranker import export_ranker

        manifest = export_ranker(run_dir, out, name=str(cfg.name), opset=int(cfg.opset),
                                 tolerance=float(cfg.parity.tolerance), min_rows=int(cfg.parity.min_rows),
                                 batch_sizes=list(cfg.parity.batch_sizes),
                                 compatible_embedding_versions=_compatible_versions(cfg), overwrite=overwrite)
        p = manifest["parity"]
        print(f"exported {out}: {p['rows']} parity rows, max |torch - onnx| = {p['max_abs_diff']:.3g} "
              f"(tolerance {p['tolerance']:g}), opset {manifest['opset']}")
        result = {"bundle": str(out), "kind": kind, "parity_max_abs_diff": p["max_abs_diff"], "parity_rows": p["rows"],
                  "opset": manifest["opset"], "feature_set_version": manifest["feature_set_version"],
                  "compatible_embedding_versions": manifest["compatible_embedding_versions"]}
    path = write_summary(cfg, {"command": "export", **result, "files": manifest["files"],
                               "timings": {"total_s": time.perf_counter() - t0}})
    print(f"summary: {path}")
    return result


def _model_of(bundle: Path, manifest: dict) -> Path:
    """The verified model folder of the run a bundle was exported from; refused when
    its weights are not the ones the bundle was exported from."""
    from recsys.artifacts.models import verify_model_dir

    model = manifest.get("model") or {}
    model_dir = Path(str(model.get("run_dir", ""))) / "model"
    meta = verify_model_dir(model_dir)
    if meta["weights_sha256"] != model.get("weights_sha256"):
        raise RecsysError(f"{model_dir}: weights differ from those {bundle} was exported from "
                          f"(re-export, or bench without the torch side: torch=false)")
    return model_dir


def _bench_encoder(cfg: DictConfig, bundle: Path, manifest: dict) -> dict:
    from recsys.export.bench import bench_encoder
    from recsys.export.onnx_encoder import torch_module_for_bundle

    module = torch_module_for_bundle(manifest, bundle) if cfg.torch and _model_of(bundle, manifest) else None
    res = bench_encoder(bundle, module, batch_sizes=list(cfg.encoder_batch_sizes), seq_len=cfg.get("seq_len"),
                        n_requests=int(cfg.encoder_calls), seed=int(cfg.seed))
    res.update(bundle=str(bundle), kind="query_encoder",
               parity_max_abs_diff_at_export=manifest["parity"]["max_abs_diff"])
    print(f"query encoder {manifest['model']['class']}, seq_len {res['seq_len']}, {res['n_items']} items "
          f"(single thread; ratio > 1: ORT faster)")
    print(f"{'batch':>6}  {'ORT p50 ms':>10}  {'ORT p99 ms':>10}  {'+top10 ms':>9}  {'torch p50 ms':>12}  {'torch/ORT':>9}")
    for b, r in res["by_batch"].items():
        print(f"{b:>6}  {r['onnx_p50_ms']:10.3f}  {r['onnx_p99_ms']:10.3f}  {r['onnx_plus_topk_p50_ms']:9.3f}  "
              f"{r.get('torch_p50_ms', float('nan')):12.3f}  {r.get('torch_over_onnx_p50', float('nan')):9.2f}")
    if "parity_max_abs_diff" in res:
        print(f"parity on these requests: max |torch - onnx| = {res['parity_max_abs_diff']:.3g} "
              f"(at export: {res['parity_max_abs_diff_at_export']:.3g})")
    path = write_summary(cfg, {"command": "export bench", **res, "model": manifest["model"]["class"]})
    print(f"summary: {path}")
    return res


def bench(cfg: DictConfig) -> dict:
    from recsys.artifacts.models import read_model_arrays
    from recsys.export.bench import bench_bundle
    from recsys.export.onnx_ranker import rebuild_net
    from recsys.serving.bundle import load_manifest

    bundle = _bundle_dir(cfg, str(cfg.bundle))
    manifest = load_manifest(bundle)  # manifest checksum, format, every file's sha256: before anything else
    if manifest.get("kind") == "query_encoder":
        return _bench_encoder(cfg, bundle, manifest)
    model_dir = _model_of(bundle, manifest)  # the requests are the run's saved test rows
    names = [i["name"] for i in manifest["inputs"]]
    if not (model_dir / "parity_rows.safetensors").is_file():
        raise RecsysError(f"{model_dir / 'parity_rows.safetensors'}: missing (the bench draws its requests from "
                          f"the model's saved test rows)")
    saved = read_model_arrays(model_dir, "parity_rows.safetensors")
    rows = {k: saved[k] for k in names}
    net = rebuild_net(model_dir)[0] if cfg.torch else None
    res = bench_bundle(bundle, rows, net, sizes=list(cfg.sizes), n_requests=int(cfg.n_requests),
                       throughput_batch=int(cfg.throughput_batch), seed=int(cfg.seed))
    res["parity_max_abs_diff_at_export"] = manifest["parity"]["max_abs_diff"]
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
    for k in ("throughput_rows_per_s", "onnx_speedup_vs_torch_batch1", "parity_max_abs_diff",
              "parity_max_abs_diff_at_export"):
        if k in res:
            print(f"{k}: {res[k]}")
    path = write_summary(cfg, {"command": "export bench", **res, "model": manifest["model"]["class"]})
    print(f"summary: {path}")
    return res
