"""The two-tower user tower as a query encoder (listed in :data:`~recsys.export.encoders.ENCODERS`).

ONNX inputs (the user tower's real inputs, all int64, batch dim shared):

* ``items`` (batch, seq): the user's recent items, left-padded with 0, at most
  ``max_history`` (the runtime keeps the last ``max_history``);
* ``user_id`` (batch,): the hashed user id bucket, ``crc32(raw id) % n_buckets + 1``;
  0 = unknown user (users without training interactions got 0 in training too);
  present only when the model embeds user ids;
* ``user_<feature>`` (batch,): one per categorical user feature the model uses
  (sorted by feature name), code ``j + 1`` = ``vocab[j]``, 0 = unknown / missing.

Output ``state`` (batch, D): the user vector (L2-normalised when the model scores
by cosine). The history items are embedded by the item tower; its output for
items 0..n (row 0 = zeros, items without training interactions from their
features only) is computed once at export, stored as ``item_embeddings.npy`` and
baked into the graph as the lookup table, so the runtime and the graph score with
the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recsys.export.adapters import BoundEncoder, EncoderData, QueryEncoderAdapter, SideInput
from recsys.export.errors import ExportError
from recsys.models.two_tower import ID

CLASS = "recsys.models.two_tower.TwoTower"
USER_ID_INPUT = "user_id"


class UserTowerQuery(nn.Module):
    """``forward(items, *side) -> net.user_vectors(...)`` with the item tower's table
    as a buffer; ``keys`` are the user-tower feature names of the side inputs, in order."""

    def __init__(self, net: nn.Module, table: torch.Tensor, keys: list[str]):
        super().__init__()
        self.net, self.keys = net, list(keys)
        self.register_buffer("table", table.detach().float().contiguous().clone())

    def forward(self, items: torch.Tensor, *side: torch.Tensor) -> torch.Tensor:
        feats = dict(zip(self.keys, side))
        uid = feats.pop(ID, None)
        if uid is None:  # the model does not embed user ids: the argument is ignored
            uid = torch.zeros_like(items[:, 0])
        return self.net.user_vectors(uid, items, feats, self.table)


def side_inputs(net: nn.Module, vocab: dict[str, list[str]] | None = None) -> tuple[list[SideInput], list[str]]:
    """The side-input specs and the matching user-tower feature keys."""
    fe = net.user_tower.features
    specs, keys = [], []
    if fe.id_emb is not None:
        n = int(fe.id_emb.num_embeddings)
        specs.append(SideInput(USER_ID_INPUT, n, {"kind": "hashed_id", "feature": ID, "n_buckets": n - 1,
                                                  "hash": "crc32(utf-8 raw user id) % n_buckets + 1; "
                                                          "0 = unknown user (not seen in training)"}))
        keys.append(ID)
    for name, emb in zip(fe.cat_names, fe.cat):
        spec: dict[str, Any] = {"kind": "categorical", "feature": name, "codes": "j + 1 = vocab[j]; 0 = unknown"}
        if vocab and name in vocab:
            spec["vocab"] = list(vocab[name])
        specs.append(SideInput(f"user_{name}", int(emb.num_embeddings), spec))
        keys.append(name)
    return specs, keys


def item_table(net: nn.Module, item_features: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(n_items + 1, D)`` item-tower output for every item (row 0 = zeros), fp32."""
    with torch.no_grad():
        v = net.eval().item_vectors({k: torch.as_tensor(t) for k, t in item_features.items()}).float().clone()
    v[0] = 0
    return v


def bind(net: nn.Module, context: Any) -> BoundEncoder:
    """``context``: ``{"item_features": {name: tensor}}`` (export) or
    ``{"item_table": (n_items + 1, D) array}`` (a bundle's table, for the bench)."""
    context = context or {}
    if "item_table" in context:
        table = torch.as_tensor(np.asarray(context["item_table"], dtype=np.float32))
    elif "item_features" in context:
        table = item_table(net, context["item_features"])
    else:
        raise ExportError("two-tower export needs the item features of the run's data (context['item_features'])")
    if table.shape != (net.n_items + 1, net.dim):
        raise ExportError(f"two-tower item table {tuple(table.shape)}, expected {(net.n_items + 1, net.dim)}")
    specs, keys = side_inputs(net, context.get("user_vocab"))
    return BoundEncoder(UserTowerQuery(net, table, keys).eval(), table, int(net.max_history), tuple(specs),
                        scoring="cosine (unit vectors; dot = cosine)" if net.normalize else "dot")


def parity_data(run_dir: Path, dm: Any, data: Any, split: Any, net: nn.Module) -> EncoderData:
    """The run's test-split users: their training histories, hashed user ids and
    categorical user features, encoded exactly as in training (``dm``: the run's
    datamodule rebuilt from its config by the caller; its vocabularies must equal
    ``model/features.json``)."""
    saved_path = Path(run_dir) / "model" / "features.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        if json.loads(json.dumps(dm.feature_metadata())) != saved:
            raise ExportError(f"{saved_path}: the feature vocabularies rebuilt from the run's data differ from the "
                              f"saved ones (different data or code?)")
    es = split.test
    users = np.asarray(es.users, dtype=np.int64)
    specs, keys = side_inputs(net)
    side = {s.name: dm.users.tensors[k].numpy()[users].astype(np.int64) for s, k in zip(specs, keys)}
    return EncoderData(histories=es.history, side=side,
                       context={"item_features": dm.items.tensors, "user_vocab": dm.users.vocab},
                       population=int(data.n_users),
                       source=f"test-split users of data={data.name} ({split.info.get('split')}): training "
                              f"histories, hashed ids and user features", fingerprint=data.fingerprint,
                       item_ids=data.raw_item_ids())


def _needs_context(net: nn.Module) -> Any:
    raise ExportError("the two-tower user tower needs the run's item features: use bind(net, context)")


ADAPTER = QueryEncoderAdapter(
    wrap=_needs_context, item_table=_needs_context,
    max_len=lambda net: int(net.max_history),
    description="two-tower user tower: hashed user id + user features + pooled history of item-tower vectors",
    bind=bind, parity_data=parity_data)
