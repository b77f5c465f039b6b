"""The query vector of a request: the user's recent items through the query
encoder bundle, or the index's precomputed user vector.

With an encoder in the bundle set (``serve.bundles.encoder``, a ``recsys export``
of a SASRec, BERT4Rec, GRU4Rec or two-tower run), the user's recent items (raw ids
from ``/v1/events``, newest first in the state store) are mapped to the encoder's
input ids with the bundle's ``item_ids.npy``, put in time order, left-padded and
encoded; the state is the ANN query. Side inputs of a two-tower user tower are
filled from their manifest spec: ``hashed_id`` -> ``crc32(utf-8 id) % n_buckets + 1``,
``categorical`` -> ``vocab.index(value) + 1`` of the users table's column named by
``feature`` (0 = unknown / missing).

Without an encoder, or for a user with no recent item the encoder knows (a
single-input encoder has no state for an empty history), the index's precomputed
vector of the user is used; a user the index does not know either is a cold start
(``None``).
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from recsys.utils.errors import DataError


class ColdStart(Exception):
    """No query vector for this user."""


def _side_value(spec: dict[str, Any], user: str, users: Any) -> int:
    kind = spec.get("kind")
    if kind == "hashed_id":
        return zlib.crc32(user.encode("utf-8")) % int(spec["n_buckets"]) + 1
    if kind == "categorical":
        col = (users.columns.get(str(spec.get("feature"))) if users is not None else None) or {}
        vocab = spec.get("vocab") or []
        v = col.get(user)
        try:
            return vocab.index(str(v)) + 1 if v is not None else 0
        except ValueError:
            return 0
    return 0


def encoder_inputs(encoder: Any, user: str, recent: list[str], users: Any = None) -> dict[str, np.ndarray]:
    """The encoder's inputs for one user (``recent``: newest first, raw ids)."""
    ids = encoder.item_index(recent[::-1])  # time order, unknown items dropped
    if encoder.max_len:
        ids = ids[-int(encoder.max_len):]
    if ids.size == 0 and not encoder.side_inputs:
        raise ColdStart("no recent item the encoder knows")
    items = (ids if ids.size else np.zeros(1, dtype=np.int64))[None, :]
    feeds = {"items": items}
    for spec in encoder.side_inputs:
        feeds[spec["name"]] = np.array([_side_value(spec, user, users)], dtype=np.int64)
    return feeds


def query_vector(bs: Any, user: str, recent: list[str]) -> np.ndarray | None:
    """``(1, D)`` float32 query for the index, ``None`` for a cold start (see the module docstring)."""
    if bs.encoder is not None:
        try:
            return np.asarray(bs.encoder.encode(encoder_inputs(bs.encoder, user, recent, bs.users)),
                              dtype=np.float32)
        except ColdStart:
            pass
    idx = bs.index
    try:
        return idx.user_vectors[idx.user_rows([user])]
    except DataError:  # unknown to the index, and no usable recent items
        return None
