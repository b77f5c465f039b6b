"""Dataset statistics (what ``recsys data stats`` prints)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from recsys import schema as S
from recsys.data.prepare import PreparedData


def dataset_stats(data: PreparedData) -> dict[str, Any]:
    users, _, ts = data.arrays()
    lens = np.bincount(users, minlength=data.n_users + 1)[1:]
    n_inter = len(users)
    counts = pc.value_counts(data.interactions.column(S.EVENT_TYPE)).to_pylist()
    return {
        "name": data.name,
        "fingerprint": data.fingerprint,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": n_inter,
        "density": n_inter / (data.n_users * data.n_items) if data.n_users and data.n_items else 0.0,
        "seq_len_mean": float(lens.mean()) if len(lens) else 0.0,
        "seq_len_median": float(np.median(lens)) if len(lens) else 0.0,
        "seq_len_min": int(lens.min()) if len(lens) else 0,
        "seq_len_max": int(lens.max()) if len(lens) else 0,
        "event_types": {c["values"]: c["counts"] for c in counts},
        "timestamp_kind": data.meta.get("timestamp_kind"),
        "timestamp_min": float(ts.min()) if n_inter else None,
        "timestamp_max": float(ts.max()) if n_inter else None,
        "user_features": data.users.column_names[2:],
        "item_features": data.items.column_names[2:],
    }
