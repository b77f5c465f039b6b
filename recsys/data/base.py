"""What every loader returns: canonical events plus optional side tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa

TimestampKind = Literal["unix", "ordinal"]


@dataclass
class LoadedData:
    """Raw data in canonical form, before ids are mapped.

    Attributes:
        events: table conforming to :data:`recsys.schema.EVENT_SCHEMA`, in file order.
        items: optional item side table; first column ``item_id`` (string), then
            typed features (string = categorical, list<string> = multi-hot,
            float64/int64 = numeric).
        users: optional user side table; first column ``user_id`` (string).
        timestamp_kind: ``"unix"`` (seconds) or ``"ordinal"`` (position in the
            user's sequence, for formats without time).
        extras: additional named tables / arrays a loader provides (the synthetic
            world puts its impression log and ground truth here).
    """

    events: pa.Table
    items: pa.Table | None = None
    users: pa.Table | None = None
    timestamp_kind: TimestampKind = "unix"
    extras: dict[str, Any] = field(default_factory=dict)


class Loader(Protocol):
    """A data source chosen by the Hydra ``data`` group (``_target_``)."""

    def load(self) -> LoadedData:
        """Read and validate; raise :class:`recsys.utils.errors.DataError` on bad input."""

    def source_files(self) -> list[Path]:
        """Files whose bytes go into the fingerprint (empty for generated data)."""

    def fingerprint_config(self) -> dict[str, Any]:
        """Every parameter that changes what :meth:`load` returns."""
