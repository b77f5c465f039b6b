"""Erasure of users from the decision service's shared state on a Redis-compatible
server (``recsys data erase state_url=redis://...``), and the scan that proves it.

What the service keeps per user (:class:`~recsys.service.state.RedisState`, key
prefix ``recsys:`` by default): the ``consent`` hash field, ``recent:<user>``,
the caps ``cap:u:<user>``, ``cap:uc:<user>\\x1f<channel>``,
``cap:ui:<user>\\x1f<item>``, the ``clicks`` / ``imps`` hash fields ``u:<user>``,
and the ``events`` stream (behavioural events with ``user_id`` / ``session_id``,
and ``erase_user`` entries). Popularity sorted sets hold items only.

Consent is deleted too, no tombstone: after erasure the service holds nothing
about the id, and a returning id is treated by the service's ``consent_default``.
An opt-out that must outlive the erasure is recorded again through
``PUT /v1/users/<id>/consent`` after the erasure (it then holds the id, as it must).
In-memory state of running replicas (behavioural features) is erased by that
same consent call, which every replica applies through the stream: revoke
consent first, then erase. The in-process state backend has no file form (it
lives and dies with the process): nothing to erase on disk.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from recsys.service.state import StateUnavailable

USER_KEYS = ("recent:", "cap:u:", "cap:uc:", "cap:ui:")
USER_HASHES = {"consent": "", "clicks": "u:", "imps": "u:"}  # hash -> field prefix of a user field
STREAM_FIELDS = ("user_id", "erase_user", "session_id")


def _client(url: str, timeout_s: float) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                decode_responses=True)


def _key_user(rest: str) -> str | None:
    for kind in sorted(USER_KEYS, key=len, reverse=True):
        if rest.startswith(kind):
            return rest[len(kind):].split("\x1f", 1)[0]
    return None


class _Ids:
    """Membership for a set of ids, or a predicate (ids found by a salted digest)."""

    def __init__(self, ids: Iterable[str] | Callable[[str], bool]):
        self.fn = ids if callable(ids) else set(map(str, ids)).__contains__

    def __contains__(self, v: object) -> bool:
        return isinstance(v, str) and bool(self.fn(v))


def scan_state(url: str, user_ids: Iterable[str] | Callable[[str], bool],
               session_ids: Iterable[str] | Callable[[str], bool] = (), prefix: str = "recsys:",
               timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Every place in the server under ``prefix`` that holds one of the ids (a set,
    or a predicate): ``{"path": "<url> <key>", "column", "rows"}`` (the shape of
    :func:`recsys.features.erasure.scan`). Reads every key under the prefix."""
    users, sessions = _Ids(user_ids), _Ids(session_ids)
    r = _client(url, timeout_s)
    hits: list[dict[str, Any]] = []
    try:
        for key in r.scan_iter(match=prefix + "*", count=1000):
            rest = key[len(prefix):]
            u = _key_user(rest)
            if u is not None and u in users:
                hits.append({"path": f"{url} {key!r}", "column": "<key>", "rows": 1})
            elif rest in USER_HASHES:
                fp = USER_HASHES[rest]
                n = sum(1 for f in r.hkeys(key) if f.startswith(fp) and f[len(fp):] in users)
                if n:
                    hits.append({"path": f"{url} {key!r}", "column": "<hash field>", "rows": n})
            elif rest == "events" and r.type(key) == "stream":
                n = sum(1 for _, fields in r.xrange(key) if _stream_hit(fields, users, sessions))
                if n:
                    hits.append({"path": f"{url} {key!r}", "column": "<stream entry>", "rows": n})
    except Exception as e:  # noqa: BLE001 - redis errors are one line
        raise StateUnavailable(f"state server {url}: {type(e).__name__}: {e}") from None
    return hits


def _stream_hit(fields: dict[str, str], users: _Ids, sessions: _Ids) -> bool:
    return fields.get("user_id") in users or fields.get("erase_user") in users or \
        (bool(fields.get("session_id")) and fields.get("session_id") in sessions)


def erase_state(url: str, user_ids: Iterable[str], session_ids: Iterable[str] = (), prefix: str = "recsys:",
                timeout_s: float = 2.0) -> dict[str, Any]:
    """Delete every key, hash field and stream entry of the ids (see the module doc);
    returns ``{"path", "status", "keys_removed", "fields_removed", "stream_entries_removed"}``."""
    users, sessions = _Ids(user_ids), _Ids(session_ids)
    r = _client(url, timeout_s)
    keys, fields, entries = 0, 0, 0
    try:
        for key in list(r.scan_iter(match=prefix + "*", count=1000)):
            rest = key[len(prefix):]
            u = _key_user(rest)
            if u is not None and u in users:
                keys += int(r.delete(key))
            elif rest in USER_HASHES:
                fp = USER_HASHES[rest]
                mine = [f for f in r.hkeys(key) if f.startswith(fp) and f[len(fp):] in users]
                if mine:
                    fields += int(r.hdel(key, *mine))
            elif rest == "events" and r.type(key) == "stream":
                ids = [i for i, f in r.xrange(key) if _stream_hit(f, users, sessions)]
                for s in range(0, len(ids), 1000):
                    entries += int(r.xdel(key, *ids[s:s + 1000]))
    except Exception as e:  # noqa: BLE001 - redis errors are one line
        raise StateUnavailable(f"state server {url}: {type(e).__name__}: {e} (state partly erased: run erase "
                               "again)") from None
    n = keys + fields + entries
    return {"path": url, "status": "erased" if n else "no trace", "keys_removed": keys, "fields_removed": fields,
            "stream_entries_removed": entries}
