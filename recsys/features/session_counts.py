"""Per-user session counts of the snapshot: sessions started, sessions with an
add-to-cart, sessions that converted (cart and purchase), over the events that
count. Sessions map to their user through a dense array; a session id shared by
several users falls back to (user, session) pairs."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from recsys.features.definitions import SOURCES, Accumulator
from recsys.features.encode import TYPE_CODES, EncodedEvents
from recsys.features.sorted_cells import factorize_dense


def session_counts(ev: EncodedEvents, accs: list[Accumulator], chunk: int = 1 << 20) -> dict[str, np.ndarray]:
    """Per user code: number of sessions that started / had a cart / converted (cart
    and purchase), over the events that count. Visited in chunks (small
    temporaries, no copies of the columns)."""
    n_users, n_sess = len(ev.dicts["user_id"]), len(ev.dicts["session_id"])
    su = np.full(max(n_sess, 1), -1, dtype=np.int64)
    flags = {k: np.zeros(max(n_sess, 1), dtype=bool) for k in ("start", "cart", "purchase")}
    for lo in range(0, ev.n, chunk):
        u, s, code = (x[lo:lo + chunk] for x in (ev.ids["user_id"], ev.ids["session_id"], ev.code))
        has = (s >= 0) & (code >= 0)
        su[s[has]] = u[has]
        flags["start"][s[has]] = True
        flags["cart"][s[has & (code == TYPE_CODES["add_to_cart"])]] = True
        flags["purchase"][s[has & (code == TYPE_CODES["purchase"])]] = True
    if not all(np.array_equal(su[s[has]], u[has]) for u, s, has in _session_rows(ev, chunk)):
        return _shared_session_counts(ev, accs)
    flags["converted"] = flags["cart"] & flags["purchase"]
    return {a.name: np.bincount(su[flags[SOURCES[a.source].session]], minlength=n_users).astype(np.float64)
            for a in accs}


def _session_rows(ev: EncodedEvents, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for lo in range(0, ev.n, chunk):
        u, s, code = (x[lo:lo + chunk] for x in (ev.ids["user_id"], ev.ids["session_id"], ev.code))
        yield u, s, (s >= 0) & (code >= 0)


def _shared_session_counts(ev: EncodedEvents, accs: list[Accumulator]) -> dict[str, np.ndarray]:
    """:func:`session_counts` when a session id is shared by several users: the
    sessions are (user, session) pairs."""
    has = (ev.ids["session_id"] >= 0) & (ev.code >= 0)
    u, s, code = ev.ids["user_id"][has], ev.ids["session_id"][has], ev.code[has]
    n_users, n_sess = len(ev.dicts["user_id"]), len(ev.dicts["session_id"])
    sid, packed = factorize_dense(u.astype(np.int64) * n_sess + s, n_users * n_sess)
    su = packed // max(n_sess, 1)
    flags = {"start": np.ones(len(su), dtype=bool), "cart": np.zeros(len(su), dtype=bool),
             "purchase": np.zeros(len(su), dtype=bool)}
    flags["cart"][sid[code == TYPE_CODES["add_to_cart"]]] = True
    flags["purchase"][sid[code == TYPE_CODES["purchase"]]] = True
    flags["converted"] = flags["cart"] & flags["purchase"]
    return {a.name: np.bincount(su[flags[SOURCES[a.source].session]], minlength=n_users).astype(np.float64)
            for a in accs}
