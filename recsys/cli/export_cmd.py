"""``recsys export`` (run dir -> ONNX bundle with manifest and parity check) and
``recsys export bench`` (latency of a bundle, ORT vs torch eager).

The kind of bundle follows the run's ``model/model_args.json``: a ranker
(``recsys rank train`` run, ``ranker.onnx``) or a query encoder (a registered
sequence model of a ``recsys train`` run, ``query_encoder.onnx`` + item table;
see ``recsys/export/onnx_encoder.py``). A query encoder's parity inputs are
rebuilt from the run's saved config by :mod:`recsys.cli.runs`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsys.cli.bundles import bundle_dir, embedding_versions
from recsys.cli.common import write_summary
from recsys.cli.runs import encoder_parity_data, run_histories
from recsys.utils.errors import RecsysError


def export(cfg: DictConfig) -> dict:
    from recsys.artifacts.bundle import bundle_name
    from recsys.export.onnx_encoder import bundle_kind
    from recsys.export.report import encoder_report, ranker_report

    run_dir = Path(cfg.run)
    if not (run_dir / "model").is_dir():
        raise RecsysError(f"run={run_dir}: no model/ folder (expected a `recsys rank train` or `recsys train` run directory)")
    out = Path(cfg.paths.export_dir) / bundle_name(cfg.name)
    overwrite = bool(cfg.get("overwrite", False))
    t0 = time.perf_counter()
    kind = bundle_kind(run_dir / "model")
    if kind == "query_encoder":
        from recsys.export.onnx_encoder import ENCODERS, ParitySpec, export_query_encoder, model_class

        adapter = ENCODERS[model_class(run_dir / "model")]
        if adapter.parity_data is None:  # single-input (sequence) encoders
            users = run_histories(run_dir)
        else:  # multi-input encoders: histories + the users' side inputs + the adapter's context
            users = encoder_parity_data(run_dir, adapter)
        enc = cfg.encoder
        parity = ParitySpec(tolerance=float(enc.tolerance), min_users=int(enc.min_users), lengths=tuple(enc.lengths),
                            k=int(enc.k), min_topk_agreement=float(enc.min_topk_agreement))
        manifest = export_query_encoder(run_dir, out, users, parity, name=str(cfg.name), opset=int(cfg.opset),
                                        overwrite=overwrite)
        lines, result = encoder_report(manifest, out)
    else:
        from recsys.export.onnx_ranker import export_ranker

        manifest = export_ranker(run_dir, out, name=str(cfg.name), opset=int(cfg.opset),
                                 tolerance=float(cfg.parity.tolerance), min_rows=int(cfg.parity.min_rows),
                                 batch_sizes=list(cfg.parity.batch_sizes), overwrite=overwrite,
                                 compatible_embedding_versions=embedding_versions(cfg, cfg.get("compatible_with")))
        lines, result = ranker_report(manifest, out)
    print("\n".join(lines))
    path = write_summary(cfg, {"command": "export", **result, "files": manifest["files"],
                               "timings": {"total_s": time.perf_counter() - t0}})
    print(f"summary: {path}")
    return result


def _model_of(bundle: Path, manifest: dict) -> Any:
    """The model folder of the run a bundle was exported from, verified once
    (:class:`~recsys.artifacts.models.ModelFolder`); refused when its weights are not
    the ones the bundle was exported from."""
    from recsys.artifacts.models import ModelFolder

    model = manifest.get("model") or {}
    folder = ModelFolder.open(Path(str(model.get("run_dir", ""))) / "model")
    if folder.meta["weights_sha256"] != model.get("weights_sha256"):
        raise RecsysError(f"{folder.directory}: weights differ from those {bundle} was exported from "
                          f"(re-export, or bench without the torch side: torch=false)")
    return folder


def _bench_encoder(cfg: DictConfig, bundle: Path, manifest: dict) -> dict:
    from recsys.bench.export import bench_encoder, encoder_report_lines
    from recsys.export.onnx_encoder import torch_module_for_bundle

    module = torch_module_for_bundle(manifest, bundle, _model_of(bundle, manifest)) if cfg.torch else None
    res = bench_encoder(bundle, module, batch_sizes=list(cfg.encoder_batch_sizes), seq_len=cfg.get("seq_len"),
                        n_requests=int(cfg.encoder_calls), seed=int(cfg.seed))
    res.update(bundle=str(bundle), kind="query_encoder",
               parity_max_abs_diff_at_export=manifest["parity"]["max_abs_diff"])
    print("\n".join(encoder_report_lines(res, manifest["model"]["class"])))
    path = write_summary(cfg, {"command": "export bench", **res, "model": manifest["model"]["class"]})
    print(f"summary: {path}")
    return res


def bench(cfg: DictConfig) -> dict:
    from recsys.bench.export import bench_bundle, int8_comparison, ranker_report_lines, saved_rows
    from recsys.serving.bundle import load_manifest

    bundle = bundle_dir(cfg, str(cfg.bundle))
    manifest = load_manifest(bundle)  # manifest checksum, format, every file's sha256: before anything else
    if manifest.get("kind") == "query_encoder":
        return _bench_encoder(cfg, bundle, manifest)
    folder = _model_of(bundle, manifest)  # the requests are the run's saved test rows
    rows, saved = saved_rows(folder, [i["name"] for i in manifest["inputs"]])
    net = folder.rebuild()[0] if cfg.torch else None
    res = bench_bundle(bundle, rows, net, sizes=list(cfg.sizes), n_requests=int(cfg.n_requests),
                       throughput_batch=int(cfg.throughput_batch), seed=int(cfg.seed))
    res["parity_max_abs_diff_at_export"] = manifest["parity"]["max_abs_diff"]
    if cfg.get("int8"):
        q_path = Path(cfg.paths.output_dir) / "ranker.int8.onnx"
        res["int8"] = int8_comparison(bundle / manifest["model"]["file"], q_path, rows, saved.get("label"),
                                      sizes=list(cfg.sizes), seed=int(cfg.seed))
        print(f"int8: {json.dumps({k: v for k, v in res['int8'].items() if not k.startswith('bytes')})}")
    res["bundle"] = str(bundle)
    print("\n".join(ranker_report_lines(res)))
    path = write_summary(cfg, {"command": "export bench", **res, "model": manifest["model"]["class"]})
    print(f"summary: {path}")
    return res
