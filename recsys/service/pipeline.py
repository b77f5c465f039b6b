"""One decision: user state -> query -> ANN candidates -> filters -> ranker ->
diversity -> frequency caps -> top k, with a time budget per stage and a
fallback chain.

Levels, best first (``configs/serve.yaml``: ``fallback.<channel>`` lists the ones a
channel may use, in order): ``personalised`` (the index's precomputed user vector,
ANN candidates, ranker), ``segment_popularity`` (popularity among the
request's ``context.segment``), ``global_popularity``, ``static`` (the configured
list, else catalogue order). A level is left for the next one on an error, a stage
past its budget, an open circuit, a missing bundle, no consent, a cold-start user,
too few candidates or a ranker confidence below ``min_confidence``; the reasons
travel with the decision. ``static`` always answers (possibly with fewer than k
items when filters and caps leave fewer).

State (consent, recent items, popularity, counters, caps) comes from the
:class:`~recsys.service.state.State` backend. When it cannot be read the request
is served non-personalised from the ``static`` level without caps (they cannot be
checked) and the decision says ``state_unavailable``. Users who opted out (or
whose consent cannot be read) get non-personalised levels and nothing about them
is read or written (no recent items, no caps, no counters).
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from recsys.service.bundles import BundleHolder, BundleSet
from recsys.service.config import ServeConfig
from recsys.service.experiment import Route, Router, make_decision_id
from recsys.service.explore import explore, explore_mixture, mixture_distribution
from recsys.service.query import query_vector
from recsys.policies.exposure import exposure_order, position_discount
from recsys.service.rules import category_cap_order, filter_items, mmr_order, ranker_features
from recsys.service.stages import CircuitBreaker, Progress, StageFailed, is_error
from recsys.service.state import State, StateUnavailable


@dataclass
class Request:
    user_id: str
    channel: str
    k: int
    context: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    distribution: bool = False      # also return the exploring policy's whole distribution (OPE replicas)
    now: float | None = None        # as-of time (OPE replicas: the logged request's); None: the clock


@dataclass
class Decision:
    decision_id: str
    items: list[str]
    scores: list[float | None]
    level: str
    versions: dict[str, str]
    latency_ms: dict[str, float]
    personalised_allowed: bool
    reasons: list[str]
    timestamp: float
    propensities: list[float] = field(default_factory=list)  # per position: the policy's marginal P(item there)
    arm: str = "default"
    exploration: str = "none"       # the randomisation that drew the slate (logging_policy)
    # with Request.distribution on an explored decision: (items, M), M[r, j] = P(slate[j] = items[r])
    distribution: tuple[list[str], np.ndarray] | None = None


class Pipeline:
    """The personalised level runs on a pool of ``cfg.level_threads`` threads, one
    hand-off per request: its stages run inline there, and the request thread
    watches each stage's deadline (:meth:`_level`), so a stage past its budget is cut
    off exactly as if it had its own thread, without a thread hop per stage. A
    request that waits longer than ``budgets.queue_ms`` for a level thread (overload)
    drops to the next level instead of queueing.

    Args:
        cfg: the serving config.
        bundles: the holder of the current bundle set.
        state: the state backend.
        metrics: optional :class:`recsys.service.metrics.Metrics`.
    """

    def __init__(self, cfg: ServeConfig, bundles: BundleHolder, state: State, metrics: Any = None,
                 workers: int = 32, router: Router | None = None):
        self.cfg, self.bundles, self.state, self.metrics = cfg, bundles, state, metrics
        self.router = router if router is not None else Router(cfg, bundles, metrics)
        self.breaker = CircuitBreaker(cfg.breaker.failures, cfg.breaker.cooldown_s)
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recsys-stage")
        self.level_pool = cf.ThreadPoolExecutor(max_workers=cfg.level_threads, thread_name_prefix="recsys-level")
        self._exposure: dict[str, dict[str, float]] = {}  # channel -> group -> discounted exposure served (this worker)
        self._exposure_lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.level_pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ stages

    def _stage(self, stage: str, budget_ms: float, fn: Callable, *args: Any, lat: dict[str, float]) -> Any:
        """``fn(*args)`` within ``budget_ms`` (else :class:`StageFailed`); state errors propagate."""
        if not self.breaker.allow(stage):
            raise StageFailed(stage, "circuit_open")
        t = time.perf_counter()
        fut = self.pool.submit(fn, *args)
        try:
            out = fut.result(timeout=budget_ms / 1e3)
        except cf.TimeoutError:
            self.breaker.failure(stage)
            self._error(stage, "timeout")
            raise StageFailed(stage, "timeout") from None
        except StateUnavailable:
            self.breaker.failure(stage)
            self._error(stage, "state_unavailable")
            raise
        except Exception as e:  # any failure of a model / index call drops a level
            self.breaker.failure(stage)
            self._error(stage, "error")
            raise StageFailed(stage, f"error ({type(e).__name__}: {str(e)[:120]})") from None
        finally:
            dt = time.perf_counter() - t
            lat[stage] = lat.get(stage, 0.0) + dt * 1e3
            if self.metrics is not None:
                self.metrics.stage_latency.labels(stage).observe(dt)
        self.breaker.success(stage)
        return out

    def _inline(self, stage: str, budget_ms: float, fn: Callable, *args: Any, prog: Progress) -> Any:
        """``fn(*args)`` on the level's thread; the request thread cuts it off at
        ``budget_ms`` (see :meth:`_level`). Failures count as in :meth:`_stage`."""
        if prog.abandoned:
            raise StageFailed(stage, "abandoned")
        if not self.breaker.allow(stage):
            raise StageFailed(stage, "circuit_open")
        t = time.perf_counter()
        prog.enter(stage, budget_ms, t)
        try:
            out = fn(*args)
        except StateUnavailable:
            raise
        except Exception as e:  # any failure of a model / index call drops a level
            if not prog.abandoned:
                self.breaker.failure(stage)
                self._error(stage, "error")
            raise StageFailed(stage, f"error ({type(e).__name__}: {str(e)[:120]})") from None
        finally:
            dt = time.perf_counter() - t
            prog.lat[stage] = prog.lat.get(stage, 0.0) + dt * 1e3
            if self.metrics is not None and not prog.abandoned:
                self.metrics.stage_latency.labels(stage).observe(dt)
        if not prog.abandoned:  # a late success after the request gave up does not close the circuit
            self.breaker.success(stage)
        return out

    def _level(self, fn: Callable, *args: Any, lat: dict[str, float]) -> Any:
        """``fn(*args, prog)`` on a level thread, watched stage by stage: when the stage
        in progress passes its deadline the request goes on without the result
        (:class:`StageFailed` ``timeout``; the thread's later result is dropped)."""
        t0 = time.perf_counter()
        prog = Progress(t0, t0 + self.cfg.budgets.queue_ms / 1e3)
        fut = self.level_pool.submit(fn, *args, prog)
        fut.add_done_callback(lambda _: prog.changed.set())
        try:
            while True:
                stage, deadline = prog.stage, prog.deadline
                prog.changed.clear()
                prog.waiting_until = deadline
                if fut.done():
                    return fut.result()
                if prog.stage != stage or prog.deadline != deadline:
                    continue  # moved on while we looked: read the new deadline
                if prog.changed.wait(max(0.0, deadline - time.perf_counter())):
                    continue  # done, or a stage with an earlier deadline began
                if fut.done():
                    return fut.result()
                if prog.stage != stage or prog.deadline != deadline:
                    continue  # the thread moved on to the next stage in time
                prog.abandoned = True
                if stage == "state":  # as in _state: a state call past its budget is the state unavailable
                    self.breaker.failure("state")
                    self._error("state", "timeout")
                    raise StateUnavailable("state: timeout") from None
                if stage == "queue":  # every level thread busy: overloaded, not the stage's fault
                    fut.cancel()
                    self._error("personalised", "overloaded")
                    raise StageFailed("personalised", "overloaded") from None
                self.breaker.failure(stage)
                self._error(stage, "timeout")
                dt = time.perf_counter() - prog.started
                lat[stage] = lat.get(stage, 0.0) + dt * 1e3
                if self.metrics is not None:
                    self.metrics.stage_latency.labels(stage).observe(dt)
                raise StageFailed(stage, "timeout") from None
        finally:
            for k, v in list(prog.lat.items()):
                lat[k] = lat.get(k, 0.0) + v

    def _error(self, stage: str, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(stage, kind).inc()

    def _state(self, fn: Callable, *args: Any, lat: dict[str, float]) -> Any:
        """A state call: a timeout or an open circuit is the state being unavailable
        (another error stays a :class:`StageFailed` of the stage ``state``). An
        in-process backend is called inline (no thread hop, nothing to time out)."""
        if not getattr(self.state, "remote", True):
            t = time.perf_counter()
            try:
                return fn(*args)
            except Exception as e:
                if isinstance(e, StateUnavailable):
                    raise
                self._error("state", "error")
                raise StageFailed("state", f"error ({type(e).__name__}: {str(e)[:120]})") from None
            finally:
                dt = time.perf_counter() - t
                lat["state"] = lat.get("state", 0.0) + dt * 1e3
                if self.metrics is not None:
                    self.metrics.stage_latency.labels("state").observe(dt)
        try:
            return self._stage("state", self.cfg.budgets.state_ms, fn, *args, lat=lat)
        except StageFailed as e:
            if e.reason in ("timeout", "circuit_open"):
                raise StateUnavailable(f"state: {e.reason}") from None
            raise

    # ------------------------------------------------------------ levels

    def _level_stages(self, bs: BundleSet) -> tuple[str, ...]:
        if bs.ranker is None:
            return ("query", "index")
        return ("query", "index", "ranker", "diversity") if self.cfg.diversity.method == "mmr" else \
            ("query", "index", "ranker")

    def _personalised(self, bs: BundleSet, req: Request, recent: list[str], drop: set[str], t: float,
                      prog: Progress) -> tuple[list[str], dict[str, float]]:
        """The personalised level, on a level thread (:meth:`_level`)."""
        if bs.index is None:
            raise StageFailed("index", "missing_bundle")
        b, lat = self.cfg.budgets, prog.lat
        idx = bs.index
        # the encoder over the recent items, else the index's user vector (recsys.service.query)
        q = self._inline("query", b.query_ms, query_vector, bs, req.user_id, recent, prog=prog)
        if q is None:
            raise StageFailed("query", "cold_start")
        n = min(self.cfg.n_candidates + len(drop), idx.n_items)
        hits = self._inline("index", b.retrieve_ms, idx.search, q, n, prog=prog)
        valid = hits.rows[0] >= 0
        ids = hits.ids[0][valid].tolist()
        cands = filter_items(ids, drop=drop, catalogue=bs.catalogue, limit=self.cfg.n_rank)
        if len(cands) < req.k:
            raise StageFailed("index", f"too_few_candidates ({len(cands)} < k={req.k})")
        if bs.ranker is None:
            ann = dict(zip(ids, hits.scores[0][valid].tolist()))
            return cands, {i: ann[i] for i in cands}
        prog.enter("state", b.state_ms)
        ucounts, icounts = self._state(self.state.counters, req.user_id, cands, lat=lat)
        if bs.behaviour is not None:  # events other replicas published since the last request
            self._state(bs.behaviour.sync, self.state, lat=lat)
        p = self._inline("ranker", b.rank_ms, lambda: bs.ranker.predict_proba(
            ranker_features(bs, req.user_id, cands, t, ucounts, icounts)), prog=prog)
        if float(np.max(p)) < self.cfg.min_confidence:
            raise StageFailed("ranker", f"low_confidence (max P {float(np.max(p)):.3f})")
        order = np.argsort(-p, kind="stable")
        ranked = [cands[j] for j in order]
        scores = {cands[j]: float(p[j]) for j in order}
        d = self.cfg.diversity
        if d.method == "mmr":  # greedy picks are prefix-stable: the first 2k picks are the slate's MMR
            head = min(len(ranked), max(4 * req.k, 50))  # what caps can look at; the tail keeps its rank order
            ranked = self._inline("diversity", b.rank_ms, lambda: mmr_order(
                ranked[:head], np.array([scores[i] for i in ranked[:head]]),
                idx.item_vectors(idx.item_rows(ranked[:head])), min(head, 2 * req.k), d.mmr_lambda) + ranked[head:],
                prog=prog)
        return ranked, scores

    def _group(self, bs: BundleSet, item: str) -> str:
        if self.cfg.exposure.group == "item" or bs.catalogue is None:
            return item
        return bs.catalogue.category.get(item, "")

    def _exposure_order(self, bs: BundleSet, req: Request, ranked: list[str], scores: dict[str, float]) -> list[str]:
        """The head of ``ranked`` re-ranked against the exposure this worker served on the
        channel (:func:`recsys.policies.exposure.exposure_order`); the tail keeps its order."""
        e = self.cfg.exposure
        head = ranked[: max(e.head, 2 * req.k)]
        if not head or any(scores.get(i) is None for i in head):
            return ranked
        with self._exposure_lock:
            state = dict(self._exposure.get(req.channel, {}))
        ordered, _ = exposure_order(head, [float(scores[i]) for i in head], [self._group(bs, i) for i in head],
                                    req.k, state=state, target_share=e.target, weight=e.weight)
        return ordered + ranked[len(head):]

    def _record_exposure(self, bs: BundleSet, channel: str, chosen: list[str]) -> None:
        """What was served (position-discounted as in the re-ranker) into the channel's
        running exposure."""
        disc = position_discount(len(chosen)) if chosen else []
        with self._exposure_lock:
            st = self._exposure.setdefault(channel, {})
            for item, w in zip(chosen, disc):
                g = self._group(bs, item)
                st[g] = st.get(g, 0.0) + float(w)

    def exposure_state(self, channel: str) -> dict[str, float]:
        """The running exposure of a channel on this worker (a copy)."""
        with self._exposure_lock:
            return dict(self._exposure.get(channel, {}))

    def _popular(self, bs: BundleSet, segment: str | None, drop: set[str], lat: dict[str, float]) -> list[str]:
        items = self._state(self.state.popular, segment, self.cfg.n_candidates + len(drop), lat=lat)
        return filter_items(items, drop=drop, catalogue=bs.catalogue)

    def _static(self, bs: BundleSet, drop: set[str], n: int) -> list[str]:
        """The first ``n`` items of the static list (configured, else catalogue order)
        not in ``drop``; the availability filter over the whole list runs once per
        bundle set, so this costs O(n + |drop|), not O(catalogue)."""
        if bs.static_base is None:
            items = self.cfg.static_items or (bs.catalogue.item_ids.tolist() if bs.catalogue is not None
                                              else bs.index.item_ids.tolist() if bs.index is not None else [])
            bs.static_base = filter_items(items, drop=set(), catalogue=bs.catalogue)
        return filter_items(bs.static_base, drop=drop, limit=n)

    def _ordering(self, bs: BundleSet, req: Request, chain: list[str], allowed: bool, state_ok: bool,
                  recent: list[str], drop: set[str], now: float, need: int, lat: dict[str, float],
                  reasons: list[str]) -> tuple[str, list[str], dict[str, float], bool, bool]:
        """The first level of ``chain`` that answers, its ordering of the candidates
        (backfilled from the static list, category caps applied) and scores; returns
        ``(level, ranked, scores, allowed, state_ok)`` (the state may fail on the way)."""
        level, ranked, scores = "static", [], {}
        for lv in chain:
            try:
                if lv == "personalised":
                    if not allowed:
                        raise StageFailed("personalised", "not_allowed")
                    for st in self._level_stages(bs):  # an open circuit: no thread hand-off at all
                        if not self.breaker.allow(st):
                            raise StageFailed(st, "circuit_open")
                    ranked, scores = self._level(self._personalised, bs, req, recent, drop, now, lat=lat)
                elif lv in ("segment_popularity", "global_popularity"):
                    seg = req.context.get("segment") if lv == "segment_popularity" else None
                    if not state_ok or (lv == "segment_popularity" and seg is None):
                        raise StageFailed(lv, "state_unavailable" if not state_ok else "no_segment")
                    ranked = self._popular(bs, None if seg is None else str(seg), drop, lat)
                    if not ranked:
                        raise StageFailed(lv, "empty")
                else:
                    ranked = self._static(bs, drop, need)
                level = lv
                break
            except StageFailed as e:
                reasons.append(f"{lv}:{e.stage}:{e.reason}")
            except StateUnavailable:
                state_ok, allowed = False, False
                reasons.append(f"{lv}:state_unavailable")
            except Exception as e:  # a bug or bad data in a level must not fail the request
                self._error(lv, "unexpected")
                reasons.append(f"{lv}:unexpected:{type(e).__name__}")
        else:  # every listed level failed: the static list is the floor
            level, ranked = "static", self._static(bs, drop, need)
        if len(ranked) < 2 * req.k and level != "static":  # short of k (caps may skip some): backfill from the static list
            ranked = ranked + self._static(bs, drop | set(ranked), need)
        if self.cfg.diversity.method == "category_caps" and bs.catalogue is not None:
            ranked = category_cap_order(ranked, bs.catalogue.category, self.cfg.diversity.max_per_category)
        return level, ranked, scores, allowed, state_ok

    def _mixture_slates(self, ex: Any, req: Request, chain: list[str], recent: list[str], drop: set[str],
                        now: float, lat: dict[str, float], reasons: list[str]) -> list[list[str]]:
        """The greedy slate each of the exploration's mixture candidates would serve this
        request from the current state (the same levels, caps and diversity; nothing
        recorded), as a deterministic service of that bundle set would choose it."""
        t = time.perf_counter()
        out = []
        for name, holder in zip(ex.mixture, self.router.mixture_holders(ex)):
            cbs, sub_lat, why = holder.current, {}, []
            level, ranked, scores, _, ok = self._ordering(cbs, req, chain, True, True, recent, drop, now,
                                                          max(4 * req.k, 50), sub_lat, why)
            if self.cfg.exposure.weight > 0 and level == "personalised":
                ranked = self._exposure_order(cbs, req, ranked, scores)
            head = ranked[: max(4 * req.k, 50)]
            if ok and self.cfg.caps.user_item is not None:
                capped = self._state(self.state.capped, req.user_id, head, self.cfg.caps, now, lat=sub_lat)
                head = [i for i in head if i not in capped]
            out.append(head[: req.k])
            if level != chain[0]:
                reasons.append(f"mixture:{name}:{level}")
        lat["mixture"] = (time.perf_counter() - t) * 1e3
        return out

    # ------------------------------------------------------------ one request

    def recommend(self, req: Request) -> Decision:
        t0 = time.perf_counter()
        now = time.time() if req.now is None else float(req.now)
        lat: dict[str, float] = {}
        reasons: list[str] = []
        route = self.router.route(req.user_id, req.context)
        bs = route.holder.current
        chain = self.cfg.chain(req.channel)
        if route.no_personalised:
            chain = [lv for lv in chain if lv != "personalised"] or ["static"]
        state_ok, allowed, recent = True, False, []
        try:
            consent = self._state(self.state.get_consent, req.user_id, lat=lat)
            allowed = self.cfg.consent_default if consent is None else consent
            if not allowed:
                reasons.append("no_consent")
            else:
                recent = self._state(self.state.recent_items, req.user_id, self.cfg.recent_items, lat=lat)
        except (StateUnavailable, StageFailed):
            state_ok, allowed = False, False
            reasons.append("state_unavailable")
        drop = set(req.exclude) | set(self.cfg.blocked_items) | set(recent)
        ex = route.explore_for(req.channel)
        need = max(4 * req.k, 50, ex.pool if ex.policy != "none" else 0)  # what caps / exploration look at
        level, ranked, scores, allowed, state_ok = self._ordering(bs, req, chain, allowed, state_ok, recent, drop,
                                                                  now, need, lat, reasons)
        rerank_exposure = self.cfg.exposure.weight > 0 and level == "personalised"
        if rerank_exposure:
            ranked = self._exposure_order(bs, req, ranked, scores)
        decision_id = make_decision_id(route.index)
        explored = ex.active and level in ex.explored_levels
        props: list[float] = []
        dist = None
        if allowed and state_ok:
            try:
                head = ranked[: max(4 * req.k, 50, ex.pool if explored else 0)]
                if explored:  # draw among the items caps allow now, so the propensities are exact
                    if self.cfg.caps.user_item is not None:
                        capped = self._state(self.state.capped, req.user_id, head, self.cfg.caps, now, lat=lat)
                        head = [i for i in head if i not in capped]
                    cands = self._mixture_slates(ex, req, chain, recent, drop, now, lat, reasons) \
                        if ex.mixture else []
                    slate, props = explore_mixture(ex, head, scores, req.k, cands,
                                                   np.random.default_rng(int(decision_id, 16)))
                    if req.distribution:
                        dist = mixture_distribution(ex, head, scores, req.k, cands)
                    head = slate + [i for i in head if i not in set(slate)]
                chosen = self._state(self.state.reserve, req.user_id, req.channel, head,
                                     req.k, self.cfg.caps, now, decision_id, lat=lat)
                if explored and chosen != slate[: len(chosen)]:  # a concurrent request took a capped slot
                    j = next((p for p, (a, b) in enumerate(zip(chosen, slate)) if a != b), len(slate))
                    props = props[:j] + [float("nan")] * (len(chosen) - j)
                    reasons.append("explore:cap_race")
                if self.metrics is not None and len(chosen) < min(req.k, len(ranked)):
                    self.metrics.cap_hits.labels(req.channel).inc()
            except Exception as e:  # StateUnavailable or anything else: caps cannot be checked
                reasons.append("caps:state_unavailable" if isinstance(e, StateUnavailable)
                               else f"caps:unexpected:{type(e).__name__}")
                level, state_ok, explored = "static", False, False
                chosen = self._static(bs, drop, req.k)
        elif explored:  # no readable, consented state: the base policy (a mixture's candidates need the state)
            chosen, props = explore(ex.base, ranked, scores, req.k, np.random.default_rng(int(decision_id, 16)))
            if req.distribution:
                dist = mixture_distribution(ex.base, ranked, scores, req.k, [])
        else:
            chosen = ranked[: req.k]
        props = props[: len(chosen)] if explored else [1.0] * len(chosen)
        if rerank_exposure:
            self._record_exposure(bs, req.channel, chosen)
        lat["total"] = (time.perf_counter() - t0) * 1e3
        if self.metrics is not None:
            self.metrics.fallback.labels(req.channel, level).inc()
            self.metrics.arm_decisions.labels(route.arm).inc()
        error = any(is_error(r) for r in reasons)
        self.router.record_decision(route, lat["total"], level != chain[0], error)
        return Decision(decision_id, chosen, [scores.get(i) for i in chosen], level, dict(bs.versions),
                        {k: round(v, 3) for k, v in lat.items()}, allowed, reasons, now, props, route.arm,
                        ex.name if explored else "none", dist if explored else None)
