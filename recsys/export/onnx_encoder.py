"""Export a query encoder (a sequence model's next-item state) to an ONNX bundle.

``export_query_encoder(run_dir, out_dir, histories)`` rebuilds the net of
``<run>/model`` (``model_args.json`` + ``weights.safetensors``, checksum
verified), looks its class up in :data:`ENCODERS`, and writes::

    <out_dir>/
      manifest.json + manifest.sha256
      query_encoder.onnx    input  items (batch, seq) int64, left-padded with 0
                            output state (batch, D) float32 (the next-item state)
      item_embeddings.npy   (n_items + 1, D) float32, row 0 = padding: score = state @ table.T

The export uses ``torch.onnx.export(dynamo=True, external_data=False)`` with
named dynamic dims ``batch`` and ``seq`` (the legacy exporter bakes the example
length into Reshape nodes). The example is 2 real sequences at a length that is
*not* one of the parity lengths. Parity, on real user histories (>= 1,000 users),
at each of several lengths (the last L items of each history, left-padded):

* states: max |torch - ORT| <= ``tolerance`` (batch 256 chunks, plus batch 1 on
  the first 64 users);
* retrieval: full-catalogue top-k (padding id and the input items excluded, the
  same way on both sides) from torch states @ the torch table and from ORT
  states @ the exported table must be identical (same items, same order) for
  >= ``min_topk_agreement`` of users.

Everything is written into a temporary folder renamed into place only if every
check passes; otherwise :class:`ExportError` and nothing is left behind.

Adding an encoder (e.g. the two-tower user tower) is one :func:`register_encoder`
call with a :class:`QueryEncoderAdapter`: how to wrap the net as
``module(items) -> (B, D)``, its item table and its longest input.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from recsys.export.onnx_ranker import (MANIFEST_FORMAT, OPSET, ExportError, finalize_bundle_permissions,
                                       onnx_session, rebuild_net, write_manifest)
from recsys.utils.io import atomic_dir, sha256_file
from recsys.utils.lineage import git_commit, versions
from recsys.utils.sparse import CSR

MODEL_FILE = "query_encoder.onnx"
TABLE_FILE = "item_embeddings.npy"
PARITY_TOLERANCE = 1e-5
PARITY_LENGTHS = (1, 5, 17, 50)
MIN_TOPK_AGREEMENT = 0.999


@dataclass(frozen=True)
class QueryEncoderAdapter:
    """How to export one model class as a query encoder.

    ``wrap(net)``: an ``nn.Module`` whose ``forward(items)`` maps (B, T) int64
    left-padded item ids to the query state (B, D); ``item_table(net)``: the
    (n_items + 1, D) table the state is scored against; ``max_len(net)``: the
    longest input the model accepts (None: unbounded).
    """

    wrap: Callable[[nn.Module], nn.Module]
    item_table: Callable[[nn.Module], torch.Tensor]
    max_len: Callable[[nn.Module], int | None]
    description: str


class _NextItemState(nn.Module):
    """``forward(items) -> net.next_item_state(items)`` (a named single argument for torch.export)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.net.next_item_state(items)  # (B, D)


#: model class path (``model_args.json`` ``_target_``) -> adapter
ENCODERS: dict[str, QueryEncoderAdapter] = {}


def register_encoder(class_path: str, adapter: QueryEncoderAdapter) -> None:
    ENCODERS[class_path] = adapter


register_encoder("recsys.models.sequential.SASRec", QueryEncoderAdapter(
    wrap=_NextItemState, item_table=lambda net: net.output_embeddings(),
    max_len=lambda net: int(net.max_len),
    description="SASRec: causal self-attention state after the last item"))


def model_class(model_dir: str | Path) -> str:
    """The ``_target_`` of ``<model_dir>/model_args.json`` (ExportError when absent)."""
    path = Path(model_dir) / "model_args.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no model_args.json (expected the model/ folder of a training run)")
    return str(json.loads(path.read_text())["model_args"].get("_target_", ""))


def bundle_kind(model_dir: str | Path) -> str:
    """``"query_encoder"`` for registered encoder classes, ``"ranker"`` for
    models saved with ``features.json`` (rankers); ExportError otherwise."""
    cls = model_class(model_dir)
    if cls in ENCODERS:
        return "query_encoder"
    if (Path(model_dir) / "features.json").is_file():
        return "ranker"
    raise ExportError(f"{model_dir}: model class {cls!r} has no export (rankers need features.json; "
                      f"query encoders: {sorted(ENCODERS)})")


def embedding_version(model_dir: str | Path) -> str:
    """``"<class name>/<first 16 hex of the weights sha256>"``: query states and
    item vectors from the same weights carry the same version."""
    meta = json.loads((Path(model_dir) / "model_args.json").read_text())
    return f"{meta['model_args']['_target_'].rpartition('.')[2]}/{meta['weights_sha256'][:16]}"


def left_pad(rows: CSR, length: int) -> np.ndarray:
    """``(R, length)`` int64: the last ``length`` items of each row, left-padded with 0."""
    out = np.zeros((rows.n_rows, length), dtype=np.int64)
    for r in range(rows.n_rows):
        items = rows.row(r)[-length:]
        if len(items):
            out[r, length - len(items):] = items
    return out


def export_encoder_onnx(module: nn.Module, example: np.ndarray, path: str | Path, max_len: int | None,
                        opset: int = OPSET) -> None:
    """One ONNX file: input ``items`` (batch, seq) int64, output ``state`` (batch, D)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    seq = torch.export.Dim("seq", min=1, max=int(max_len) if max_len else 1 << 16)
    for noisy in ("onnx_ir", "onnxscript"):  # INFO lines per initializer / rewrite rule
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter (treespec, ...)
        torch.onnx.export(module.eval(), (torch.from_numpy(np.ascontiguousarray(example)),), str(path),
                          dynamo=True, external_data=False, input_names=["items"], output_names=["state"],
                          opset_version=opset, dynamic_shapes={"items": {0: batch, 1: seq}}, verbose=False)


def torch_states(module: nn.Module, items: np.ndarray, batch_size: int = 256) -> np.ndarray:
    outs = []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            outs.append(module(torch.from_numpy(np.ascontiguousarray(items[s:s + batch_size]))).numpy())
    return np.concatenate(outs)


def onnx_states(session: Any, items: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([session.run(["state"], {"items": np.ascontiguousarray(items[s:s + batch_size])})[0]
                           for s in range(0, len(items), batch_size)])


def top_k_excluding(scores: np.ndarray, items: np.ndarray, k: int, exclude_seen: bool = True) -> np.ndarray:
    """``(B, k)`` ids of the highest ``scores`` (B, n_items + 1), ties broken by
    the smaller id; id 0 (padding) and, with ``exclude_seen``, the ids in
    ``items`` (B, T) never appear (same rule as the serving runtime)."""
    s = np.array(scores, dtype=np.float32, copy=True)
    s[:, 0] = -np.inf
    if exclude_seen:  # pads hit column 0 again
        s[np.repeat(np.arange(len(items)), items.shape[1]), items.ravel()] = -np.inf
    k = min(k, s.shape[1] - 1)
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, 1)


def parity_at_length(module: nn.Module, session: Any, table_t: torch.Tensor, histories: CSR, length: int,
                     k: int, batch_size: int = 256) -> dict[str, Any]:
    """State and top-k parity of torch vs ORT on every history cut to its last ``length`` items."""
    items = left_pad(histories, length)
    a = torch_states(module, items, batch_size)
    b = onnx_states(session, items, batch_size)
    d = np.abs(a.astype(np.float64) - b)
    diff = float(d.max()) if np.all(np.isfinite(d)) else float("inf")
    n1 = min(64, len(items))  # batch 1 on the first users
    b1 = np.concatenate([session.run(["state"], {"items": items[i:i + 1]})[0] for i in range(n1)])
    d1 = np.abs(a[:n1].astype(np.float64) - b1)
    diff1 = float(d1.max()) if np.all(np.isfinite(d1)) else float("inf")
    table = table_t.detach().numpy()
    with torch.inference_mode():
        s_torch = (torch.from_numpy(a) @ table_t.T).numpy()
    s_onnx = b @ table.T
    top_a, top_b = top_k_excluding(s_torch, items, k), top_k_excluding(s_onnx, items, k)
    same_order = np.all(top_a == top_b, axis=1)
    same_set = np.array([set(x) == set(y) for x, y in zip(top_a.tolist(), top_b.tolist())])
    return {"length": length, "users": len(items), "max_abs_diff": max(diff, diff1), "max_abs_diff_batch1": diff1,
            "topk_agreement": float(same_order.mean()), "topk_set_agreement": float(same_set.mean()),
            "padded_rows": int((items[:, 0] == 0).sum())}


def _example_length(lengths: Sequence[int], max_len: int | None) -> int:
    for cand in (11, 13, 7, 3, 2, 23, 29):
        if cand not in lengths and (max_len is None or cand <= max_len):
            return cand
    raise ExportError(f"no example length outside the parity lengths {list(lengths)} (max_len {max_len})")


def export_query_encoder(run_dir: str | Path, out_dir: str | Path, histories: CSR, name: str | None = None,
                         opset: int = OPSET, tolerance: float = PARITY_TOLERANCE, min_users: int = 1000,
                         lengths: Sequence[int] = PARITY_LENGTHS, k: int = 10,
                         min_topk_agreement: float = MIN_TOPK_AGREEMENT,
                         data_fingerprint: str | None = None, history_source: str | None = None) -> dict[str, Any]:
    """Export ``<run_dir>/model`` as a query-encoder bundle at ``out_dir`` (atomically).

    ``histories``: real user histories (CSR of item ids, time order), e.g. the
    test split's. Users with no items are dropped; at least ``min_users`` must remain.
    Parity lengths above the model's ``max_len`` are clipped to it. Returns the manifest.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model_dir = run_dir / "model"
    cls = model_class(model_dir)
    if cls not in ENCODERS:
        raise ExportError(f"{model_dir}: model class {cls!r} has no query-encoder export (registered: {sorted(ENCODERS)})")
    adapter = ENCODERS[cls]
    net, model_args = rebuild_net(model_dir)
    module = adapter.wrap(net).eval()
    table_t = adapter.item_table(net).detach().float().contiguous()
    n_rows_table, dim = table_t.shape
    max_len = adapter.max_len(net)
    histories = histories.take(np.flatnonzero(histories.lengths() > 0))
    if histories.n_rows < min_users:
        raise ExportError(f"{run_dir}: need >= {min_users} user histories with items for the parity check, "
                          f"got {histories.n_rows}")
    if histories.indices.size and (histories.indices.min() < 1 or histories.indices.max() >= n_rows_table):
        raise ExportError(f"histories hold item ids outside [1, {n_rows_table - 1}] of the model's catalogue "
                          f"(not this run's data?)")
    eval_lengths = sorted({min(int(n), max_len) if max_len else int(n) for n in lengths})
    ex_len = _example_length(eval_lengths, max_len)
    example = left_pad(histories.take(np.arange(2)), ex_len)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    import onnx

    with atomic_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        export_encoder_onnx(module, example, tmp / MODEL_FILE, max_len, opset)
        export_s = time.perf_counter() - t0
        table = table_t.numpy().astype(np.float32)
        np.save(tmp / TABLE_FILE, table, allow_pickle=False)
        session = onnx_session(tmp / MODEL_FILE)
        by_len = [parity_at_length(module, session, table_t, histories, n, k) for n in eval_lengths]
        worst = max(p["max_abs_diff"] for p in by_len)
        agree = min(p["topk_agreement"] for p in by_len)
        parity = {"users": histories.n_rows, "lengths": eval_lengths, "example_length": ex_len, "k": k,
                  "max_abs_diff": worst, "min_topk_agreement": agree, "by_length": by_len,
                  "tolerance": tolerance, "required_topk_agreement": min_topk_agreement,
                  "history_source": history_source}
        if not (worst <= tolerance and agree >= min_topk_agreement):
            raise ExportError(f"parity check failed for {run_dir}: max |torch - onnx| state = {worst:.3g} "
                              f"(tolerance {tolerance:g}), top-{k} identical for {agree:.4%} of users "
                              f"(need {min_topk_agreement:.1%}) over lengths {eval_lengths}; nothing written to {out_dir}")
        proto = onnx.load(str(tmp / MODEL_FILE), load_external_data=False)
        onnx.checker.check_model(proto)
        opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
        files = {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in (MODEL_FILE, TABLE_FILE)}
        manifest = {
            "format": MANIFEST_FORMAT, "kind": "query_encoder", "name": name or out_dir.name,
            "created_unix": time.time(),
            "model": {"file": MODEL_FILE, "class": cls, "description": adapter.description, "model_args": model_args,
                      "run_dir": str(run_dir.resolve()), "weights_sha256": sha256_file(model_dir / "weights.safetensors")},
            "embedding_version": embedding_version(model_dir),
            "inputs": [{"name": "items", "dtype": "int64", "shape": ["batch", "seq"], "kind": "item_sequence",
                        "vocab_size": int(n_rows_table), "pad_id": 0, "padding": "left", "max_len": max_len}],
            "outputs": [{"name": "state", "dtype": "float32", "shape": ["batch", int(dim)],
                         "meaning": "query state; item scores = state @ item_embeddings.T"}],
            "dynamic_axes": {"items": {"0": "batch", "1": "seq"}, "state": {"0": "batch"}},
            "item_embeddings": {"file": TABLE_FILE, "dtype": "float32", "shape": [int(n_rows_table), int(dim)],
                                "row_0": "padding (never recommended)", "scoring": "dot"},
            "n_items": int(n_rows_table - 1),
            "opset": opsets.get("ai.onnx", opset), "opset_imports": opsets,
            "versions": {**versions(), "onnx": onnx.__version__}, "git_commit": git_commit(),
            "data_fingerprint": data_fingerprint or (summary.get("data") or {}).get("fingerprint"),
            "test_metrics": {k_: v for k_, v in summary.items() if k_.startswith("test/") and "@10" in k_},
            "parity": parity, "export_s": export_s, "files": files,
        }
        write_manifest(tmp, manifest)
        finalize_bundle_permissions(tmp)
    return manifest
