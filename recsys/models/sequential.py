"""Sequence encoders for next-item prediction (plain ``nn.Module``s).

All encoders take left-padded item sequences ``(B, T)`` (0 = padding) and return
hidden states ``(B, T, D)``; position ``t`` summarises items ``<= t`` (causal
models) or the whole sequence (BERT4Rec). Scores against the catalogue are
``hidden @ output_embeddings().T`` (``(n_items + 1, D)``, row 0 = padding).

Positions are counted from the first real item, so extra left padding never
changes the output (tested), and padded keys are masked in attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def positions_from_first_item(seq: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` position ids: 0 at the first non-pad item, counting up; 0 on pads."""
    real = (seq > 0).long()
    return ((real.cumsum(1) - 1) * real).clamp(min=0)


class SelfAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: ``x + MHA(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, hidden: int, n_heads: int, ffn: int, dropout: float, attn_dropout: float):
        super().__init__()
        assert hidden % n_heads == 0, "hidden must be divisible by n_heads"
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = attn_dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, channels
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # B, H, T, C/H
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ffn(self.ln2(x)))


@dataclass(frozen=True)
class TransformerSpec:
    """Options of a :class:`TransformerEncoder`.

    Args:
        max_len (int): longest input sequence (position table size).
        hidden (int): embedding size D.
        n_layers, n_heads (int): transformer depth and heads (``hidden % n_heads == 0``).
        dropout (float): embedding / residual / FFN dropout.
        attn_dropout (float | None): attention dropout (``None``: ``dropout``).
        ffn_mult (int): FFN width as a multiple of D.
        tied (bool): score with the input item embeddings; else a separate output table.
        rel_pos (bool): add a learned per-head attention bias indexed by the query-key
            distance (T5-style, shared by all layers): "k items ago" becomes a
            direct recency signal at every position. Distances depend only on the
            real items, so causality and padding invariance are kept.
        abs_pos (bool): keep the absolute position embeddings (counted from the first item).
    """

    max_len: int = 50
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    attn_dropout: float | None = None
    ffn_mult: int = 1
    tied: bool = True
    rel_pos: bool = False
    abs_pos: bool = True


class TransformerEncoder(nn.Module):
    """Item + position embeddings, ``spec.n_layers`` attention blocks, final LayerNorm.

    Args:
        n_items (int): catalogue size (ids ``1..n_items``; 0 = padding).
        spec (TransformerSpec): sizes and options.
        causal (bool): mask future positions (SASRec) or not (BERT4Rec).
        extra_tokens (int): extra embedding rows after the items (BERT4Rec's [MASK]).

    ``forward``: ``(B, T)`` -> ``(B, T, D)``, zero at pads. The subclasses
    (:class:`SASRec`, :class:`~recsys.models.bert4rec.BERT4Rec`) take the spec's
    fields as keyword arguments, which is what configs and ``model_args.json`` hold.
    """

    def __init__(self, n_items: int, spec: TransformerSpec, causal: bool = True, extra_tokens: int = 0):
        super().__init__()
        s = self.spec = spec
        self.n_items, self.max_len, self.hidden, self.causal = n_items, s.max_len, s.hidden, causal
        self.item_emb = nn.Embedding(n_items + 1 + extra_tokens, s.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(s.max_len, s.hidden) if s.abs_pos else None
        self.n_heads = s.n_heads
        # distances -(max_len-1)..(max_len-1) -> 2*max_len-1 rows, one bias per head
        self.rel_bias = nn.Embedding(2 * s.max_len - 1, s.n_heads) if s.rel_pos else None
        self.emb_drop = nn.Dropout(s.dropout)
        attn_dropout = s.dropout if s.attn_dropout is None else s.attn_dropout
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(s.hidden, s.n_heads, s.ffn_mult * s.hidden, s.dropout, attn_dropout)
            for _ in range(s.n_layers))
        self.ln_f = nn.LayerNorm(s.hidden)
        self.out_emb = None if s.tied else nn.Embedding(n_items + 1, s.hidden, padding_idx=0)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, T = seq.shape
        real = seq > 0  # B, T
        x = self.item_emb(seq) * math.sqrt(self.hidden)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions_from_first_item(seq))
        x = self.emb_drop(x) * real.unsqueeze(-1)
        allowed = real[:, None, None, :].expand(B, 1, T, T)  # keys that are real items
        if self.causal:
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()
        # a padded query may attend to itself (keeps softmax finite; its output is zeroed)
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=seq.device)
        mask: torch.Tensor = allowed
        if self.rel_bias is not None:
            idx = torch.arange(T, device=seq.device)
            dist = (idx[:, None] - idx[None, :]).clamp(-(self.max_len - 1), self.max_len - 1) + self.max_len - 1
            bias = self.rel_bias(dist).permute(2, 0, 1).unsqueeze(0)  # 1, H, T, T
            mask = bias.masked_fill(~allowed, float("-inf"))  # B, H, T, T
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x) * real.unsqueeze(-1)

    def output_embeddings(self) -> torch.Tensor:
        """``(n_items + 1, D)`` item vectors that hidden states are scored against."""
        table = self.out_emb if self.out_emb is not None else self.item_emb
        return table.weight[: self.n_items + 1]


class SASRec(TransformerEncoder):
    """Self-attentive sequential recommendation (Kang & McAuley, 2018): causal
    self-attention; the state at the last position predicts the next item.

    Example::

        >>> net = SASRec(n_items=100, max_len=20, hidden=32)
        >>> net(torch.tensor([[0, 0, 5, 7]])).shape
        torch.Size([1, 4, 32])
    """

    def __init__(self, n_items: int, max_len: int = 50, hidden: int = 64, n_layers: int = 2, n_heads: int = 2,
                 dropout: float = 0.2, attn_dropout: float | None = None, ffn_mult: int = 1, tied: bool = True,
                 rel_pos: bool = False, abs_pos: bool = True):
        super().__init__(n_items, TransformerSpec(max_len, hidden, n_layers, n_heads, dropout, attn_dropout, ffn_mult,
                                                  tied, rel_pos, abs_pos), causal=True)

    def next_item_state(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: the state after the last item of each (left-padded) sequence."""
        return self.forward(seq)[:, -1]
