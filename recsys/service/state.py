"""Serving state: consent, frequency caps with rolling windows, recent items,
popularity and the click / impression counters behind the ranker's CTR features.

Two backends with one protocol: :class:`InProcessState` (one worker, a lock) and
:class:`RedisState` (any Redis-compatible server; every replica shares it). Caps
are enforced by :meth:`State.reserve`, one atomic step (a Lua script on Redis):
it walks the ranked candidates, skips items at their user x item cap, stops at the
user x channel and per-user budgets, and records the impressions it grants, so
concurrent requests from any number of workers never exceed a cap.

A backend that cannot answer raises :class:`StateUnavailable`; the pipeline turns
that into the documented degraded behaviour (non-personalised, static level).
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import defaultdict, deque
from itertools import repeat
from typing import Any, Protocol, Sequence

import numpy as np

from recsys.service.config import Caps
from recsys.utils.errors import RecsysError


class StateUnavailable(RecsysError):
    """The state backend did not answer (server down, timeout)."""


class State(Protocol):
    #: calls leave the process (a server): they run under the ``state_ms`` budget
    remote: bool

    def ping(self) -> None: ...
    def get_consent(self, user: str) -> bool | None: ...
    def set_consent(self, user: str, granted: bool) -> None: ...
    def forget_user(self, user: str) -> None: ...
    def recent_items(self, user: str, n: int) -> list[str]: ...
    def warm(self, users: Sequence[str], items: Sequence[str], weights: Sequence[float], keep: int,
             tag: str) -> bool: ...
    def add_event(self, user: str | None, item: str, weight: float, click: bool, segment: str | None,
                  keep: int) -> None: ...
    def popular(self, segment: str | None, n: int) -> list[str]: ...
    def counters(self, user: str | None, items: Sequence[str]) -> tuple[tuple[float, float], np.ndarray]: ...
    def reserve(self, user: str, channel: str, candidates: Sequence[str], k: int, caps: Caps, now: float,
                decision_id: str) -> list[str]: ...
    def capped(self, user: str, items: Sequence[str], caps: Caps, now: float) -> set[str]: ...


def _cap_args(caps: Caps) -> list[float]:
    out: list[float] = []
    for c in (caps.user_channel, caps.user, caps.user_item):
        out += [-1, 1] if c is None else [int(c.limit), float(c.window_s)]
    return out


class InProcessState:
    """The default backend: plain dicts under one lock (a single worker process).
    Its calls run inline: there is nothing to time out."""

    remote = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.consent: dict[str, bool] = {}
        self.recent: dict[str, deque] = {}
        self.pop: dict[str | None, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.clicks: dict[str, float] = defaultdict(float)   # "u:<user>" -> clicks
        self.imps: dict[str, float] = defaultdict(float)     # "u:<user>" -> impressions
        self.item_clicks: dict[str, float] = defaultdict(float)  # item -> clicks
        self.item_imps: dict[str, float] = defaultdict(float)    # item -> impressions
        self.shown: dict[str, deque] = defaultdict(deque)  # cap key -> impression times
        self._pop_version = 0   # bumped by every popularity write
        self._pop_cache: dict[str | None, tuple[int, int, list[str]]] = {}  # segment -> (version, n, items)

    def ping(self) -> None:
        return None

    def get_consent(self, user: str) -> bool | None:
        return self.consent.get(user)

    def set_consent(self, user: str, granted: bool) -> None:
        with self._lock:
            self.consent[user] = bool(granted)

    def forget_user(self, user: str) -> None:
        with self._lock:
            self.recent.pop(user, None)
            for key in (f"u:{user}", *[k for k in self.shown if k.startswith((f"uc:{user}\x1f", f"ui:{user}\x1f"))]):
                self.shown.pop(key, None)
            self.clicks.pop(f"u:{user}", None)
            self.imps.pop(f"u:{user}", None)

    def recent_items(self, user: str, n: int) -> list[str]:
        return list(self.recent.get(user, ()))[:n]

    def warm(self, users: Sequence[str], items: Sequence[str], weights: Sequence[float], keep: int,
             tag: str) -> bool:
        """Recent items (events in time order) and popularity from an event store."""
        with self._lock:
            for u, i, w in zip(users, items, weights):
                self.recent.setdefault(u, deque(maxlen=keep)).appendleft(i)
                self.pop[None][i] += w
            self._pop_version += 1
        return True

    def add_event(self, user: str | None, item: str, weight: float, click: bool, segment: str | None,
                  keep: int) -> None:
        with self._lock:
            if user is not None:
                d = self.recent.setdefault(user, deque(maxlen=keep))
                d.appendleft(item)
                if click:
                    self.clicks[f"u:{user}"] += 1
            if click:
                self.item_clicks[item] += 1
            self.pop[None][item] += weight
            if segment is not None:
                self.pop[segment][item] += weight
            self._pop_version += 1

    def popular(self, segment: str | None, n: int) -> list[str]:
        """The ``n`` most popular items (ties by id); reads between two writes share one
        O(items log n) selection."""
        version = self._pop_version
        hit = self._pop_cache.get(segment)
        if hit is not None and hit[0] == version and hit[1] >= n:
            return hit[2][:n]
        with self._lock:
            table = self.pop.get(segment) or {}
            top = heapq.nsmallest(n, table.items(), key=lambda kv: (-kv[1], kv[0]))
        items = [i for i, _ in top]
        self._pop_cache[segment] = (version, n, items)
        return items

    def counters(self, user: str | None, items: Sequence[str]) -> tuple[tuple[float, float], np.ndarray]:
        u = (self.clicks.get(f"u:{user}", 0.0), self.imps.get(f"u:{user}", 0.0)) if user else (0.0, 0.0)
        out = np.empty((len(items), 2), dtype=np.float64)
        out[:, 0] = np.fromiter(map(self.item_clicks.get, items, repeat(0.0)), dtype=np.float64, count=len(items))
        out[:, 1] = np.fromiter(map(self.item_imps.get, items, repeat(0.0)), dtype=np.float64, count=len(items))
        return u, out

    def _count(self, key: str, now: float, window: float) -> int:
        d = self.shown.get(key)  # not shown[key]: a read must not create an entry per (user, item) looked at
        if d is None:
            return 0
        while d and d[0] <= now - window:
            d.popleft()
        if not d:
            del self.shown[key]
        return len(d)

    def capped(self, user: str, items: Sequence[str], caps: Caps, now: float) -> set[str]:
        """The items at their user x item cap now (read only: exploration draws from the rest)."""
        if caps.user_item is None:
            return set()
        lim, win = int(caps.user_item.limit), float(caps.user_item.window_s)
        with self._lock:
            return {i for i in items if self._count(f"ui:{user}\x1f{i}", now, win) >= lim}

    def reserve(self, user: str, channel: str, candidates: Sequence[str], k: int, caps: Caps, now: float,
                decision_id: str, record: bool = True) -> list[str]:
        """The first ``k`` candidates the caps allow, recorded as shown (impressions, cap
        windows) unless ``record`` is false (a replay that must not count its own answers)."""
        ucl, ucw, ul, uw, uil, uiw = _cap_args(caps)
        uc, uk = f"uc:{user}\x1f{channel}", f"u:{user}"
        with self._lock:
            budget = k
            if ucl >= 0:
                budget = min(budget, ucl - self._count(uc, now, ucw))
            if ul >= 0:
                budget = min(budget, ul - self._count(uk, now, uw))
            out: list[str] = []
            for item in candidates:
                if len(out) >= budget:
                    break
                if uil >= 0 and self._count(f"ui:{user}\x1f{item}", now, uiw) >= uil:
                    continue
                out.append(item)
            if not record:
                return out
            for item in out:
                if uil >= 0:
                    self.shown[f"ui:{user}\x1f{item}"].append(now)
                if ucl >= 0:
                    self.shown[uc].append(now)
                if ul >= 0:
                    self.shown[uk].append(now)
                self.item_imps[item] += 1
            self.imps[uk] += len(out)
            return out


_RESERVE = """
local now, k = tonumber(ARGV[1]), tonumber(ARGV[2])
local ucl, ucw = tonumber(ARGV[3]), tonumber(ARGV[4])
local ul, uw = tonumber(ARGV[5]), tonumber(ARGV[6])
local uil, uiw = tonumber(ARGV[7]), tonumber(ARGV[8])
local did = ARGV[9]
local budget = k
if ucl >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ucw)
  budget = math.min(budget, ucl - redis.call('ZCARD', KEYS[1]))
end
if ul >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - uw)
  budget = math.min(budget, ul - redis.call('ZCARD', KEYS[2]))
end
local out, keys = {}, {}
for i = 4, #KEYS do
  if #out >= budget then break end
  local ok = true
  if uil >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - uiw)
    if redis.call('ZCARD', KEYS[i]) >= uil then ok = false end
  end
  if ok then table.insert(out, ARGV[i + 7]); table.insert(keys, KEYS[i]) end
end
for j, item in ipairs(out) do
  local m = did .. ':' .. item
  if uil >= 0 then redis.call('ZADD', keys[j], now, m); redis.call('EXPIRE', keys[j], math.ceil(uiw)) end
  if ucl >= 0 then redis.call('ZADD', KEYS[1], now, m) end
  if ul >= 0 then redis.call('ZADD', KEYS[2], now, m) end
  redis.call('HINCRBY', KEYS[3], 'i:' .. item, 1)
end
if ucl >= 0 then redis.call('EXPIRE', KEYS[1], math.ceil(ucw)) end
if ul >= 0 then redis.call('EXPIRE', KEYS[2], math.ceil(uw)) end
redis.call('HINCRBY', KEYS[3], 'u:' .. ARGV[10], #out)
return out
"""


class RedisState:
    """The shared backend: a Redis-compatible server (Redis, Valkey). Every replica
    pointed at the same server shares consent, caps, recent items and counters.

    Args:
        url: ``redis://host:port/db``.
        timeout_s: socket timeout; a slower answer is :class:`StateUnavailable`.
        prefix: key prefix (several services can share one server).
    """

    remote = True

    def __init__(self, url: str, timeout_s: float = 0.05, prefix: str = "recsys:"):
        import redis

        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self.r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      decode_responses=True)
        self.p = prefix
        self._reserve = self.r.register_script(_RESERVE)

    def _call(self, fn, *args):  # noqa: ANN001, ANN202
        try:
            return fn(*args)
        except self._errors as e:
            raise StateUnavailable(f"state server unavailable: {type(e).__name__}: {e}") from None

    def ping(self) -> None:
        self._call(self.r.ping)

    def get_consent(self, user: str) -> bool | None:
        v = self._call(self.r.hget, self.p + "consent", user)
        return None if v is None else v == "1"

    def set_consent(self, user: str, granted: bool) -> None:
        self._call(self.r.hset, self.p + "consent", user, "1" if granted else "0")

    def forget_user(self, user: str) -> None:
        def run() -> None:
            keys = [self.p + f"recent:{user}", self.p + f"cap:u:{user}"]
            keys += list(self.r.scan_iter(self.p + f"cap:uc:{user}\x1f*"))
            keys += list(self.r.scan_iter(self.p + f"cap:ui:{user}\x1f*"))
            pipe = self.r.pipeline()
            pipe.delete(*keys)
            pipe.hdel(self.p + "clicks", f"u:{user}")
            pipe.hdel(self.p + "imps", f"u:{user}")
            pipe.execute()
        self._call(run)

    def recent_items(self, user: str, n: int) -> list[str]:
        return self._call(self.r.lrange, self.p + f"recent:{user}", 0, n - 1)

    def add_event(self, user: str | None, item: str, weight: float, click: bool, segment: str | None,
                  keep: int) -> None:
        def run() -> None:
            pipe = self.r.pipeline()
            if user is not None:
                pipe.lpush(self.p + f"recent:{user}", item)
                pipe.ltrim(self.p + f"recent:{user}", 0, keep - 1)
                if click:
                    pipe.hincrby(self.p + "clicks", f"u:{user}", 1)
            if click:
                pipe.hincrby(self.p + "clicks", f"i:{item}", 1)
            pipe.zincrby(self.p + "pop:", weight, item)
            if segment is not None:
                pipe.zincrby(self.p + f"pop:{segment}", weight, item)
            pipe.execute()
        self._call(run)

    def warm(self, users: Sequence[str], items: Sequence[str], weights: Sequence[float], keep: int,
             tag: str) -> bool:
        """Recent items and popularity from an event store (events in time order),
        once per ``tag`` (the file's checksum) for every replica sharing the server;
        False when another replica did it already."""
        def run() -> bool:
            if not self.r.set(self.p + f"warmed:{tag}", "1", nx=True):
                return False
            pipe = self.r.pipeline(transaction=False)
            last: dict[str, list[str]] = {}
            pop: dict[str, float] = {}
            for u, i, w in zip(users, items, weights):
                last.setdefault(u, []).append(i)
                pop[i] = pop.get(i, 0.0) + float(w)
            for n, (u, its) in enumerate(last.items()):
                pipe.lpush(self.p + f"recent:{u}", *its[-keep:])
                pipe.ltrim(self.p + f"recent:{u}", 0, keep - 1)
                if n % 1000 == 999:
                    pipe.execute()
            for n, (i, w) in enumerate(pop.items()):
                pipe.zincrby(self.p + "pop:", w, i)
                if n % 1000 == 999:
                    pipe.execute()
            pipe.execute()
            return True
        return self._call(run)

    def publish_event(self, event: dict[str, Any], maxlen: int = 1_000_000) -> None:
        """Append a behavioural event to the shared stream every replica applies
        to its online features (:meth:`read_events`); ``None`` fields are sent as ''."""
        fields = {k: "" if v is None else str(v) for k, v in event.items()}
        self._call(self.r.xadd, self.p + "events", fields, "*", maxlen, True)

    def read_events(self, cursor: str, count: int = 10_000) -> tuple[list[dict[str, str]], str]:
        """Events after ``cursor`` (a stream id, ``"0-0"`` = from the start) and the new cursor."""
        out: list[dict[str, str]] = []
        while True:
            res = self._call(self.r.xread, {self.p + "events": cursor}, count)
            if not res:
                return out, cursor
            entries = res[0][1]
            out += [f for _, f in entries]
            cursor = entries[-1][0]
            if len(entries) < count:
                return out, cursor

    def popular(self, segment: str | None, n: int) -> list[str]:
        return self._call(self.r.zrevrange, self.p + f"pop:{segment or ''}", 0, n - 1)

    def counters(self, user: str | None, items: Sequence[str]) -> tuple[tuple[float, float], np.ndarray]:
        fields = [f"i:{i}" for i in items] + ([f"u:{user}"] if user else [])

        def run() -> tuple[list, list]:
            pipe = self.r.pipeline()
            pipe.hmget(self.p + "clicks", fields)
            pipe.hmget(self.p + "imps", fields)
            return pipe.execute()
        clicks, imps = self._call(run) if fields else ([], [])
        c = np.array([float(v or 0) for v in clicks], dtype=np.float64)
        m = np.array([float(v or 0) for v in imps], dtype=np.float64)
        n = len(items)
        u = (float(c[n]), float(m[n])) if user else (0.0, 0.0)
        return u, np.stack([c[:n], m[:n]], axis=1) if n else np.zeros((0, 2))

    def capped(self, user: str, items: Sequence[str], caps: Caps, now: float) -> set[str]:
        """The items at their user x item cap now (read only: exploration draws from the rest)."""
        if caps.user_item is None or not items:
            return set()
        lim, win = int(caps.user_item.limit), float(caps.user_item.window_s)

        def run() -> set[str]:
            pipe = self.r.pipeline(transaction=False)
            for i in items:
                pipe.zcount(self.p + f"cap:ui:{user}\x1f{i}", f"({now - win}", "+inf")
            return {i for i, c in zip(items, pipe.execute()) if int(c) >= lim}
        return self._call(run)

    def reserve(self, user: str, channel: str, candidates: Sequence[str], k: int, caps: Caps, now: float,
                decision_id: str) -> list[str]:
        keys = [self.p + f"cap:uc:{user}\x1f{channel}", self.p + f"cap:u:{user}", self.p + "imps",
                *(self.p + f"cap:ui:{user}\x1f{i}" for i in candidates)]
        args = [now, int(k), *_cap_args(caps), decision_id, user, *candidates]
        out = self._call(self._reserve, keys, args)
        # impressions per item are counted in the script; the user's total too
        return list(out)


def make_state(kind: str, url: str, timeout_s: float) -> State:
    """The backend a config names (``memory`` or ``redis``)."""
    return InProcessState() if kind == "memory" else RedisState(url, timeout_s)


def now() -> float:
    return time.time()
