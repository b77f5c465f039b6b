"""Column names and Arrow schemas shared by every layer.

Raw ids (as read from files) are strings; prepared data uses contiguous int32
indices with 0 reserved for padding (``USER_IDX`` / ``ITEM_IDX``). Timestamps are
float64 seconds since the Unix epoch (or the position in the sequence for formats
that carry no time, recorded as ``timestamp_kind = "ordinal"`` in the metadata).
"""
from __future__ import annotations

from enum import Enum

import pyarrow as pa

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
VALUE = "value"
SESSION_ID = "session_id"
CHANNEL = "channel"
DEVICE_ID = "device_id"
POSITION = "position"
PROPENSITY = "propensity"

USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
PAD_IDX = 0


class EventType(str, Enum):
    """Interaction kinds; ``value`` carries the rating or the dwell seconds."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"
    IMPRESSION = "impression"
    LOGIN = "login"


EVENT_TYPES = tuple(e.value for e in EventType)

#: Every interaction event, whatever the source. Required columns are non-nullable.
EVENT_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TIMESTAMP, pa.float64(), nullable=False),
        pa.field(EVENT_TYPE, pa.string(), nullable=False),
        pa.field(VALUE, pa.float64()),
        pa.field(SESSION_ID, pa.string()),
        pa.field(CHANNEL, pa.string()),
        pa.field(DEVICE_ID, pa.string()),
        # Logged impressions only: slate position (0-based) and the logging
        # policy's probability of showing this item at this position.
        pa.field(POSITION, pa.int32()),
        pa.field(PROPENSITY, pa.float64()),
    ]
)
REQUIRED_EVENT_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)

#: Prepared interactions (what models train on), sorted by user then time.
INTERACTION_SCHEMA = pa.schema(
    [
        pa.field(USER_IDX, pa.int32(), nullable=False),
        pa.field(ITEM_IDX, pa.int32(), nullable=False),
        pa.field(TIMESTAMP, pa.float64(), nullable=False),
        pa.field(EVENT_TYPE, pa.string(), nullable=False),
        pa.field(VALUE, pa.float64()),
    ]
)

#: Side tables: the id column first, then typed feature columns. Categorical
#: features are strings, multi-hot features are list<string>, numeric are float64.
ITEM_SIDE_ID_FIELD = pa.field(ITEM_ID, pa.string(), nullable=False)
USER_SIDE_ID_FIELD = pa.field(USER_ID, pa.string(), nullable=False)


def empty_events() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def conform_events(table: pa.Table) -> pa.Table:
    """Add the optional event columns that are missing (as nulls), order and cast
    the columns to :data:`EVENT_SCHEMA`. Extra columns are dropped."""
    n = table.num_rows
    cols = []
    for field in EVENT_SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(n, type=field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)
