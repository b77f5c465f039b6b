"""GRU4Rec (Hidasi et al., 2016), in the sequence form used as a baseline by
SASRec / BERT4Rec: item embedding -> dropout -> GRU -> linear projection.

Padding invariance: a GRU fed zero vectors for left pads would still move its
state through the biases. Each left-padded row is therefore rotated so that its
items start at position 0 (left-aligned, pads trailing), the GRU runs on that, and
the states are rotated back. Trailing pads come after every real item, so they
cannot change a real position's state: the result does not depend on how much
left padding there is. All of it is gathers by index, no data-dependent Python
control flow. ONNX (dynamo): ``torch.export`` unrolls ``nn.GRU`` over time, so
export at a fixed ``T`` (e.g. ``max_len``) with a dynamic batch and left-pad
shorter inputs to it; padding invariance makes that exact.
"""
from __future__ import annotations

import torch
from torch import nn


def rotate_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Roll each row of ``x`` ``(B, T, ...)`` left by ``shift[b]`` positions:
    ``out[b, t] = x[b, (t + shift[b]) % T]``."""
    B, T = x.shape[:2]
    idx = (torch.arange(T, device=x.device).unsqueeze(0) + shift.unsqueeze(1)) % T  # B, T
    idx = idx.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class GRU4Rec(nn.Module):
    """Recurrent next-item encoder over left-padded sequences.

    Args:
        n_items (int): catalogue size (ids ``1..n_items``; 0 = padding).
        hidden (int): embedding and GRU state size D.
        n_layers (int): stacked GRU layers (``dropout`` also applies between them).
        dropout (float): dropout on the item embeddings.
        max_len (int): longest expected sequence (kept for interface parity; a GRU has no limit).
        tied (bool): score with the input item embeddings; else a separate output table.

    ``forward``: ``(B, T)`` -> ``(B, T, D)``; position ``t`` summarises items ``<= t``,
    zero at pads.

    Example::

        >>> net = GRU4Rec(n_items=100, hidden=32)
        >>> net(torch.tensor([[0, 0, 5, 7]])).shape
        torch.Size([1, 4, 32])
    """

    def __init__(self, n_items: int, hidden: int = 64, n_layers: int = 1, dropout: float = 0.2,
                 max_len: int = 50, tied: bool = True):
        super().__init__()
        self.n_items, self.hidden, self.max_len = n_items, hidden, max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.emb_drop = nn.Dropout(dropout)
        # nn.GRU warns when given inter-layer dropout with a single layer
        self.gru = nn.GRU(hidden, hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0)
        self.proj = nn.Linear(hidden, hidden)
        self.out_emb = None if tied else nn.Embedding(n_items + 1, hidden, padding_idx=0)
        for emb in (self.item_emb, self.out_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
                with torch.no_grad():
                    emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, T = seq.shape
        real = seq > 0  # B, T
        n_pad = T - real.sum(1)  # B; left padding per row
        aligned = rotate_rows(seq, n_pad)  # B, T: items first, pads trailing
        h, _ = self.gru(self.emb_drop(self.item_emb(aligned)))  # B, T, D
        h = rotate_rows(self.proj(h), (T - n_pad) % T)  # back to the left-padded layout
        return h * real.unsqueeze(-1)

    def next_item_state(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: the state after the last item of each (left-padded) sequence."""
        return self.forward(seq)[:, -1]

    def output_embeddings(self) -> torch.Tensor:
        """``(n_items + 1, D)`` item vectors that hidden states are scored against."""
        table = self.out_emb if self.out_emb is not None else self.item_emb
        return table.weight
