"""A sequence encoder behind the baselines' ``fit`` / ``score`` interface.

:class:`SequenceRecommender` trains SASRec or GRU4Rec for a fixed number of
epochs (no validation, no checkpoints) through the same data module and
Lightning module as ``recsys train`` (:mod:`recsys.training.sequence`), so that
neural sequence models can be used wherever a baseline can: ``recsys evaluate
model=sasrec_fit``, OPE policies, the offline/online alignment study. For real
training runs (early stopping, DDP, logging) use ``recsys train``.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytorch_lightning as L
import torch

from recsys.models.gru4rec import GRU4Rec
from recsys.models.sequential import SASRec
from recsys.training.losses import FullSoftmaxCE, SampledBCE, SampledSoftmax
from recsys.training.sequence.data import SequenceDataModule, TrainingInteractions, padded_histories
from recsys.training.sequence.module import SequentialRecModule
from recsys.utils.sparse import CSR

_NETS = {"sasrec": SASRec, "gru4rec": GRU4Rec}
_LOSSES = {"ce": FullSoftmaxCE, "bce": SampledBCE, "sampled_softmax": SampledSoftmax}


class SequenceRecommender:
    """Args:
        net: ``"sasrec"`` or ``"gru4rec"``.
        loss: ``"ce"``, ``"bce"`` or ``"sampled_softmax"``.
        hidden, n_layers, max_len, dropout: encoder size.
        epochs, batch_size, lr, seed: training (Adam, gradient norm clipped at 1, on the CPU).
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
        """Train on interactions sorted by user, then time (users with one item give no example)."""
        torch.manual_seed(self.seed)
        net = self._build(n_items)
        dm = SequenceDataModule(TrainingInteractions(users, items), n_items, max_len=self.max_len,
                                batch_size=self.batch_size, seed=self.seed)
        module = SequentialRecModule(net, _LOSSES[self.loss_name](), partial(torch.optim.Adam, lr=self.lr),
                                     top_k=0, seed=self.seed)
        trainer = L.Trainer(max_epochs=self.epochs, accelerator="cpu", devices=1, gradient_clip_val=1.0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            use_distributed_sampler=False)
        trainer.fit(module, datamodule=dm)
        self.net = module.net.eval()
        return self

    @torch.no_grad()
    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        seq = padded_histories(history, self.max_len)
        return (self.net.next_item_state(seq) @ self.net.output_embeddings().T).numpy()
