"""Next-item losses over hidden states of the non-padded positions only.

Every loss is called as ``loss(hidden, labels, items)`` with ``hidden`` ``(N, D)``
(only positions that have a label: padded positions are never scored),
``labels`` ``(N,)`` item ids in ``1..n_items`` and ``items`` the output table
``(n_items + 1, D)``. Sampled losses draw negatives with the torch global RNG,
which the training module reseeds per epoch (so a resumed run is identical).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FullSoftmaxCE(nn.Module):
    """Cross-entropy over the whole catalogue (padding id excluded)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        logits = hidden @ items[1:].T  # N, n_items: padding never competes
        return F.cross_entropy(logits.float(), labels - 1, label_smoothing=self.label_smoothing)


def _uniform_negatives(labels: torch.Tensor, k: int, n_items: int) -> torch.Tensor:
    """``(N, k)`` ids uniform in ``1..n_items``, never equal to the row's label."""
    neg = torch.randint(1, n_items, (len(labels), k), device=labels.device)
    return neg + (neg >= labels[:, None]).long()  # skip the label: uniform over the others


class SampledBCE(nn.Module):
    """Binary cross-entropy with ``n_negatives`` uniform negatives per positive
    (the original SASRec recipe). Negatives only exclude the position's own
    label: nothing about a user's future is used."""

    def __init__(self, n_negatives: int = 1):
        super().__init__()
        self.n_negatives = n_negatives

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        neg = _uniform_negatives(labels, self.n_negatives, items.shape[0] - 1)
        pos_logit = (hidden * items[labels]).sum(-1)  # N
        neg_logit = torch.einsum("nd,nkd->nk", hidden, items[neg])  # N, k
        pos = F.binary_cross_entropy_with_logits(pos_logit.float(), torch.ones_like(pos_logit, dtype=torch.float32))
        negl = F.binary_cross_entropy_with_logits(neg_logit.float(), torch.zeros_like(neg_logit, dtype=torch.float32))
        return pos + negl


class SampledSoftmax(nn.Module):
    """Softmax over the positive and ``n_negatives`` shared negatives drawn from
    the training item frequency q, with logQ correction (``logit - log q``,
    Yi et al. 2019 / Bengio & Senecal); accidental hits are removed.

    Call :meth:`set_item_counts` with training counts before use (the training
    module does); without it, negatives are uniform.
    """

    def __init__(self, n_negatives: int = 256, logq_correction: bool = True, power: float = 1.0):
        super().__init__()
        self.n_negatives, self.logq_correction, self.power = n_negatives, logq_correction, power
        self.register_buffer("q", torch.zeros(0), persistent=False)

    def set_item_counts(self, counts: np.ndarray) -> None:
        """Sampling distribution from training counts ``(n_items + 1,)``
        (add-one smoothing so that every item can be drawn)."""
        c = (torch.as_tensor(np.asarray(counts, dtype=np.float64)).float() + 1.0) ** self.power
        c[0] = 0.0
        self.q = c / c.sum()

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        n = items.shape[0]
        if self.q.numel() != n:
            self.q = torch.full((n,), 1.0 / (n - 1), device=items.device)
            self.q[0] = 0.0
        q = self.q.to(items.device)
        neg = torch.multinomial(q, self.n_negatives, replacement=True)  # k shared negatives
        pos_logit = (hidden * items[labels]).sum(-1, keepdim=True)  # N, 1
        neg_logit = hidden @ items[neg].T  # N, k
        if self.logq_correction:
            pos_logit = pos_logit - torch.log(q[labels] * self.n_negatives)[:, None]
            neg_logit = neg_logit - torch.log(q[neg] * self.n_negatives)[None, :]
        neg_logit = neg_logit.masked_fill(neg[None, :] == labels[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1).float()
        return F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.long, device=labels.device))
