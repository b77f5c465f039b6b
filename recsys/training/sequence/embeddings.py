"""Retrieval embeddings of a trained sequence model (the ``embeddings/`` contract
that ``recsys index build`` reads; written by
:func:`recsys.artifacts.embeddings.write_run_embeddings`).

* items: the output embedding table (rows ``1..n``), the vectors next-item
  states are scored against (inner product);
* users: the next-item state after each user's known history, i.e. everything
  but the held-out test item (``split.test.history``): the query a serving system
  would issue for "what next"; users without an evaluation row are left out;
* seen: the same histories, so ``exclude_seen`` removes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.artifacts.embeddings import write_run_embeddings
from recsys.data.prepare import item_categories
from recsys.utils.sparse import left_pad


@torch.no_grad()
def write_sequence_embeddings(net: torch.nn.Module, data: Any, split: Any, directory: str | Path, run: str,
                              batch_size: int = 1024) -> dict[str, Any]:
    """Write ``directory`` (items, the users of ``split.test`` and their seen items); returns its metadata."""
    was_training = net.training
    net.eval()
    es = split.test
    max_len = int(getattr(net, "max_len", 50) or 50)
    device = next(net.parameters()).device
    states = []
    for s in range(0, len(es.users), batch_size):
        rows = es.history.slice(s, min(s + batch_size, len(es.users)))
        seq = torch.from_numpy(left_pad(rows, max_len)).to(device)
        states.append(net.next_item_state(seq).float().cpu())
    net.train(was_training)
    user_vecs = torch.cat(states).numpy() if states else np.zeros((0, net.output_embeddings().shape[1]), np.float32)
    item_vecs = net.output_embeddings()[1:].detach().float().cpu().numpy()
    uid = np.asarray(data.users.column("user_id").to_pylist(), dtype=object)
    iid = np.asarray(data.items.column("item_id").to_pylist(), dtype=object)
    lens = es.history.lengths()
    seen_u = np.repeat(es.users, lens)
    seen_i = es.history.indices
    return write_run_embeddings(directory, item_ids=iid.tolist(), item_vectors=item_vecs,
                                user_ids=uid[es.users - 1].tolist(), user_vectors=user_vecs,
                                seen_user_ids=uid[seen_u - 1].tolist(), seen_item_ids=iid[seen_i - 1].tolist(),
                                metric="ip", data_fingerprint=data.fingerprint, run=run,
                                item_categories=item_categories(data), model=type(net).__name__)
