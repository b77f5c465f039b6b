"""What an exportable query encoder declares: :class:`QueryEncoderAdapter` (how to
wrap or bind a net), the :class:`BoundEncoder` it produces, its per-user
:class:`SideInput` specs and the :class:`EncoderData` of real users for parity.
The registry of adapters is :mod:`recsys.export.encoders`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from recsys.utils.sparse import CSR


@dataclass(frozen=True)
class SideInput:
    """A per-user ONNX input besides ``items``: ``(batch,)`` int64 in ``[0, vocab_size)``
    (0 = unknown / missing). ``spec`` holds extra manifest fields (kind, hash rule, vocabulary)."""

    name: str
    vocab_size: int
    spec: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": "int64", "shape": ["batch"], "vocab_size": int(self.vocab_size),
                **self.spec}


@dataclass(frozen=True)
class BoundEncoder:
    """What is exported: ``module(items, *side)`` (side inputs in ``side_inputs``
    order) -> ``(B, D)``, the ``(n_items + 1, D)`` item table, the longest input."""

    module: nn.Module
    table: torch.Tensor
    max_len: int | None
    side_inputs: tuple[SideInput, ...] = ()
    scoring: str = "dot"


@dataclass(frozen=True)
class EncoderData:
    """Real users for the parity check: ``histories`` (CSR of item ids, time order),
    ``side`` ``{input name: (n_rows,) int64}`` aligned with them, the ``context``
    ``bind`` needs (e.g. item feature tensors), and ``population`` (all users of the
    data: the parity needs ``min(min_users, population)`` users) and ``item_ids``, the
    raw item id of every item index (``(n_items + 1,)``, ``""`` at 0): written to the
    bundle so a service can turn a user's raw recent items into the encoder's input."""

    histories: CSR
    side: dict[str, np.ndarray] = field(default_factory=dict)
    context: Any = None
    population: int | None = None
    source: str | None = None
    fingerprint: str | None = None
    item_ids: np.ndarray | None = None


@dataclass(frozen=True)
class QueryEncoderAdapter:
    """How to export one model class as a query encoder.

    ``wrap(net)``: an ``nn.Module`` whose ``forward(items)`` maps (B, T) int64
    left-padded item ids to the query state (B, D); ``item_table(net)``: the
    (n_items + 1, D) table the state is scored against; ``max_len(net)``: the
    longest input the model accepts (None: unbounded).

    Multi-input encoders set ``bind(net, context) -> BoundEncoder`` (then ``wrap`` /
    ``item_table`` are not used by the export) and ``parity_data(run_dir, datamodule,
    data, split, net) -> EncoderData``. ``context`` is ``EncoderData.context`` at export
    and ``{"item_table": <the bundle's table>}`` when the bench rebuilds the torch side.
    """

    wrap: Callable[[nn.Module], nn.Module]
    item_table: Callable[[nn.Module], torch.Tensor]
    max_len: Callable[[nn.Module], int | None]
    description: str
    bind: Callable[[nn.Module, Any], BoundEncoder] | None = None
    parity_data: Callable[[Path, Any, Any, Any, nn.Module], EncoderData] | None = None

    def bound(self, net: nn.Module, context: Any = None) -> BoundEncoder:
        if self.bind is not None:
            return self.bind(net, context)
        return BoundEncoder(self.wrap(net), self.item_table(net), self.max_len(net))


