"""Target policies from what the other commands produce: a ``recsys train`` run
directory and an exported bundle set served by the decision service.

* :func:`run_policy` (``recsys ope policy=run policy.run=<run dir>``): a SASRec,
  BERT4Rec, GRU4Rec or two-tower run. Its ``model/`` folder is opened through
  :class:`recsys.artifacts.models.ModelFolder` (manifest, checksums, registered
  class) and its ``embeddings/`` folder (written by the same training run from
  that model: item vectors, the query state of every user after their history,
  the items each user has already consumed) gives the scores
  ``user_state . item_vector``. The run must belong to the log: its class must be
  the one the embeddings declare, and every item of the setup's action set must be
  in the run's item vocabulary (one line naming the first missing item otherwise);
  a log user without a query state in the run is refused the same way.
* :func:`bundle_policy` (``recsys ope policy=bundle policy.serve=<serving config>``):
  an exported bundle set (encoder + index + ranker + catalogue, as ``recsys serve``
  takes them) run through the service's own :class:`recsys.service.pipeline.Pipeline`
  in this process (the serving runtimes: onnxruntime, faiss), with in-memory state
  warmed from ``serve.bundles.events``. For each request of the log the pipeline
  gives its policy's per-position probabilities (``Request.distribution``: computed
  by the same code that draws a served slate): ``topk`` (the greedy slate the
  service serves without exploration), ``softmax`` (Plackett-Luce over the first
  ``pool`` items at ``temperature``, the exact marginals of
  :mod:`recsys.service.explore`) or ``served`` (the exploration the serving config
  declares for ``channel``, a mixture over candidate bundle sets included).
  The pipeline answers every request of the log, in the log's order, from a state
  warm-started like the service's, and a user's policy is the average over that
  user's requests (contexts are users). How the state moves between requests
  (``state``): ``log`` (default) replays what the logged system recorded: after
  request t, the slate the log shows for it is recorded as shown (the impression
  counters and cap windows the ranker and the caps read), and with ``log_clicks``
  its clicks are applied as click events (recent items, click counters, behavioural
  features), as a service receiving ``/v1/events`` does; the replica's own answers
  record nothing. ``own``: the replica's answers are recorded as if it had served
  them alone (and no clicks arrive). A stateful ranker is not a fixed policy: which
  trajectory the estimate assumes matters (measured in docs/online_loop.md).

Both return objects with ``probs(users) -> (b, K, M)`` over the setup's action set.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.ope.setup import Setup
from recsys.policies import ScorePolicy
from recsys.utils.errors import RecsysError


def _action_columns(s: Setup, ids: np.ndarray) -> np.ndarray:
    """Column of each raw id ``ids`` in the setup's action set (-1: not in it)."""
    col_of = {str(x): j for j, x in enumerate(s.log.item_ids) if j > 0}
    return np.array([col_of.get(str(i), -1) for i in ids], dtype=np.int64)


def _check_vocabulary(s: Setup, known: set[str], where: str) -> None:
    missing = [str(x) for x in s.log.item_ids[1:] if str(x) not in known]
    if missing:
        raise RecsysError(f"{where}: item {missing[0]!r} of the log's action set ({s.catalogue}) is not in the run's "
                          f"item vocabulary ({len(missing)} of {s.log.n_items} missing); evaluate a run trained on the "
                          f"data the log was served from")


def run_policy(s: Setup, seed: int, run: str | None = None, mode: str = "topk", temperature: float = 1.0,
               exclude_seen: bool = True) -> ScorePolicy:
    """A trained run as a slate policy (``mode``: ``topk`` or per-position ``softmax``).

    Args:
        s: the OPE setup (its log's raw user and item ids are matched to the run's).
        seed: unused (deterministic scores).
        run: the ``recsys train`` run directory (``model/`` + ``embeddings/``).
        mode: ``topk`` | ``softmax``.
        temperature: softmax temperature over the dot-product scores.
        exclude_seen: give no mass to the items the run lists as consumed by the user.
    """
    from recsys.artifacts.embeddings import read_item_embeddings, read_seen, read_user_embeddings
    from recsys.artifacts.models import ModelFolder

    if not run:
        raise RecsysError("policy=run needs policy.run=<recsys train run directory>")
    d = Path(run)
    if not (d / "model").is_dir():
        raise RecsysError(f"{d}: not a `recsys train` run directory (no model/ folder)")
    folder = ModelFolder.open(d / "model")  # checksums + registered class, refused otherwise
    items, users = read_item_embeddings(d), read_user_embeddings(d)
    cls = folder.model_class.rpartition(".")[2]
    declared = items.meta.get("model")
    if declared is not None and declared != cls:
        raise RecsysError(f"{d}/embeddings: written by model {declared!r}, but model/ holds {cls!r}; re-train the run")
    _check_vocabulary(s, set(items.ids.tolist()), str(d))
    cols = _action_columns(s, items.ids)
    row_of = {u: r for r, u in enumerate(users.ids.tolist())}
    log_users = [str(u) for u in s.log.user_ids]
    urow = np.array([row_of.get(u, -1) for u in log_users], dtype=np.int64)
    urow[0] = 0
    missing = [u for u, r in zip(log_users[1:], urow[1:]) if r < 0]
    if missing:
        raise RecsysError(f"{d}: user {missing[0]!r} of the log has no query state in the run's embeddings/users.parquet "
                          f"({len(missing)} of {len(log_users) - 1} users); the run must be trained on the log's users")
    seen_mask = None
    if exclude_seen:
        seen = read_seen(d)
        if seen is not None:
            log_urow = {u: j for j, u in enumerate(log_users) if j > 0}
            su = np.array([log_urow.get(u, -1) for u in seen[0]], dtype=np.int64)
            si = _action_columns(s, seen[1])
            ok = (su >= 0) & (si >= 0)
            seen_mask = (su[ok], si[ok])
    iv = items.vectors.astype(np.float64)
    uv = users.vectors.astype(np.float64)
    if items.meta.get("metric") == "cos":  # the run scores by cosine (two-tower)
        iv = iv / np.maximum(np.linalg.norm(iv, axis=1, keepdims=True), 1e-12)
        uv = uv / np.maximum(np.linalg.norm(uv, axis=1, keepdims=True), 1e-12)
    m = s.n_actions
    keep = cols >= 0
    excluded: dict[int, np.ndarray] = {}
    if seen_mask is not None:
        order = np.argsort(seen_mask[0], kind="stable")
        su, si = seen_mask[0][order], seen_mask[1][order]
        bounds = np.searchsorted(su, np.arange(len(log_users) + 1))
        excluded = {u: si[bounds[u]:bounds[u + 1]] for u in np.unique(su)}

    def scores(u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.int64)
        out = np.full((len(u), m), -np.inf)
        out[:, cols[keep]] = (uv[urow[u]] @ iv[keep].T)
        for r, user in enumerate(u.tolist()):
            if user in excluded:
                out[r, excluded[user]] = -np.inf
        return out

    if mode not in ("topk", "softmax"):
        raise RecsysError(f"policy.mode={mode!r}: expected topk or softmax")
    return ScorePolicy(scores, m, s.slate_size, mode, temperature)


def read_serving_config(serve: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A serving config: a mapping, or a YAML / JSON file holding the ``serve:`` block
    of configs/serve.yaml (a top-level ``serve:`` key is unwrapped)."""
    if isinstance(serve, Mapping):
        data: Any = dict(serve)
    else:
        p = Path(serve)
        if not p.is_file():
            raise RecsysError(f"{p}: serving config not found (expected a YAML or JSON file with the serve: block)")
        text = p.read_text()
        try:
            if p.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as e:  # yaml / json syntax errors: one line
            raise RecsysError(f"{p}: not a readable serving config ({str(e).splitlines()[0]})") from None
    if isinstance(data, Mapping) and "serve" in data and isinstance(data["serve"], Mapping):
        data = dict(data["serve"])
    if not isinstance(data, Mapping):
        raise RecsysError(f"{serve}: expected a mapping (the serve: block of configs/serve.yaml)")
    return dict(data)


class ServedPolicy:
    """Per-user slates (or per-position marginals) of a bundle set, precomputed.

    ``rows[u]`` = ``(cols (n,), marg (n, K))``: the items' action columns and the
    probability of each at each position (averaged over the user's requests);
    ``requests[r]`` the same for log request ``r`` alone (a stateful service answers a
    user differently as its state moves: :meth:`request_probs`)."""

    def __init__(self, rows: dict[int, tuple[np.ndarray, np.ndarray]], n_actions: int, slate_size: int,
                 info: dict[str, Any], requests: list[tuple[np.ndarray, np.ndarray]] | None = None):
        self.rows, self.n_actions, self.slate_size, self.info = rows, n_actions, slate_size, info
        self.requests = requests

    def _dense(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        out = np.zeros((len(parts), self.slate_size, self.n_actions))
        for r, (cols, marg) in enumerate(parts):
            np.add.at(out[r].T, cols, marg)  # out[r, j, cols[i]] += marg[i, j]
        return out

    def probs(self, users: np.ndarray) -> np.ndarray:
        """Per-user distributions (the average over the user's requests)."""
        return self._dense([self.rows[u] for u in np.asarray(users, dtype=np.int64).tolist()])

    def request_probs(self, rows: np.ndarray) -> np.ndarray:
        """The distributions of log requests ``rows`` (``CrossFit.ope_data_requests``)."""
        if self.requests is None:
            raise RecsysError("this served policy kept no per-request distributions")
        return self._dense([self.requests[r] for r in np.asarray(rows, dtype=np.int64).tolist()])


class _ReplayState:
    """A state whose ``reserve`` answers as the service's would (caps read) but records
    nothing: the replayed log, not the replica, moves the counters."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def reserve(self, user: str, channel: str, candidates: Any, k: int, caps: Any, now: float,
                decision_id: str) -> list[str]:
        return self._inner.reserve(user, channel, candidates, k, caps, now, decision_id, record=False)


def bundle_policy(s: Setup, seed: int, serve: Any = None, mode: str = "topk", temperature: float = 0.1,
                  pool: int = 20, channel: str = "web", state: str = "log", log_clicks: bool = False
                  ) -> ServedPolicy:
    """A bundle set served by the decision service's pipeline, as a slate policy.

    Args:
        s: the OPE setup; its log's raw user ids are sent as ``user_id``.
        seed: unused (orderings are deterministic for a state).
        serve: the serving config (file or mapping, :func:`read_serving_config`).
        mode: ``topk`` | ``softmax`` | ``served`` (the config's exploration for ``channel``).
        temperature, pool: the softmax's (``mode=softmax``), as in ``serve.exploration``.
        channel: the request's channel.
        state: ``log`` (the log's slates, and with ``log_clicks`` its clicks, move the
            state) | ``own`` (the replica's own answers do).
        log_clicks: with ``state=log``, apply the log's clicks as click events (set it
            when the logged service received its clicks on ``/v1/events``).
    """
    from recsys.service.app import warm_state
    from recsys.service.bundles import BundleHolder
    from recsys.service.config import serve_config
    from recsys.service.explore import Exploration
    from recsys.service.pipeline import Pipeline, Request
    from recsys.service.state import make_state

    if serve is None:
        raise RecsysError("policy=bundle needs policy.serve=<serving config .yaml/.json>")
    if mode not in ("topk", "softmax", "served"):
        raise RecsysError(f"policy.mode={mode!r}: expected topk, softmax or served")
    if state not in ("log", "own"):
        raise RecsysError(f"policy.state={state!r}: expected log (the log's slates move the state) or own")
    if log_clicks and state != "log":
        raise RecsysError("policy.log_clicks=true needs policy.state=log")
    raw = read_serving_config(serve)
    raw.pop("experiment", None)  # the policy is one bundle set: no routing
    try:
        cfg = serve_config({**raw, "state": "memory"})
    except RecsysError as e:
        raise RecsysError(f"policy.serve: {e}") from None
    ex = {"topk": Exploration(), "softmax": Exploration("softmax", temperature=temperature, pool=pool),
          "served": cfg.exploration.get(channel) or cfg.exploration.get("default") or Exploration()}[mode]
    k = s.slate_size
    # the pipeline itself draws and gives the whole distribution of its exploring policy (a mixture too)
    cfg = replace(cfg, exploration={"default": ex} if ex.active else {})
    store = make_state("memory", cfg.redis_url, cfg.redis_timeout_s)
    if cfg.bundles.events:
        warm_state(store, cfg.bundles.events, cfg)
    holder = BundleHolder(cfg.bundles)
    pipe = Pipeline(cfg, holder, _ReplayState(store) if state == "log" else store)
    log = s.log
    acc: dict[int, dict[int, np.ndarray]] = {}  # user -> action column -> (K,) summed marginals
    n_req: dict[int, int] = {}
    levels: dict[str, int] = {}
    requests: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        for r, u in enumerate(log.users.tolist()):  # every logged request, in the log's order
            uid = str(log.user_ids[u])
            # as of the logged request's time: time-of-day and recency features see what the service saw
            now = float(log.timestamps[r]) if np.isfinite(log.timestamps[r]) else time.time()
            d = pipe.recommend(Request(uid, channel, k, distribution=True, now=now))
            levels[d.level] = levels.get(d.level, 0) + 1
            items, marg = d.distribution if d.distribution is not None else (d.items, np.eye(len(d.items), k))
            cols = _action_columns(s, np.array(items, dtype=object))
            if (cols < 0).any():
                bad = items[int(np.flatnonzero(cols < 0)[0])]
                raise RecsysError(f"policy.serve: the bundle set serves item {bad!r}, which is not in the log's action "
                                  f"set ({s.catalogue}); give the catalogue (data= or catalogue=)")
            per = acc.setdefault(u, {})
            for c, row in zip(cols.tolist(), marg):
                per[c] = per[c] + row if c in per else row.copy()
            requests.append((cols, marg))
            n_req[u] = n_req.get(u, 0) + 1
            if state == "log":
                _replay_request(store, holder, cfg, log, r, uid, channel, log_clicks, now)
    finally:
        pipe.close()
    rows = {}
    for u, per in acc.items():
        cs = np.fromiter(per, dtype=np.int64, count=len(per))
        rows[u] = (cs, np.stack([per[c] for c in cs.tolist()]) / n_req[u])
    info = {"serve": str(serve) if not isinstance(serve, Mapping) else "mapping", "mode": mode,
            "exploration": ex.name, "levels": levels, "channel": channel, "state": state, "log_clicks": log_clicks}
    return ServedPolicy(rows, s.n_actions, k, info, requests)


def _replay_request(store: Any, holder: Any, cfg: Any, log: Any, r: int, uid: str, channel: str,
                    clicks: bool, now: float) -> None:
    """Request ``r`` of the log as the logged service recorded it: its slate shown
    (``reserve``, as the pipeline records a served slate), its clicks as click events
    (:func:`recsys.service.app.apply_event`, as ``POST /v1/events`` applies them), at
    the request's time ``now``."""
    from recsys.service.app import apply_event

    acts = log.actions[r]
    shown = [str(log.item_ids[a]) for a in acts.tolist() if a > 0]
    if shown:
        store.reserve(uid, channel, shown, len(shown), cfg.caps, now, f"replay-{r}")
    if not clicks:
        return
    for j in np.flatnonzero((np.nan_to_num(log.rewards[r]) > 0) & (acts > 0)).tolist():
        apply_event(store, holder.current, cfg, uid, str(log.item_ids[acts[j]]), "click", now)
