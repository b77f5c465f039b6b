"""Small builders shared by tests (tests only; library code never imports this)."""
from __future__ import annotations

import pyarrow as pa

from recsys.data.base import LoadedData
from recsys.data.prepare import PreparedData, build
from recsys.schema import conform_events


def events_table(rows: list[tuple[str, str, float]], event_type: str = "click") -> pa.Table:
    users, items, ts = zip(*rows) if rows else ((), (), ())
    return conform_events(pa.table({
        "user_id": pa.array(users, pa.string()),
        "item_id": pa.array(items, pa.string()),
        "timestamp": pa.array(ts, pa.float64()),
        "event_type": pa.array([event_type] * len(rows), pa.string()),
    }))


def prepared(rows: list[tuple[str, str, float]], timestamp_kind: str = "unix") -> PreparedData:
    data = build(LoadedData(events_table(rows), timestamp_kind=timestamp_kind), "t", {})
    data.meta["fingerprint"] = "test"
    return data
