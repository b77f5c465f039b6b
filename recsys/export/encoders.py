"""The explicit registry of query encoders: model class (``model_args.json``
``_target_``, a key of :data:`recsys.artifacts.models.MODEL_CLASSES`) -> adapter.

Built here, in one literal dict, from the adapters each model's module defines;
nothing registers itself on import. Adding an encoder: write its adapter, add one
line below."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.export import two_tower_encoder
from recsys.export.adapters import QueryEncoderAdapter


class NextItemState(nn.Module):
    """``forward(items) -> net.next_item_state(items)`` (a named single argument for torch.export)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.net.next_item_state(items)  # (B, D)


class MaskedNextItemState(nn.Module):
    """BERT4Rec: ``forward(items) -> net.next_item_state([0, *items])``, the state at a
    ``[MASK]`` appended after *every* given item. (``next_item_state`` keeps the length
    ``T`` by dropping the oldest position; the prepended pad is what it drops, and
    padding is exact, so a request of ``T <= max_len - 1`` items loses none of them.)"""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.net.next_item_state(F.pad(items, (1, 0)))  # (B, T + 1) -> (B, D)


class FixedLengthNextItemState(nn.Module):
    """GRU4Rec: ``forward(items) -> net.next_item_state(items left-padded to max_len)``.

    ``torch.export`` unrolls ``nn.GRU`` over time, so the graph runs at one length;
    GRU4Rec is exact under extra left padding, so padding every request (``T <=
    max_len``) to ``max_len`` inside the graph keeps the ONNX ``seq`` axis dynamic."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.max_len = int(net.max_len)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.net.next_item_state(F.pad(items, (self.max_len - items.shape[1], 0)))  # (B, max_len) -> (B, D)


SASREC = QueryEncoderAdapter(
    wrap=NextItemState, item_table=lambda net: net.output_embeddings(),
    max_len=lambda net: int(net.max_len),
    description="SASRec: causal self-attention state after the last item")

BERT4REC = QueryEncoderAdapter(
    wrap=MaskedNextItemState, item_table=lambda net: net.output_embeddings(),
    max_len=lambda net: int(net.max_len) - 1,  # + the appended [MASK] = the position table
    description="BERT4Rec: bidirectional state at a [MASK] appended after the last item")

GRU4REC = QueryEncoderAdapter(
    wrap=FixedLengthNextItemState, item_table=lambda net: net.output_embeddings(),
    max_len=lambda net: int(net.max_len),
    description="GRU4Rec: GRU state after the last item")

ENCODERS: dict[str, QueryEncoderAdapter] = {
    "recsys.models.sequential.SASRec": SASREC,
    "recsys.models.bert4rec.BERT4Rec": BERT4REC,
    "recsys.models.gru4rec.GRU4Rec": GRU4REC,
    two_tower_encoder.CLASS: two_tower_encoder.ADAPTER,
}
