"""BERT4Rec (Sun et al., 2019): bidirectional self-attention trained by masked-item
prediction (cloze). Shares :class:`TransformerEncoder` with SASRec.

Training masks random real items with ``mask_token`` (:func:`mask_sequence`) and
predicts them from ``forward``; at inference a ``mask_token`` is appended after the
history and its hidden state scores the next item (:meth:`BERT4Rec.next_item_state`).
"""
from __future__ import annotations

import torch

from recsys.models.sequential import TransformerEncoder, TransformerSpec


def mask_sequence(seq: torch.Tensor, mask_prob: float, mask_token: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cloze masking of a padded batch ``(B, T)`` (0 = padding).

    Each real item is replaced by ``mask_token`` with probability ``mask_prob``; a
    non-empty row where nothing was drawn gets its last real item masked. Pads are
    never masked.

    Returns:
        ``(inputs, labels)``, both ``(B, T)``: ``inputs`` is ``seq`` with the masked
        items replaced; ``labels`` holds the original id at masked positions, 0 elsewhere.
    """
    B, T = seq.shape
    real = seq > 0
    draw = torch.rand((B, T), generator=generator, device=seq.device) < mask_prob
    masked = draw & real
    # last real item per row (column T-1 for left-padded rows); argmax of 1..T over real positions
    last = (real.long() * torch.arange(1, T + 1, device=seq.device)).argmax(dim=1)  # B
    forced = torch.nn.functional.one_hot(last, T).bool() & (real.any(1) & ~masked.any(1)).unsqueeze(1)
    masked = masked | forced
    inputs = torch.where(masked, torch.full_like(seq, mask_token), seq)
    labels = torch.where(masked, seq, torch.zeros_like(seq))
    return inputs, labels


class BERT4Rec(TransformerEncoder):
    """Bidirectional transformer over item sequences with a ``[MASK]`` token.

    Args:
        n_items (int): catalogue size (ids ``1..n_items``; 0 = padding).
        max_len (int): longest input sequence, including the appended mask.
        hidden (int): embedding size D.
        n_layers, n_heads (int): transformer depth and heads.
        dropout (float): embedding / residual / FFN dropout.
        attn_dropout (float | None): attention dropout (defaults to ``dropout``).
        ffn_mult (int): FFN width as a multiple of D.
        tied (bool): score with the input item embeddings.

    ``forward``: ``(B, T)`` -> ``(B, T, D)``, zero at pads. The item table has one
    extra row, ``mask_token = n_items + 1``; ``output_embeddings()`` excludes it.

    Example::

        >>> net = BERT4Rec(n_items=100, max_len=20, hidden=32)
        >>> net.next_item_state(torch.tensor([[0, 0, 5, 7]])).shape
        torch.Size([1, 32])
    """

    def __init__(self, n_items: int, max_len: int = 50, hidden: int = 64, n_layers: int = 2, n_heads: int = 2,
                 dropout: float = 0.2, attn_dropout: float | None = None, ffn_mult: int = 4, tied: bool = True):
        super().__init__(n_items, TransformerSpec(max_len, hidden, n_layers, n_heads, dropout, attn_dropout, ffn_mult,
                                                  tied), causal=False, extra_tokens=1)

    @property
    def mask_token(self) -> int:
        """Id of the ``[MASK]`` token (``n_items + 1``)."""
        return self.n_items + 1

    def next_item_state(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, D)``: state of a mask appended after ``seq`` (its oldest position is
        dropped so the length stays ``T``). An all-padding row still has the mask
        as one real token, so its state is finite."""
        mask = torch.full_like(seq[:, :1], self.mask_token)  # B, 1
        return self.forward(torch.cat([seq[:, 1:], mask], dim=1))[:, -1]
