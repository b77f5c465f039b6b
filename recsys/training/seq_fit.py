"""A sequence encoder behind the baselines' ``fit`` / ``score`` interface.

:class:`SequenceRecommender` trains SASRec or GRU4Rec for a fixed number of
epochs with a plain loop (no validation, no checkpoints) so that neural sequence
models can be used wherever a baseline can: ``recsys evaluate model=...``, OPE
policies, the offline/online alignment study. For real training runs (early
stopping, DDP, logging) use ``recsys train``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from recsys.models.gru4rec import GRU4Rec
from recsys.models.sequential import SASRec
from recsys.training.losses import FullSoftmaxCE, SampledBCE, SampledSoftmax
from recsys.training.seq_data import BucketBatchSampler, _Arrays, collate_trim, left_pad
from recsys.utils.sparse import CSR

_NETS = {"sasrec": SASRec, "gru4rec": GRU4Rec}
_LOSSES = {"ce": FullSoftmaxCE, "bce": SampledBCE, "sampled_softmax": SampledSoftmax}


class SequenceRecommender:
    """Args:
        net: ``"sasrec"`` or ``"gru4rec"``.
        loss: ``"ce"``, ``"bce"`` or ``"sampled_softmax"``.
        hidden, n_layers, max_len, dropout: encoder size.
        epochs, batch_size, lr, seed: training.
    """

    def __init__(self, net: str = "sasrec", loss: str = "ce", hidden: int = 64, n_layers: int = 2, max_len: int = 50,
                 dropout: float = 0.2, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, seed: int = 0):
        if net not in _NETS or loss not in _LOSSES:
            raise ValueError(f"net must be one of {sorted(_NETS)} and loss one of {sorted(_LOSSES)}")
        self.net_name, self.loss_name = net, loss
        self.hidden, self.n_layers, self.max_len, self.dropout = hidden, n_layers, max_len, dropout
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed

    def _build(self, n_items: int) -> torch.nn.Module:
        if self.net_name == "sasrec":
            return SASRec(n_items, max_len=self.max_len, hidden=self.hidden, n_layers=self.n_layers,
                          dropout=self.dropout)
        return GRU4Rec(n_items, hidden=self.hidden, n_layers=self.n_layers, dropout=self.dropout, max_len=self.max_len)

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "SequenceRecommender":
        torch.manual_seed(self.seed)
        self.net = self._build(n_items)
        loss = _LOSSES[self.loss_name]()
        if hasattr(loss, "set_item_counts"):
            loss.set_item_counts(np.bincount(items, minlength=n_items + 1))
        uniq = np.unique(users)
        seqs = CSR.from_sorted_rows(np.searchsorted(uniq, users), items, len(uniq))
        padded = left_pad(seqs.take(np.flatnonzero(seqs.lengths() >= 2)), self.max_len + 1)
        data = _Arrays(input=torch.from_numpy(padded[:, :-1]), labels=torch.from_numpy(padded[:, 1:]))
        sampler = BucketBatchSampler((padded[:, 1:] > 0).sum(1), self.batch_size, seed=self.seed)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_trim)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.net.train()
        step = 0
        for epoch in range(self.epochs):
            sampler.set_epoch(epoch)
            for batch in loader:
                torch.manual_seed(self.seed * 1_000_003 + step)
                hidden = self.net(batch["input"])
                real = batch["labels"] > 0
                value = loss(hidden[real], batch["labels"][real], self.net.output_embeddings())
                opt.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                opt.step()
                step += 1
        self.net.eval()
        return self

    @torch.no_grad()
    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        longest = int(min(max(history.lengths().max(initial=1), 1), self.max_len))
        seq = torch.from_numpy(left_pad(history, longest))
        return (self.net.next_item_state(seq) @ self.net.output_embeddings().T).numpy()
