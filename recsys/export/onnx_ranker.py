"""Export a trained ranker to a self-contained ONNX bundle with a parity check.

``export_ranker(run_dir, out_dir)`` rebuilds the net from
``<run>/model/model_args.json`` + ``weights.safetensors`` (no training code),
exports it with ``torch.onnx.export(dynamo=True, external_data=False)`` (one
input per feature, each ``(batch,)`` with a dynamic batch dim; output
``logits (batch,)``), scores the real test rows saved beside the model with
torch and ONNX Runtime at several batch sizes, and writes ``manifest.json``.
Everything is written into a temporary folder that is renamed to ``out_dir``
only when the parity check passes; otherwise :class:`ExportError` is raised
and nothing is left behind.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from recsys.artifacts import models
from recsys.artifacts.bundle import EXPORT_FORMAT, write_bundle
from recsys.export.errors import ExportError  # noqa: F401  (re-exported)
from recsys.utils.lineage import git_commit, versions
from recsys.utils.progress import progress

MANIFEST_FORMAT = EXPORT_FORMAT
MODEL_FILE = "ranker.onnx"
OPSET = 18
PARITY_TOLERANCE = 1e-5
PARITY_BATCH_SIZES = (1, 7, 256, 1000)


def rebuild_net(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode net of a verified ``model_dir`` and its ``model_args``
    (:func:`recsys.artifacts.models.rebuild_net`: manifest and checksums verified,
    the class looked up in the registry before anything is imported)."""
    return models.rebuild_net(model_dir)


class _Positional(nn.Module):
    """``forward(*inputs)`` in ``names`` order -> ``net(**dict(zip(names, inputs)))``
    (torch.export cannot give dynamic shapes to a ``**kwargs`` signature)."""

    def __init__(self, net: nn.Module, names: Sequence[str]):
        super().__init__()
        self.net, self.names = net, list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net(**dict(zip(self.names, inputs)))  # (B,)


def export_onnx(net: nn.Module, example: dict[str, np.ndarray], path: str | Path, opset: int = OPSET) -> None:
    """Write ``net`` as one ONNX file; inputs named and ordered like ``example``
    (each (B,)), dim 0 dynamic (``batch``), output ``logits`` (B,)."""
    names = list(example)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in names)
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    for noisy in ("onnx_ir", "onnxscript"):  # INFO lines per initializer / rewrite rule
        logging.getLogger(noisy).setLevel(logging.WARNING)  # one INFO line per deduplicated initializer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Positional(net, names).eval(), args, str(path), dynamo=True, external_data=False,
                          input_names=names, output_names=["logits"], opset_version=opset,
                          dynamic_shapes=(tuple({0: batch} for _ in names),), verbose=False)


def torch_scores(net: nn.Module, rows: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return net(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rows.items()}).numpy()


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_scores(session: Any, rows: dict[str, np.ndarray]) -> np.ndarray:
    return session.run(["logits"], {k: np.ascontiguousarray(v) for k, v in rows.items()})[0]


def parity_check(net: nn.Module, session: Any, rows: dict[str, np.ndarray],
                 batch_sizes: Sequence[int] = PARITY_BATCH_SIZES) -> dict[str, Any]:
    """Max |torch - onnx| over all ``rows`` scored in chunks of each batch size
    (batch 1 on the first 64 rows only); NaN anywhere counts as infinite."""
    n = len(next(iter(rows.values())))
    worst: dict[str, float] = {}
    for bs in progress(batch_sizes, "export parity (batch sizes)", total=len(batch_sizes)):
        stop = min(n, 64) if bs == 1 else n
        diffs = []
        for s in range(0, stop, bs):
            chunk = {k: v[s:min(s + bs, stop)] for k, v in rows.items()}
            d = np.abs(torch_scores(net, chunk).astype(np.float64) - onnx_scores(session, chunk))
            diffs.append(np.inf if not np.all(np.isfinite(d)) else float(d.max()))
        worst[str(bs)] = max(diffs)
    return {"rows": n, "max_abs_diff": max(worst.values()), "max_abs_diff_by_batch": worst,
            "batch_sizes": list(batch_sizes)}


def _input_spec(names: Sequence[str], rows: dict[str, np.ndarray], vocab: dict[str, int]) -> list[dict[str, Any]]:
    return [{"name": n, "dtype": str(rows[n].dtype), "shape": ["batch"],
             "kind": "categorical" if n in vocab else "dense", "vocab_size": vocab.get(n)} for n in names]


def export_ranker(run_dir: str | Path, out_dir: str | Path, name: str | None = None, opset: int = OPSET,
                  tolerance: float = PARITY_TOLERANCE, min_rows: int = 1000,
                  batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
                  compatible_embedding_versions: Sequence[str] = (), overwrite: bool = False) -> dict[str, Any]:
    """Export ``<run_dir>/model`` into the bundle ``out_dir`` (atomically); returns the manifest.

    ``compatible_embedding_versions``: the ``embedding_version`` of the retrieval
    bundles (query encoder / index) this ranker is meant to re-rank for; a
    runtime given a retrieval bundle with another version refuses the pairing."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model_dir = run_dir / "model"
    rows_path = model_dir / "parity_rows.safetensors"
    if not (model_dir / "features.json").is_file() or not rows_path.is_file():
        raise ExportError(f"{model_dir}: need features.json and parity_rows.safetensors (a `recsys rank train` run)")
    folder = models.ModelFolder.open(model_dir, require=("features.json", "parity_rows.safetensors"))  # verified once
    net, model_args = folder.rebuild()
    feats = folder.json("features.json")
    names = list(feats["inputs"])
    rows = folder.arrays("parity_rows.safetensors")
    missing = [n for n in names if n not in rows]
    n_rows = len(rows[names[0]]) if names and not missing else 0
    if missing or n_rows < min_rows:
        raise ExportError(f"{rows_path}: need >= {min_rows} rows of {names}; got {n_rows} rows, missing {missing}")
    label = rows.get("label")
    rows = {n: rows[n] for n in names}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    import onnx

    with write_bundle(out_dir, format=EXPORT_FORMAT, kind="ranker", overwrite=overwrite) as draft:
        tmp = draft.path
        t0 = time.perf_counter()
        export_onnx(net, {n: v[:8] for n, v in rows.items()}, tmp / MODEL_FILE, opset)
        export_s = time.perf_counter() - t0
        parity = {**parity_check(net, onnx_session(tmp / MODEL_FILE), rows, batch_sizes), "tolerance": tolerance}
        if not parity["max_abs_diff"] <= tolerance:
            raise ExportError(f"parity check failed for {run_dir}: max |torch - onnx| = {parity['max_abs_diff']:.3g} "
                              f"> {tolerance:g} over {n_rows} rows (by batch size: {parity['max_abs_diff_by_batch']}); "
                              f"nothing written to {out_dir}")
        if label is not None:  # the bundle's own AUC on these rows, next to the run's test AUC
            from recsys.evaluation.binary import roc_auc

            parity["onnx_auc_on_rows"] = roc_auc(label, onnx_scores(onnx_session(tmp / MODEL_FILE), rows))
        proto = onnx.load(str(tmp / MODEL_FILE), load_external_data=False)
        onnx.checker.check_model(proto)
        opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
        draft.manifest.update({
            "name": name or out_dir.name, "created_unix": time.time(),
            "model": {"file": MODEL_FILE, "class": model_args["_target_"], "model_args": model_args,
                      "run_dir": str(run_dir.resolve()), "weights_sha256": folder.meta["weights_sha256"]},
            "feature_set_version": feats["feature_set_version"],
            **({"behavioural": feats["behavioural"]} if "behavioural" in feats else {}),
            "compatible_embedding_versions": sorted(set(compatible_embedding_versions)),
            "inputs": _input_spec(names, rows, feats["vocab_sizes"]),
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch"],
                         "meaning": "click logit; sigmoid gives P(click)"}],
            "dynamic_axes": {n: {"0": "batch"} for n in [*names, "logits"]},
            "vocab_sizes": feats["vocab_sizes"], "opset": opsets.get("ai.onnx", opset), "opset_imports": opsets,
            "versions": {**versions(), "onnx": onnx.__version__}, "git_commit": git_commit(),
            "data_fingerprint": (summary.get("data") or {}).get("fingerprint"),
            "test_metrics": {k: summary[k] for k in ("test/auc", "test/log_loss", "test/ece", "bayes_auc") if k in summary},
            "parity": parity, "export_s": export_s,
        })
        draft.files = [MODEL_FILE]
    return draft.manifest
