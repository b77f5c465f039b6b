"""Typed batches of the sequence wing (torchrec style).

The data module builds them, Lightning moves them with ``.to(device)`` (a
loader with ``pin_memory=True`` calls ``.pin_memory()``), and only the training
module unpacks them: the nets see plain tensors. The batch type, not a dict
key, says which task it is:

* :class:`SequenceBatch`: causal next-item prediction (SASRec, GRU4Rec);
* :class:`MaskedBatch`: masked-item prediction (BERT4Rec's cloze task);
* :class:`EvalBatch`: rows of a split's :class:`~recsys.data.splits.EvalSet`
  with their histories and held-out items, for exact full-ranking evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from recsys.models.bert4rec import mask_sequence
from recsys.utils.sparse import CSR


@dataclass
class SequenceBatch:
    """Causal batch. ``input``: ``(B, T)`` left-padded item ids (0 = padding);
    ``labels``: ``(B, T)`` the next item at each position (0 = no label)."""

    input: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SequenceBatch":
        return SequenceBatch(self.input.to(device, non_blocking=non_blocking),
                             self.labels.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "SequenceBatch":
        return SequenceBatch(self.input.pin_memory(), self.labels.pin_memory())

    def __len__(self) -> int:
        return len(self.input)

    def inputs_and_labels(self, mask_prob: float, mask_token: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)``, both ``(B, T)``: the batch as it is."""
        return self.input, self.labels


@dataclass
class MaskedBatch:
    """Masked-item batch. ``seq``: ``(B, T)`` left-padded item ids; the items to
    predict are drawn at every step (:func:`~recsys.models.bert4rec.mask_sequence`)."""

    seq: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MaskedBatch":
        return MaskedBatch(self.seq.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "MaskedBatch":
        return MaskedBatch(self.seq.pin_memory())

    def __len__(self) -> int:
        return len(self.seq)

    def inputs_and_labels(self, mask_prob: float, mask_token: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)``, both ``(B, T)``: ``seq`` with items replaced by
        ``mask_token`` (torch's global RNG), labels at the masked positions only."""
        if mask_token is None:
            raise ValueError("a masked batch needs a net with a mask_token (e.g. BERT4Rec)")
        return mask_sequence(self.seq, mask_prob, mask_token)


@dataclass
class EvalBatch:
    """Rows of an :class:`~recsys.data.splits.EvalSet`, with what scoring them needs.

    ``rows``: ``(B,)`` row indices into the EvalSet (gathered across processes);
    ``seq``: ``(B, T)`` the rows' histories, left-padded to the longest one (at
    most ``max_len``; leading all-padding columns are dropped, which is exact);
    ``history``: the same histories as a CSR (excluded from the ranking);
    ``targets``: the held-out items (CSR). The CSRs stay on the CPU."""

    rows: torch.Tensor
    seq: torch.Tensor
    history: CSR
    targets: CSR

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "EvalBatch":
        return replace(self, rows=self.rows.to(device, non_blocking=non_blocking),
                       seq=self.seq.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "EvalBatch":
        return replace(self, rows=self.rows.pin_memory(), seq=self.seq.pin_memory())

    def __len__(self) -> int:
        return len(self.rows)
