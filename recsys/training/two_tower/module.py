"""LightningModule for the two-tower model.

Training: in-batch softmax (the other positives of the batch are the negatives),
optionally mixed with ``n_uniform_negatives`` items drawn uniformly from the
catalogue, with the logQ correction of Yi et al. (RecSys 2019): every candidate's
logit is reduced by the log of its expected number of occurrences among the
candidates, ``log(B * p_i + M / n_items)`` with ``p_i`` the item's frequency among
training positives (for ``M = 0`` this is ``log p_i`` up to a constant). A
candidate that is one of the user's own training positives (other than the
target itself) is masked out, so it is never pushed down as a negative.

Evaluation is exact and reuses :class:`~recsys.training.sequence.module.SequentialRecModule`:
all item vectors are computed once per evaluation epoch, each process scores its
users against the whole catalogue, history is excluded, per-user metrics are
gathered across processes and averaged with exact rounding.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.splits import EvalSet
from recsys.evaluation.ranking import exclude
from recsys.models.two_tower import ID, TwoTower
from recsys.training.sequence.module import SequentialRecModule

DENSE_MASK_MAX = 50_000_000  # users x items below which own positives are looked up in a bool matrix


def own_positive_mask(users: torch.Tensor, cand_items: torch.Tensor, pos_keys: torch.Tensor, n_items: int,
                      target_col: torch.Tensor | None = None, dense: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, C)`` bool: candidate ``j`` is a training positive of user ``i`` and is
    not row ``i``'s target column. ``pos_keys`` are the sorted ``user * (n_items + 1) + item``;
    ``dense`` (optional) the same set as a ``(n_users + 1, n_items + 1)`` bool matrix (faster)."""
    if dense is not None:
        hit = dense[users[:, None], cand_items[None, :]]
    elif len(pos_keys):
        keys = users[:, None] * (n_items + 1) + cand_items[None, :]
        at = torch.searchsorted(pos_keys, keys).clamp(max=len(pos_keys) - 1)
        hit = pos_keys[at] == keys
    else:
        hit = torch.zeros((len(users), len(cand_items)), dtype=torch.bool, device=users.device)
    if target_col is not None:
        hit[torch.arange(len(users), device=users.device), target_col] = False
    return hit


def in_batch_softmax_loss(user_vecs: torch.Tensor, cand_vecs: torch.Tensor, target_col: torch.Tensor,
                          temperature: float = 1.0, log_q: torch.Tensor | None = None,
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of each user over the candidates.

    Args:
        user_vecs: ``(B, D)``; cand_vecs: ``(C, D)``; target_col: ``(B,)`` column of the positive.
        log_q: ``(C,)`` log sampling probability (or expected count) of each candidate, subtracted
            from its logit (logQ correction); ``None`` = no correction.
        mask: ``(B, C)`` True = not a negative for that row (logit -inf).
    """
    logits = user_vecs @ cand_vecs.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :].to(logits.dtype)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits.float(), target_col)


class TwoTowerModule(SequentialRecModule):
    """Args:
        net: a :class:`~recsys.models.two_tower.TwoTower`.
        optimizer: ``partial`` taking the parameters.
        temperature: logits are ``score / temperature``.
        logq: apply the logQ correction.
        n_uniform_negatives: extra negatives per step, uniform over the catalogue, shared by the batch.
        mask_own_positives: do not use a user's own training positives as its negatives.
        id_dropout: probability that an item's hashed id is hidden in a training step, so the
            item tower also learns to embed items from features alone (cold start).
        user_id_dropout: probability that a training row's hashed user id is hidden, so the user
            tower also learns to embed users from features and history alone (users without an
            id: first seen after training, e.g. a temporal test window).
    """

    def __init__(self, net: TwoTower, optimizer: Callable, scheduler: Callable | None = None,
                 temperature: float = 0.1, logq: bool = True, n_uniform_negatives: int = 0,
                 mask_own_positives: bool = True, id_dropout: float = 0.0, user_id_dropout: float = 0.0,
                 ks: Sequence[int] = (5, 10, 20),
                 exclude_history: bool = True, top_k: int = 10, seed: int = 0):
        super().__init__(net=net, loss=nn.Identity(), optimizer=optimizer, scheduler=scheduler, ks=ks,
                         exclude_history=exclude_history, top_k=top_k, seed=seed)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.logq, self.n_uniform = temperature, logq, n_uniform_negatives
        for name, v in (("id_dropout", id_dropout), ("user_id_dropout", user_id_dropout)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.mask_own_positives, self.id_dropout, self.user_id_dropout = mask_own_positives, id_dropout, user_id_dropout
        self._item_vecs: torch.Tensor | None = None

    # ---- data on the device ------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.dm = dm
        counts = torch.as_tensor(dm.item_counts, dtype=torch.float64)
        self._p = counts / counts.sum()
        self._dev_cache: dict[str, Any] = {}

    def _on_device(self) -> dict[str, Any]:
        if self._dev_cache.get("device") != self.device:
            d = self.device
            self._dev_cache = {
                "device": d,
                "items": {k: v.to(d) for k, v in self.dm.items.tensors.items()},
                "users": {k: v.to(d) for k, v in self.dm.users.tensors.items()},
                "p": self._p.to(d),
                "pos_keys": self.dm.pos_keys.to(d),
                "dense": None,
            }
            n_u, n_i = self.dm.n_users + 1, self.dm.n_items + 1
            if n_u * n_i <= DENSE_MASK_MAX:  # small catalogues: a bool matrix beats a binary search
                dense = torch.zeros(n_u * n_i, dtype=torch.bool, device=d)
                dense[self._dev_cache["pos_keys"]] = True
                self._dev_cache["dense"] = dense.view(n_u, n_i)
        return self._dev_cache

    # ---- training ----------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        c = self._on_device()
        users, hist, pos = batch["users"], batch["history"], batch["pos"]
        B, L = hist.shape
        n = self.net.n_items
        neg = (torch.randint(1, n + 1, (self.n_uniform,), device=self.device) if self.n_uniform
               else pos.new_zeros(0))
        needed = torch.cat([hist.flatten(), pos, neg])
        uniq, inv = torch.unique(needed, return_inverse=True)
        feats = {k: v[uniq] for k, v in c["items"].items()}
        if self.id_dropout > 0 and ID in feats:
            drop = torch.rand(len(uniq), device=self.device) < self.id_dropout
            feats[ID] = feats[ID].masked_fill(drop, 0)
        vecs = self.net.item_vectors(feats) * (uniq > 0)[:, None]  # padding -> 0
        hist_v = vecs[inv[: B * L]].view(B, L, -1)
        cand_v = vecs[inv[B * L :]]
        cand_items = torch.cat([pos, neg])
        uid = c["users"][ID][users]
        if self.user_id_dropout > 0:
            uid = uid.masked_fill(torch.rand(B, device=self.device) < self.user_id_dropout, 0)
        u = self.net.user_vectors(uid, hist, {k: v[users] for k, v in c["users"].items() if k != ID}, hist_v)
        target = torch.arange(B, device=self.device)
        log_q = None
        if self.logq:
            expected = B * c["p"][cand_items] + self.n_uniform / n
            log_q = torch.log(expected.clamp(min=1e-12)).float()
        mask = own_positive_mask(users, cand_items, c["pos_keys"], n, target, c["dense"]) if self.mask_own_positives else None
        loss = in_batch_softmax_loss(u, cand_v, target, self.temperature, log_q, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        return loss

    # ---- exact evaluation ----------------------------------------------------
    @torch.no_grad()
    def all_item_vectors(self) -> torch.Tensor:
        """``(n_items + 1, D)`` in fp32, row 0 = 0."""
        c = self._on_device()
        with torch.autocast(self.device.type, enabled=False):
            v = self.net.item_vectors(c["items"]).float()
        v[0] = 0
        return v

    @torch.no_grad()
    def user_vectors_for(self, users: np.ndarray, history: np.ndarray, item_vecs: torch.Tensor) -> torch.Tensor:
        c = self._on_device()
        u = torch.as_tensor(users, device=self.device)
        h = torch.as_tensor(history, device=self.device)
        with torch.autocast(self.device.type, enabled=False):
            return self.net.user_vectors(c["users"][ID][u], h, {k: v[u] for k, v in c["users"].items() if k != ID},
                                         item_vecs).float()

    def on_validation_epoch_start(self) -> None:
        self._item_vecs = self.all_item_vectors()

    def on_test_epoch_start(self) -> None:
        self._item_vecs = self.all_item_vectors()

    @torch.no_grad()
    def score_histories(self, history_rows: np.ndarray, es: EvalSet) -> torch.Tensor:
        """``(B, n_items + 1)`` fp32 scores for rows of an EvalSet (history excluded)."""
        item_vecs = self._item_vecs if self._item_vecs is not None else self.all_item_vectors()
        u = self.user_vectors_for(es.users[history_rows], self.dm.eval_history(es, history_rows), item_vecs)
        scores = u @ item_vecs.T
        exclude(scores, es.history.take(history_rows) if self.exclude_history else None)
        return scores

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 else decay).append(p)
        opt = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}
