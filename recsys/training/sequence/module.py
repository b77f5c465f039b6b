"""LightningModule for next-item sequence models (SASRec, BERT4Rec, GRU4Rec).

Owns the training step (loss on non-padded positions only) and exact
full-ranking evaluation: each process scores its share of the users against the
whole catalogue, per-user metrics are all-gathered, and every process computes
the same exactly-rounded mean, so metrics do not depend on the number of
processes or the evaluation batch size.

Batches are typed (:mod:`recsys.training.sequence.batches`): the training batch's
type says the task (causal or masked), and an evaluation batch carries its rows of
the split's EvalSet, their padded histories and held-out items, so the module
never looks the evaluation set up through the trainer.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as L
import torch
from torch import nn

from recsys.data.splits import EvalSet
from recsys.evaluation.ranking import aggregate, chunk_metrics, exclude, top_k_items
from recsys.training.sequence.batches import EvalBatch, MaskedBatch, SequenceBatch
from recsys.training.sequence.data import padded_histories
from recsys.utils.sparse import CSR


class SequentialRecModule(L.LightningModule):
    """Args:
        net: an encoder with ``forward``, ``next_item_state`` and ``output_embeddings``.
        loss: ``loss(hidden, labels, items)`` (see :mod:`recsys.training.losses`).
        optimizer: ``partial`` taking the parameters (Hydra ``_partial_: true``).
        scheduler: optional ``partial`` taking the optimizer (stepped per step).
        ks: cut-offs for evaluation metrics.
        top_k: keep each evaluated user's top-``top_k`` list (beyond-accuracy metrics).
        mask_prob: BERT4Rec masking rate (``masked`` task only).
        seed: reseeds torch's RNG at every step (dropout, negatives, masks), so
            resuming from a checkpoint reproduces an uninterrupted run.
        compile: ``torch.compile`` the net's forward (the training step) in place
            (``nn.Module.compile``: parameter names, checkpoints and the saved model
            are unchanged; evaluation scores through the eager ``next_item_state``).
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager``
            needs no C compiler).
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 ks: Sequence[int] = (5, 10, 20), mask_prob: float = 0.2, exclude_history: bool = True,
                 top_k: int = 10, seed: int = 0, compile: bool = False, compile_backend: str = "inductor"):
        super().__init__()
        if compile:
            net.compile(backend=compile_backend)
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.ks, self.mask_prob, self.exclude_history, self.seed = sorted(ks), mask_prob, exclude_history, seed
        self._eval_rows: list[torch.Tensor] = []
        self._eval_values: list[dict[str, torch.Tensor]] = []
        self.top_k = top_k
        self.results: dict[str, dict[str, float]] = {}
        self.top_items: dict[str, np.ndarray] = {}  # split -> (U, top_k) lists, rows in EvalSet order
        self.per_user: dict[str, dict[str, np.ndarray]] = {}  # split -> {metric: (U,)}, rows in EvalSet order

    # ---- training -------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(self.loss, "set_item_counts"):
            self.loss.set_item_counts(dm.item_counts)

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.current_epoch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout / negatives / masks depend only on (seed, step, rank): a resumed run
        # reproduces an uninterrupted one whatever else consumed the global RNG
        torch.manual_seed((self.seed * 1_000_003 + self.global_step) * 131 + self.global_rank)

    def training_step(self, batch: SequenceBatch | MaskedBatch, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch.inputs_and_labels(self.mask_prob, getattr(self.net, "mask_token", None))
        hidden = self.net(inputs)  # B, T, D
        real = labels > 0
        loss = self.loss(hidden[real], labels[real], self.net.output_embeddings())
        self.log("train/loss", loss, prog_bar=True, batch_size=int(real.sum()))
        return loss

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "emb" in name or "ln" in name else decay).append(p)
        opt = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return opt
        kwargs = {}
        if getattr(self.scheduler_factory, "keywords", {}).get("total_steps") == "auto":
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)  # max_epochs x batches per epoch
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt, **kwargs), "interval": "step"}}

    # ---- exact evaluation --------------------------------------------------
    @torch.no_grad()
    def score_sequences(self, seq: torch.Tensor, history: CSR) -> torch.Tensor:
        """``(B, n_items + 1)`` fp32 scores of left-padded histories ``seq`` ``(B, T)``
        (``history``: the same rows as a CSR, excluded when ``exclude_history``)."""
        seq = seq[:, -self.net.max_len:].to(self.device)  # longer inputs would leave the position table
        with torch.autocast(self.device.type, enabled=False):  # rank in fp32 even under bf16 training
            scores = self.net.next_item_state(seq).float() @ self.net.output_embeddings().float().T
        exclude(scores, history if self.exclude_history else None)
        return scores

    @torch.no_grad()
    def score_histories(self, history_rows: np.ndarray, es: EvalSet) -> torch.Tensor:
        """``(B, n_items + 1)`` scores for rows of an EvalSet (history excluded)."""
        hist = es.history.take(history_rows)
        return self.score_sequences(padded_histories(hist, self.net.max_len), hist)

    def _eval_batch(self, batch: EvalBatch | torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor, CSR]:
        """``(rows, scores, targets)`` of an evaluation batch. An :class:`EvalBatch`
        carries everything; a plain tensor of row indices (the two-tower data module's
        evaluation batches, until they are typed too) is looked up in the data
        module's ``<split>_set`` and scored by :meth:`score_histories`."""
        if isinstance(batch, EvalBatch):
            return batch.rows, self.score_sequences(batch.seq, batch.history), batch.targets
        es = getattr(self.trainer.datamodule, f"{split}_set")
        r = batch.cpu().numpy()
        return batch, self.score_histories(r, es), es.targets.take(r)

    def _eval_step(self, batch: EvalBatch | torch.Tensor, split: str) -> None:
        rows, scores, targets = self._eval_batch(batch, split)
        if torch.isnan(scores).any():
            raise FloatingPointError("model produced NaN scores during evaluation")
        values = chunk_metrics(scores, targets, self.ks)
        if self.top_k:
            values["_top"] = top_k_items(scores, self.top_k)
        self._eval_rows.append(rows.to(self.device))
        self._eval_values.append(values)

    def _eval_end(self, prefix: str) -> None:
        rows = torch.cat(self._eval_rows) if self._eval_rows else torch.zeros(0, dtype=torch.long, device=self.device)
        names = sorted(self._eval_values[0]) if self._eval_values else []
        local = {n: torch.cat([v[n] for v in self._eval_values]) for n in names}
        self._eval_rows, self._eval_values = [], []
        if self.trainer.world_size > 1:
            rows, local = self._gather(rows, local)
        order = torch.argsort(rows).cpu()
        per_user = {n: v.cpu()[order].numpy() for n, v in local.items()}
        if "_top" in per_user:
            self.top_items[prefix] = per_user.pop("_top")
        self.per_user[prefix] = per_user
        metrics = aggregate(per_user) if len(rows) else {}
        self.results[prefix] = {f"{prefix}/{k}": v for k, v in metrics.items()}
        self.results[prefix][f"{prefix}/n_users"] = int(len(rows))
        for k, v in metrics.items():
            # identical on every process already; sync_dist only silences Lightning's check
            self.log(f"{prefix}/{k}", float(v), prog_bar=k in ("ndcg@10", "hr@10"), sync_dist=True)

    def _gather(self, rows: torch.Tensor, local: dict[str, torch.Tensor]):
        n = torch.tensor([len(rows)], device=self.device)
        sizes = self.all_gather(n).flatten()
        m = int(sizes.max())
        pad = lambda t: torch.cat([t, t.new_zeros((m - len(t), *t.shape[1:]))])  # noqa: E731
        g_rows = self.all_gather(pad(rows))  # world, m
        keep = torch.arange(m, device=self.device)[None, :] < sizes[:, None]
        out = {k: self.all_gather(pad(v))[keep] for k, v in local.items()}
        return g_rows[keep], out

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


def linear_warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int = 0, total_steps: int | str = 0,
                         min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``min_ratio`` (constant if ``total_steps`` is 0).

    ``total_steps: auto`` in a config is replaced by the trainer's
    ``estimated_stepping_batches`` (``max_epochs`` x batches per epoch) when the
    module builds its optimizer."""
    if not isinstance(total_steps, int):
        raise ValueError(f"total_steps must be an int (or 'auto' in a module config), got {total_steps!r}")
    import math

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if not total_steps:
            return 1.0
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

