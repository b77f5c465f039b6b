"""Export a query encoder (a sequence model's next-item state) to an ONNX bundle.

``export_query_encoder(run_dir, out_dir, users, parity)`` (``users``: an
:class:`EncoderData` of real users, ``parity``: a :class:`ParitySpec`) rebuilds the net of
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

Adding an encoder is one :func:`register_encoder` call with a
:class:`QueryEncoderAdapter`. A single-input encoder (SASRec) says how to wrap the
net as ``module(items) -> (B, D)``, its item table and its longest input. A
multi-input encoder (the two-tower user tower, :mod:`recsys.export.two_tower_encoder`)
gives ``bind(net, context) -> BoundEncoder`` (a ``module(items, *side) -> (B, D)``,
the item table, the per-user :class:`SideInput` specs) and ``parity_data(run_dir,
datamodule, data, split, net)`` -> :class:`EncoderData` (histories + aligned side inputs of
real users + the ``context`` for ``bind``). Export, parity, manifest, runtime and
bench treat ``items`` and the side inputs alike: named ONNX inputs with the batch
dim shared, every side input ``(batch,)`` int64 in ``[0, vocab_size)``.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from recsys.artifacts import models
from recsys.artifacts.bundle import EXPORT_FORMAT, write_bundle
from recsys.export.adapters import BoundEncoder, EncoderData, QueryEncoderAdapter, SideInput  # noqa: F401
from recsys.export.encoders import ENCODERS
from recsys.export.errors import ExportError
from recsys.export.onnx_ranker import OPSET, onnx_session
from recsys.utils.lineage import git_commit, versions
from recsys.utils.sparse import CSR, left_pad  # noqa: F401  (left_pad re-exported)
from recsys.utils.topk import top_k_excluding  # noqa: F401  (re-exported)

MODEL_FILE = "query_encoder.onnx"
TABLE_FILE = "item_embeddings.npy"
IDS_FILE = "item_ids.npy"
PARITY_TOLERANCE = 1e-5
PARITY_LENGTHS = (1, 5, 17, 50)
MIN_TOPK_AGREEMENT = 0.999


def model_class(model_dir: str | Path) -> str:
    """The verified registry key (``_target_``) of ``<model_dir>`` (see :mod:`recsys.artifacts.models`)."""
    if not (Path(model_dir) / "model_args.json").is_file():
        raise ExportError(f"{model_dir}: no model_args.json (expected the model/ folder of a training run)")
    return models.model_class(model_dir)


def bundle_kind(model_dir: str | Path) -> str:
    """``"query_encoder"`` for classes in :data:`~recsys.export.encoders.ENCODERS`,
    ``"ranker"`` for models saved with ``features.json`` (rankers); ExportError otherwise."""
    cls = model_class(model_dir)
    if cls in ENCODERS:
        return "query_encoder"
    if (Path(model_dir) / "features.json").is_file():
        return "ranker"
    raise ExportError(f"{model_dir}: model class {cls!r} has no export (rankers need features.json; "
                      f"query encoders: {sorted(ENCODERS)})")


embedding_version = models.embedding_version


def export_encoder_onnx(module: nn.Module, example: np.ndarray, path: str | Path, max_len: int | None,
                        opset: int = OPSET, side_example: dict[str, np.ndarray] | None = None) -> None:
    """One ONNX file: input ``items`` (batch, seq) int64 (+ the ``side_example``
    inputs, (batch,) int64 each, in that order), output ``state`` (batch, D)."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    seq = torch.export.Dim("seq", min=1, max=int(max_len) if max_len else 1 << 16)
    for noisy in ("onnx_ir", "onnxscript"):  # INFO lines per initializer / rewrite rule
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter (treespec, ...)
        if not side_example:
            torch.onnx.export(module.eval(), (torch.from_numpy(np.ascontiguousarray(example)),), str(path),
                              dynamo=True, external_data=False, input_names=["items"], output_names=["state"],
                              opset_version=opset, dynamic_shapes={"items": {0: batch, 1: seq}}, verbose=False)
            return
        args = (torch.from_numpy(np.ascontiguousarray(example)),
                *(torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for v in side_example.values()))
        shapes = ({0: batch, 1: seq}, tuple({0: batch} for _ in side_example))  # forward(items, *side)
        torch.onnx.export(module.eval(), args, str(path), dynamo=True, external_data=False,
                          input_names=["items", *side_example], output_names=["state"], opset_version=opset,
                          dynamic_shapes=shapes, verbose=False)


def _chunk(side: dict[str, np.ndarray] | None, s: int, e: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[s:e], dtype=np.int64) for k, v in (side or {}).items()}


def torch_states(module: nn.Module, items: np.ndarray, batch_size: int = 256,
                 side: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``module(items, *side values)`` in chunks of ``batch_size`` rows."""
    outs = []
    with torch.inference_mode():
        for s in range(0, len(items), batch_size):
            extra = [torch.from_numpy(v) for v in _chunk(side, s, s + batch_size).values()]
            outs.append(module(torch.from_numpy(np.ascontiguousarray(items[s:s + batch_size])), *extra).numpy())
    return np.concatenate(outs)


def onnx_states(session: Any, items: np.ndarray, batch_size: int = 256,
                side: dict[str, np.ndarray] | None = None) -> np.ndarray:
    return np.concatenate([session.run(["state"], {"items": np.ascontiguousarray(items[s:s + batch_size]),
                                                   **_chunk(side, s, s + batch_size)})[0]
                           for s in range(0, len(items), batch_size)])


def parity_at_length(module: nn.Module, session: Any, table_t: torch.Tensor, histories: CSR, length: int,
                     k: int, batch_size: int = 256, side: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """State and top-k parity of torch vs ORT on every history cut to its last ``length``
    items (with each user's ``side`` inputs, when the encoder has any)."""
    items = left_pad(histories, length)
    kw = {"side": side} if side else {}
    a = torch_states(module, items, batch_size, **kw)
    b = onnx_states(session, items, batch_size, **kw)
    d = np.abs(a.astype(np.float64) - b)
    diff = float(d.max()) if np.all(np.isfinite(d)) else float("inf")
    n1 = min(64, len(items))  # batch 1 on the first users
    b1 = np.concatenate([session.run(["state"], {"items": items[i:i + 1], **_chunk(side, i, i + 1)})[0]
                         for i in range(n1)])
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


@dataclass(frozen=True)
class ParitySpec:
    """What the export's parity check demands (``encoder:`` in ``configs/export.yaml``).

    Args:
        tolerance (float): max |torch - ORT| state difference.
        min_users (int): user histories with items needed (``min(min_users, population)``
            when the data has only ``population`` users).
        lengths (tuple[int, ...]): each history cut to its last L items; lengths above the
            model's ``max_len`` are clipped to it.
        k (int): top-k lists compared (padding and input items excluded).
        min_topk_agreement (float): share of users whose top-k must be identical.
    """

    tolerance: float = PARITY_TOLERANCE
    min_users: int = 1000
    lengths: tuple[int, ...] = PARITY_LENGTHS
    k: int = 10
    min_topk_agreement: float = MIN_TOPK_AGREEMENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))


def export_query_encoder(run_dir: str | Path, out_dir: str | Path, users: EncoderData,
                         parity: ParitySpec | None = None, *, name: str | None = None, opset: int = OPSET,
                         overwrite: bool = False) -> dict[str, Any]:
    """Export ``<run_dir>/model`` as a query-encoder bundle at ``out_dir`` (atomically).

    Args:
        run_dir: a ``recsys train`` run with a registered encoder class in ``model/``.
        out_dir: the bundle folder (replaced only if it is a bundle of this kind, or ``overwrite``).
        users: real users for the parity check (:class:`~recsys.export.adapters.EncoderData`):
            ``histories`` (CSR of item ids, time order, e.g. the test split's; users with no
            items are dropped), for multi-input encoders ``side`` ``{input: (n_rows,) int64}``
            aligned with them and the ``context`` their adapter's ``bind`` needs; ``population``,
            ``source`` and ``fingerprint`` go to the manifest.
        parity: thresholds (default :class:`ParitySpec`).
        name: the bundle's name in the manifest (default: ``out_dir``'s name).

    Example::

        export_query_encoder(run, "export/q", EncoderData(split.test.history, fingerprint=data.fingerprint),
                             ParitySpec(lengths=(5, 17, 50)), name="q")

    Returns the manifest.
    """
    spec = parity or ParitySpec()
    tolerance, min_users, lengths, k = spec.tolerance, spec.min_users, spec.lengths, spec.k
    min_topk_agreement = spec.min_topk_agreement
    histories, context, population = users.histories, users.context, users.population
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model_dir = run_dir / "model"
    if not (model_dir / "model_args.json").is_file():
        raise ExportError(f"{model_dir}: no model_args.json (expected the model/ folder of a training run)")
    folder = models.ModelFolder.open(model_dir)  # verified once for everything read below
    cls = folder.model_class
    if cls not in ENCODERS:
        raise ExportError(f"{model_dir}: model class {cls!r} has no query-encoder export (registered: {sorted(ENCODERS)})")
    adapter = ENCODERS[cls]
    net, model_args = folder.rebuild()
    bound = adapter.bound(net, context)
    module = bound.module.eval()
    table_t = bound.table.detach().float().contiguous()
    n_rows_table, dim = table_t.shape
    max_len = bound.max_len
    specs = list(bound.side_inputs)
    side = dict(users.side or {})
    if sorted(side) != sorted(s.name for s in specs):
        raise ExportError(f"{run_dir}: the encoder takes side inputs {[s.name for s in specs]}, "
                          f"the parity data gives {sorted(side)}")
    side = {s.name: np.asarray(side[s.name], dtype=np.int64) for s in specs}  # input order
    for s in specs:
        v = side[s.name]
        if v.shape != (histories.n_rows,) or (v.size and (v.min() < 0 or v.max() >= s.vocab_size)):
            raise ExportError(f"parity side input {s.name!r}: shape {v.shape} / values outside [0, {s.vocab_size}) "
                              f"(expected ({histories.n_rows},) ids)")
    raw_ids = None if users.item_ids is None else np.asarray(users.item_ids).astype(str)
    if raw_ids is not None and (raw_ids.shape != (n_rows_table,) or raw_ids[0] != ""
                                or len(set(raw_ids[1:].tolist())) != n_rows_table - 1):
        raise ExportError(f"{run_dir}: item_ids: {raw_ids.shape[0]} raw ids for a table of {n_rows_table} rows "
                          f"(expected one unique id per item, '' at row 0)")
    keep = np.flatnonzero(histories.lengths() > 0)
    histories = histories.take(keep)
    side = {k_: v[keep] for k_, v in side.items()}
    need = min(min_users, population) if population else min_users
    if histories.n_rows < need:
        raise ExportError(f"{run_dir}: need >= {need} user histories with items for the parity check, "
                          f"got {histories.n_rows}")
    if histories.indices.size and (histories.indices.min() < 1 or histories.indices.max() >= n_rows_table):
        raise ExportError(f"histories hold item ids outside [1, {n_rows_table - 1}] of the model's catalogue "
                          f"(not this run's data?)")
    eval_lengths = sorted({min(int(n), max_len) if max_len else int(n) for n in lengths})
    ex_len = _example_length(eval_lengths, max_len)
    example = left_pad(histories.take(np.arange(2)), ex_len)
    side_example = {k_: v[:2] for k_, v in side.items()}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    import onnx

    with write_bundle(out_dir, format=EXPORT_FORMAT, kind="query_encoder", overwrite=overwrite) as draft:
        tmp = draft.path
        t0 = time.perf_counter()
        export_encoder_onnx(module, example, tmp / MODEL_FILE, max_len, opset, side_example)
        export_s = time.perf_counter() - t0
        table = table_t.numpy().astype(np.float32)
        np.save(tmp / TABLE_FILE, table, allow_pickle=False)
        if raw_ids is not None:
            np.save(tmp / IDS_FILE, raw_ids, allow_pickle=False)
        session = onnx_session(tmp / MODEL_FILE)
        kw = {"side": side} if side else {}
        try:
            by_len = [parity_at_length(module, session, table_t, histories, n, k, **kw) for n in eval_lengths]
        except Exception as e:  # e.g. ORT refusing a shape the exporter specialised: the export is unusable
            if isinstance(e, ExportError):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"parity check could not run the exported {MODEL_FILE} of {run_dir} "
                              f"({type(e).__name__}: {first})") from None
        worst = max(p["max_abs_diff"] for p in by_len)
        agree = min(p["topk_agreement"] for p in by_len)
        report = {"users": histories.n_rows, "lengths": eval_lengths, "example_length": ex_len, "k": k,
                  "max_abs_diff": worst, "min_topk_agreement": agree, "by_length": by_len,
                  "tolerance": tolerance, "required_topk_agreement": min_topk_agreement,
                  "history_source": users.source, "min_users": need, "population": population,
                  "side_inputs": [s.name for s in specs]}
        if not (worst <= tolerance and agree >= min_topk_agreement):
            raise ExportError(f"parity check failed for {run_dir}: max |torch - onnx| state = {worst:.3g} "
                              f"(tolerance {tolerance:g}), top-{k} identical for {agree:.4%} of users "
                              f"(need {min_topk_agreement:.1%}) over lengths {eval_lengths}; nothing written to {out_dir}")
        proto = onnx.load(str(tmp / MODEL_FILE), load_external_data=False)
        onnx.checker.check_model(proto)
        opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
        draft.files = [MODEL_FILE, TABLE_FILE, *([IDS_FILE] if raw_ids is not None else [])]
        draft.manifest.update({
            "name": name or out_dir.name,
            "created_unix": time.time(),
            "model": {"file": MODEL_FILE, "class": cls, "description": adapter.description, "model_args": model_args,
                      "run_dir": str(run_dir.resolve()), "weights_sha256": folder.meta["weights_sha256"]},
            "embedding_version": folder.embedding_version,
            "inputs": [{"name": "items", "dtype": "int64", "shape": ["batch", "seq"], "kind": "item_sequence",
                        "vocab_size": int(n_rows_table), "pad_id": 0, "padding": "left", "max_len": max_len},
                       *(s.manifest() for s in specs)],
            "outputs": [{"name": "state", "dtype": "float32", "shape": ["batch", int(dim)],
                         "meaning": "query state; item scores = state @ item_embeddings.T"}],
            "dynamic_axes": {"items": {"0": "batch", "1": "seq"}, **{s.name: {"0": "batch"} for s in specs},
                             "state": {"0": "batch"}},
            "item_embeddings": {"file": TABLE_FILE, "dtype": "float32", "shape": [int(n_rows_table), int(dim)],
                                "row_0": "padding (never recommended)", "scoring": bound.scoring},
            "n_items": int(n_rows_table - 1),
            **({"item_ids": {"file": IDS_FILE, "dtype": "str", "shape": [int(n_rows_table)],
                             "meaning": "raw item id of each input id / table row; row 0 (padding) is ''"}}
               if raw_ids is not None else {}),
            "opset": opsets.get("ai.onnx", opset), "opset_imports": opsets,
            "versions": {**versions(), "onnx": onnx.__version__}, "git_commit": git_commit(),
            "data_fingerprint": users.fingerprint or (summary.get("data") or {}).get("fingerprint"),
            "test_metrics": {k_: v for k_, v in summary.items() if k_.startswith("test/") and "@10" in k_},
            "parity": report, "export_s": export_s,
        })
    return draft.manifest


def torch_module_for_bundle(manifest: dict[str, Any], bundle_dir: str | Path,
                            folder: models.ModelFolder | None = None) -> nn.Module:
    """The eval-mode torch encoder of a bundle's run (``forward(items, *side inputs)``;
    ``folder``: its model folder when the caller verified it already); multi-input
    encoders are bound to the bundle's own item table."""
    cls = manifest["model"]["class"]
    if cls not in ENCODERS:
        raise ExportError(f"{bundle_dir}: model class {cls!r} has no query-encoder export")
    adapter = ENCODERS[cls]
    net = (folder or models.ModelFolder.open(Path(manifest["model"]["run_dir"]) / "model")).rebuild()[0]
    if adapter.bind is None:
        return adapter.wrap(net).eval()
    table = np.load(Path(bundle_dir) / manifest["item_embeddings"]["file"], allow_pickle=False)
    return adapter.bind(net, {"item_table": table}).module.eval()
