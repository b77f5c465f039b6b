"""LightningModule for click-through rankers: BCE on logits; AUC, log loss and
ECE on validation and test (computed once per epoch over the whole split)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytorch_lightning as L
import torch
from torch import nn

from recsys.evaluation.binary import binary_metrics


class RankerModule(L.LightningModule):
    """Args:
        net: a ranker, ``net(**features) -> logits (B,)``.
        optimizer: ``partial`` taking the parameters (Hydra ``_partial_: true``);
            default Adam(lr=1e-3).
        input_names: batch keys passed to ``net`` (default: every key but ``label``).
    """

    def __init__(self, net: nn.Module, optimizer: Callable | None = None, input_names: list[str] | None = None):
        super().__init__()
        self.net = net
        self.optimizer_fn = optimizer
        self.input_names = input_names
        self.loss = nn.BCEWithLogitsLoss()
        self.results: dict[str, dict[str, float]] = {}
        self.predictions: dict[str, np.ndarray] = {}
        self._buf: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        names = self.input_names or [k for k in batch if k != "label"]
        return self.net(**{k: batch[k] for k in names})  # (B,)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        self._buf.append((torch.sigmoid(self(batch)).detach().cpu(), batch["label"].cpu()))

    def _eval_end(self, split: str) -> None:
        if not self._buf:
            return
        prob = torch.cat([p for p, _ in self._buf]).double().numpy()
        label = torch.cat([y for _, y in self._buf]).numpy()
        self._buf.clear()
        metrics = binary_metrics(label, prob, prefix=f"{split}/")
        self.results[split] = metrics
        self.predictions[split] = prob
        for k, v in metrics.items():
            self.log(k, v, sync_dist=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_fn is None:
            return torch.optim.Adam(self.net.parameters(), lr=1e-3)
        return self.optimizer_fn(params=self.net.parameters())
