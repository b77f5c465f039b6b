"""The explicit registry of query encoders: model class (``model_args.json``
``_target_``, a key of :data:`recsys.artifacts.models.MODEL_CLASSES`) -> adapter.

Built here, in one literal dict, from the adapters each model's module defines;
nothing registers itself on import. Adding an encoder: write its adapter, add one
line below."""
from __future__ import annotations

import torch
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


SASREC = QueryEncoderAdapter(
    wrap=NextItemState, item_table=lambda net: net.output_embeddings(),
    max_len=lambda net: int(net.max_len),
    description="SASRec: causal self-attention state after the last item")

ENCODERS: dict[str, QueryEncoderAdapter] = {
    "recsys.models.sequential.SASRec": SASREC,
    two_tower_encoder.CLASS: two_tower_encoder.ADAPTER,
}
