"""``recsys serve simulate``: the synthetic world's users as traffic for a running
decision service, over loopback.

For each request a world user is drawn (uniformly from ``users``, seeded), the
service is asked ``POST /v1/recommend {user_id, channel, k}``, and the slate it
answers is judged by the world's **true** click model: the probability of a click
on the item at position ``j`` is ``world.click_probability(user, item, j)``
(``position_bias[j] * relevance(user, item)``, :mod:`recsys.data.synthetic`).
Clicks are drawn from those probabilities (seeded) and posted back as
``POST /v1/feedback {decision_id, item_id, event: click}`` (and, with
``post_events``, as click events, which move the service's state).

Per arm (the response's ``arm``; ``default`` without an experiment) it reports the
**true online value**: the expected clicks per slate under the true probabilities
(no sampling noise from clicks, only from which users came), with a normal 95%
interval over requests, beside the sampled clicks per slate and CTR. One row per
user goes to ``exposures.parquet`` in the format of ``recsys ab analyze``
(``user_id, arm, true_value, clicks, pre_clicks, timestamp``: the user's mean true
value and sampled clicks per request, their clicks per slate in the world's own
impression log as a pre-period covariate, first exposure time).

:func:`simulate_traffic` works on any base URL; :func:`simulate_service` starts
``recsys serve`` itself from a serving config (the subprocess helper of
:mod:`recsys.bench.serve`) and stops it afterwards.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recsys.utils.errors import RecsysError

Z95 = 1.959963984540054


def _mean_ci(x: np.ndarray) -> dict[str, float]:
    n = len(x)
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    m = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "ci_low": m - half, "ci_high": m + half}


def pre_period_clicks(world: Any) -> dict[str, float]:
    """Clicks per slate of every user in the world's own impression log (the pre-period)."""
    imp = world.impressions
    users = np.asarray(imp.column("user_id").to_pylist(), dtype=object)
    req = np.asarray(imp.column("request_id").to_numpy(zero_copy_only=False))
    clicks = np.asarray(imp.column("click").to_numpy(zero_copy_only=False), dtype=np.float64)
    uniq, inv = np.unique(users.astype(str), return_inverse=True)
    tot = np.bincount(inv, weights=clicks, minlength=len(uniq))
    first = np.unique(req, return_index=True)[1]
    n_req = np.bincount(inv[first], minlength=len(uniq))
    return {str(u): float(t / max(r, 1)) for u, t, r in zip(uniq, tot, n_req)}


class _Client:
    """A keep-alive HTTP client on loopback (never through a proxy)."""

    def __init__(self, url: str, timeout_s: float):
        import logging

        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request under Hydra's INFO logging
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s, trust_env=False)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        try:
            r = self.http.post(self.url + path, json=body)
        except httpx.HTTPError as e:
            raise RecsysError(f"{self.url}{path}: no answer ({type(e).__name__}: {str(e)[:120]})") from None
        if r.status_code >= 400:
            raise RecsysError(f"{self.url}{path}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()

    def close(self) -> None:
        self.http.close()


def simulate_traffic(url: str, world: Any, n_requests: int, *, k: int | None = None, channel: str = "web",
                     seed: int = 0, users: Sequence[str] | None = None, post_events: bool = False,
                     timeout_s: float = 10.0, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Send ``n_requests`` world users to the service at ``url``; returns the summary
    (``arms`` -> n, true_value, clicks_per_slate, ctr, levels; ``overall``; ``requests``).

    Args:
        url: the service's base URL (loopback).
        world: the :class:`~recsys.data.synthetic.SyntheticWorld` whose users and items the
            service serves (ids ``"1".."n"``).
        n_requests: requests to send, one at a time.
        k: slate size asked for (default: the world's slate size; at most that, since the
            world's position bias is defined for those positions).
        channel: the requests' channel.
        seed: users and clicks are drawn from it.
        users: user ids to draw from (default: every world user).
        post_events: also post every click as a ``/v1/events`` click event.
        out_dir: where ``exposures.parquet`` goes (None: not written).
    """
    n_pos = len(world.truth["position_bias"])
    k = n_pos if k is None else int(k)
    if not 1 <= k <= n_pos:
        raise RecsysError(f"k={k}: expected 1..{n_pos} (the world's slate size: its position bias is defined there)")
    if n_requests < 1:
        raise RecsysError(f"n_requests={n_requests}: expected >= 1")
    n_items = world.config.n_items
    pool = np.asarray(list(users) if users is not None else [str(u) for u in range(1, world.config.n_users + 1)],
                      dtype=object)
    rng = np.random.default_rng(seed)
    picks = pool[rng.integers(0, len(pool), n_requests)]
    client = _Client(url, timeout_s)
    rec_arm, rec_user, rec_level = [], [], []
    rec_value = np.empty(n_requests)
    rec_clicks = np.empty(n_requests)
    rec_shown = np.empty(n_requests)
    rec_time = np.empty(n_requests)
    t0 = time.perf_counter()
    try:
        for i, uid in enumerate(picks.tolist()):
            d = client.post("/v1/recommend", {"user_id": uid, "channel": channel, "k": k})
            items = [str(x) for x in d["items"]]
            try:
                it = np.array([int(x) for x in items], dtype=np.int64)
            except ValueError:
                it = np.array([-1], dtype=np.int64)
            if len(it) and ((it < 1) | (it > n_items)).any():
                bad = items[int(np.flatnonzero((it < 1) | (it > n_items))[0])] if len(items) else "?"
                raise RecsysError(f"{url}: the service served item {bad!r}, which is not an item of the synthetic "
                                  f"world (ids 1..{n_items}); serve bundles built from this world")
            u = int(uid)
            p = world.click_probability(np.full(len(it), u), it, np.arange(len(it))) if len(it) else np.zeros(0)
            c = rng.random(len(p)) < p
            for item in np.asarray(items, dtype=object)[c].tolist():
                client.post("/v1/feedback", {"decision_id": d["decision_id"], "item_id": item, "event": "click"})
                if post_events:
                    client.post("/v1/events", {"events": [{"user_id": uid, "item_id": item, "event_type": "click",
                                                           "channel": channel}]})
            rec_arm.append(str(d.get("arm") or "default"))
            rec_user.append(uid)
            rec_level.append(str(d.get("level")))
            rec_value[i], rec_clicks[i], rec_shown[i] = float(p.sum()), float(c.sum()), float(len(items))
            rec_time[i] = time.time()
    finally:
        client.close()
    wall = time.perf_counter() - t0
    arm = np.asarray(rec_arm, dtype=object)
    arms: dict[str, Any] = {}
    for a in sorted(set(rec_arm)):
        m = arm == a
        lv = np.asarray(rec_level, dtype=object)[m]
        arms[a] = {"requests": int(m.sum()), "users": len(set(np.asarray(rec_user, dtype=object)[m].tolist())),
                   "true_value": _mean_ci(rec_value[m]), "clicks_per_slate": _mean_ci(rec_clicks[m]),
                   "ctr": float(rec_clicks[m].sum() / max(rec_shown[m].sum(), 1.0)),
                   "levels": {str(x): int((lv == x).sum()) for x in sorted(set(lv.tolist()))}}
    out: dict[str, Any] = {"url": url, "requests": n_requests, "k": k, "channel": channel, "seed": seed,
                           "arms": arms, "overall": {"true_value": _mean_ci(rec_value),
                                                     "clicks_per_slate": _mean_ci(rec_clicks)},
                           "clicks_posted": int(rec_clicks.sum()), "wall_s": wall,
                           "requests_per_s": n_requests / max(wall, 1e-9),
                           "true_value_definition": "expected clicks per slate under the world's true click "
                                                    "probabilities (position bias x relevance)"}
    if out_dir is not None:
        out["exposures"] = str(write_exposures(Path(out_dir) / "exposures.parquet", rec_user, rec_arm, rec_value,
                                               rec_clicks, rec_time, pre_period_clicks(world)))
    return out


def write_exposures(path: Path, users: list[str], arms: list[str], value: np.ndarray, clicks: np.ndarray,
                    ts: np.ndarray, pre: dict[str, float]) -> Path:
    """One row per user (``recsys ab analyze``'s format): the user's arm (their first
    request's), mean true value and sampled clicks per request, pre-period clicks per
    slate, first exposure time; written atomically."""
    import pyarrow as pa

    from recsys.experiments.exposures import write_experiment

    u = np.asarray(users, dtype=object)
    uniq, first, inv = np.unique(u.astype(str), return_index=True, return_inverse=True)
    n = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    table = pa.table({"user_id": uniq.tolist(), "arm": [arms[i] for i in first],
                      "true_value": np.bincount(inv, weights=value, minlength=len(uniq)) / n,
                      "clicks": np.bincount(inv, weights=clicks, minlength=len(uniq)) / n,
                      "pre_clicks": np.array([pre.get(x, 0.0) for x in uniq.tolist()]),
                      "timestamp": ts[first]})
    return write_experiment(table, path)


def simulate_service(serve: dict[str, Any], world: Any, n_requests: int, run_dir: Path, *,
                     overrides: Sequence[str] = (), **kw: Any) -> dict[str, Any]:
    """Start ``recsys serve`` on ``serve`` (the ``serve:`` block, written to
    ``<run_dir>/serve.json`` and passed as overrides) on a free loopback port, simulate,
    stop it (SIGTERM: the decision log is flushed). Returns the summary plus
    ``decision_log`` (the folder) and ``service_log``."""
    from recsys.bench.serve import Service

    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = run_dir / "decision_log"
    serve = {**serve, "decision_log": {**dict(serve.get("decision_log") or {}), "directory": str(log_dir)}}
    (run_dir / "serve.json").write_text(json.dumps(serve, indent=1))
    svc = Service([*serve_overrides(serve), *overrides], run_dir / "service", workers=1)
    try:
        out = simulate_traffic(svc.url, world, n_requests, out_dir=run_dir, **kw)
    finally:
        svc.stop()
    return {**out, "decision_log": str(log_dir), "service_log": str(svc.log_path)}


def hydra_value(v: Any) -> str:
    """A value in Hydra's override grammar (dict keys unquoted, strings double-quoted)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(hydra_value(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def serve_overrides(serve: dict[str, Any]) -> list[str]:
    """The ``serve:`` block as Hydra command-line overrides (``++serve.<key>=<value>``)."""
    return [f"++serve.{key}={hydra_value(v)}" for key, v in serve.items()]
