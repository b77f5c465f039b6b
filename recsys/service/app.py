"""The HTTP decision service: a FastAPI app over :class:`~recsys.service.pipeline.Pipeline`.

Routes (``GET /openapi.json`` is the contract):

* ``POST /v1/recommend`` ``{user_id, channel, context?, k, exclude?}`` -> items,
  scores, ``decision_id``, versions, fallback ``level``;
* ``POST /v1/events`` (view, click, add_to_cart, purchase) -> online state;
* ``POST /v1/feedback`` ``{decision_id, item_id, event}`` -> the feedback log;
* ``PUT /v1/users/{user_id}/consent`` ``{granted}`` (revoking erases the user's state);
* ``POST /v1/admin/reload`` (bearer token from the env variable the config names,
  loopback clients only) -> atomic swap of the bundle set, refused in one line;
* ``GET /healthz``, ``/readyz``, ``/metrics`` (Prometheus).

Bad requests are 422 (pydantic), oversized bodies 413; a valid recommend request
is always answered 200 (the fallback chain ends at the static list).
"""

import os
import re
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

import pyarrow as pa
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from recsys.service.bundles import BundleHolder, BundleSetError
from recsys.service.config import LEVELS, BundlePaths, ServeConfig, ServiceConfigError, _build
from recsys.service.decision_log import DECISION_SCHEMA, FEEDBACK_SCHEMA, PartWriter, decision_rows
from recsys.service.experiment import Router
from recsys.service.metrics import Metrics
from recsys.service.pipeline import Pipeline
from recsys.service.pipeline import Request as DecisionRequest
from recsys.service.state import State, StateUnavailable, make_state

ID = r"^[A-Za-z0-9_.:@\-]{1,128}$"
EVENTS = ("view", "click", "add_to_cart", "purchase")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class RecommendResponse(BaseModel):
    decision_id: str
    items: list[str]
    scores: list[float | None]
    level: Literal["personalised", "segment_popularity", "global_popularity", "static"]
    versions: dict[str, str]
    reasons: list[str]
    latency_ms: dict[str, float]
    arm: str = "default"


class EventIn(BaseModel):
    user_id: str = Field(pattern=ID)
    item_id: str = Field(pattern=ID)
    event_type: Literal["view", "click", "add_to_cart", "purchase"]
    channel: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    segment: str | None = Field(default=None, pattern=ID)
    timestamp: float | None = Field(default=None, ge=0, le=1e11)   # unix seconds; default: when received
    session_id: str | None = Field(default=None, pattern=ID)
    value: float | None = Field(default=None, ge=0, le=1e7)        # e.g. dwell seconds


class EventsIn(BaseModel):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class FeedbackIn(BaseModel):
    decision_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    item_id: str = Field(pattern=ID)
    event: Literal["view", "click", "add_to_cart", "purchase"]


class ConsentIn(BaseModel):
    granted: bool


class ReloadIn(BaseModel):
    bundles: dict[str, str | None] | None = None
    arm: str | None = None   # an experiment arm (default: the champion)


def apply_consent_list(state: State, path: str, default: bool) -> Any:
    """The consent list (:mod:`recsys.features.consent`) into the state store: every
    revocation is recorded and the user's state erased (as ``PUT .../consent``
    ``{granted: false}`` does); a grant is recorded for users with no recorded choice
    (a choice made through the API since is kept). Returns the list."""
    from recsys.features.consent import read_consent_list
    from recsys.service.bundles import BundleSetError
    from recsys.utils.errors import DataError

    try:
        consent = read_consent_list(path, default)
    except DataError as e:
        raise BundleSetError(str(e)) from None
    try:
        for user in sorted(consent.revoked):
            state.set_consent(user, False)
            state.forget_user(user)
        for user in sorted(consent.granted):
            if state.get_consent(user) is None:
                state.set_consent(user, True)
    except StateUnavailable as e:  # consent unreadable -> the pipeline serves non-personalised anyway
        print(f"warning: consent list {path} not applied to the state store: {e}", flush=True)
    return consent


def apply_event(state: State, bs: Any, cfg: ServeConfig, user_id: str, item_id: str, event_type: str, t: float,
                segment: str | None = None, session_id: str | None = None, value: float | None = None) -> None:
    """One behavioural event of a consenting user, as ``POST /v1/events`` applies it:
    the state (recent items, popularity, click counters), then the ranker's behavioural
    features of bundle set ``bs``, directly (one process) or through the shared stream
    every replica applies before it reads. The OPE replica of a bundle set replays
    logged clicks through here too."""
    state.add_event(user_id, item_id, float(cfg.event_weights.get(event_type, 1.0)), event_type == "click",
                    segment, cfg.recent_items)
    beh = bs.behaviour
    if beh is None:
        return
    cat = bs.catalogue.category.get(item_id) if bs.catalogue is not None else None
    if getattr(state, "remote", False):
        state.publish_event({"user_id": user_id, "item_id": item_id, "timestamp": t, "event_type": event_type,
                             "category": cat, "session_id": session_id, "value": value})
    else:
        beh.ingest(user_id, item_id, t, event_type, cat, session_id, value)


def warm_state(state: State, path: str, cfg: ServeConfig, consent: Any = None) -> None:
    """Recent items per user and popularity from an event store (Parquet with
    user_id, item_id, timestamp, event_type), so known users start with their
    history; behavioural events only, in time order; none of a user the consent
    list does not allow."""
    import hashlib

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsys.service.bundles import BundleSetError

    try:
        t = pq.read_table(path, columns=["user_id", "item_id", "timestamp", "event_type"])
    except Exception as e:  # missing file or column, not Parquet
        raise BundleSetError(f"{path}: cannot read the events (user_id, item_id, timestamp, event_type): "
                             f"{str(e).splitlines()[0]}") from None
    t = t.filter(pc.is_in(t["event_type"], pa.array(list(cfg.event_weights)))).sort_by("timestamp")
    if consent is not None:
        t = t.filter(pa.array([consent.allows(str(u)) for u in t["user_id"].to_pylist()], pa.bool_()))
    weights = [float(cfg.event_weights[e]) for e in t["event_type"].to_pylist()]
    with open(path, "rb") as f:
        tag = hashlib.sha256(f.read()).hexdigest()[:16]
    try:
        state.warm([str(u) for u in t["user_id"].to_pylist()], [str(i) for i in t["item_id"].to_pylist()], weights,
                   cfg.recent_items, tag)
    except StateUnavailable as e:  # serve anyway (degraded levels); the next start warms it
        print(f"warning: state not warmed from {path}: {e}", flush=True)


class BoundAndCount:
    """ASGI middleware (a plain one: Starlette's ``BaseHTTPMiddleware`` costs a task
    and a stream per request): refuses POST/PUT bodies without a ``content-length``
    within the limit (413), counts requests by route and status, times them."""

    def __init__(self, app: Any, max_body_bytes: int, metrics: Metrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t = time.perf_counter()
        if scope["method"] in ("POST", "PUT"):
            size = next((v for k, v in scope["headers"] if k == b"content-length"), None)
            if size is None or not size.isdigit() or int(size) > self.max_body_bytes:
                response = JSONResponse({"detail": f"request body must declare a content-length <= "
                                                   f"{self.max_body_bytes} bytes"}, status_code=413)
                self.metrics.requests.labels(scope["path"], "413").inc()
                await response(scope, receive, send)
                return
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.request_latency.labels(path).observe(time.perf_counter() - t)


def create_app(cfg: ServeConfig, state: State | None = None, bundles: BundleHolder | None = None) -> FastAPI:
    """The app of one service instance. ``state`` / ``bundles`` default to what ``cfg``
    names (a bundle set that fails its checks raises :class:`BundleSetError`)."""
    metrics = Metrics()
    state = state if state is not None else make_state(cfg.state, cfg.redis_url, cfg.redis_timeout_s)
    holder = bundles if bundles is not None else BundleHolder(cfg.bundles)
    router = Router(cfg, holder, metrics)
    pipeline = Pipeline(cfg, holder, state, metrics, router=router)
    consent = apply_consent_list(state, cfg.consent_list, cfg.consent_default) if cfg.consent_list else None
    if cfg.bundles.events is not None:  # recent items and popularity from the event store
        warm_state(state, cfg.bundles.events, cfg, consent)
    log = feedback = None
    if cfg.decision_log.directory:
        d = cfg.decision_log
        log = PartWriter(d.directory, DECISION_SCHEMA, "decisions", d.flush_interval_s, d.rotate_rows)
        feedback = PartWriter(d.directory, FEEDBACK_SCHEMA, "feedback", d.flush_interval_s, d.rotate_rows)

    class RecommendIn(BaseModel):
        user_id: str = Field(pattern=ID)
        channel: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
        k: int = Field(ge=1, le=cfg.max_k)
        context: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32)
        exclude: list[str] = Field(default_factory=list, max_length=1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        shutdown(app)

    app = FastAPI(title="recsys decision service", version="1", lifespan=lifespan)
    app.state.pipeline, app.state.holder, app.state.metrics, app.state.cfg = pipeline, holder, metrics, cfg
    app.state.decision_log, app.state.feedback_log, app.state.service_state = log, feedback, state
    app.state.router = router

    app.add_middleware(BoundAndCount, max_body_bytes=cfg.max_body_bytes, metrics=metrics)

    @app.post("/v1/recommend", response_model=RecommendResponse)
    def recommend(body: RecommendIn) -> RecommendResponse:
        d = pipeline.recommend(DecisionRequest(body.user_id, body.channel, body.k, dict(body.context),
                                               list(body.exclude)))
        if log is not None:
            logged_user = body.user_id if d.personalised_allowed else f"anon:{d.decision_id}"
            log.write(decision_rows(d, body.channel, body.k, logged_user,
                                    {"context": body.context, "exclude": body.exclude}))
        return RecommendResponse(decision_id=d.decision_id, items=d.items, scores=d.scores, level=d.level,
                                 versions=d.versions, reasons=d.reasons, latency_ms=d.latency_ms, arm=d.arm)

    @app.post("/v1/events", status_code=202)
    def events(body: EventsIn) -> dict[str, Any]:
        recorded = skipped = 0
        try:
            for e in body.events:
                consent = state.get_consent(e.user_id)
                if not (cfg.consent_default if consent is None else consent):
                    skipped += 1  # nothing about an opted-out user is stored
                    continue
                apply_event(state, holder.current, cfg, e.user_id, e.item_id, e.event_type,
                            time.time() if e.timestamp is None else float(e.timestamp), e.segment, e.session_id,
                            e.value)
                recorded += 1
        except StateUnavailable:
            metrics.errors.labels("events", "state_unavailable").inc()
            return {"recorded": recorded, "skipped": skipped, "error": "state_unavailable"}
        return {"recorded": recorded, "skipped": skipped}

    @app.post("/v1/feedback", status_code=202)
    def feedback_(body: FeedbackIn) -> dict[str, Any]:
        router.record_feedback(body.decision_id, body.event)  # the arm's primary metric (guardrails)
        if feedback is not None:
            feedback.write([{"decision_id": body.decision_id, "item_id": body.item_id, "event": body.event,
                             "timestamp": time.time()}])
        return {"recorded": feedback is not None}

    @app.put("/v1/users/{user_id}/consent")
    def consent(user_id: str, body: ConsentIn) -> Response:
        if not re.match(ID, user_id):
            return JSONResponse({"detail": "user_id: invalid id"}, status_code=422)
        try:
            state.set_consent(user_id, body.granted)
            if not body.granted:
                state.forget_user(user_id)
                beh = holder.current.behaviour
                if beh is not None:  # the user's behavioural features, here and (via the stream) in every replica
                    beh.erase_user(user_id)
                    if getattr(state, "remote", False):
                        state.publish_event({"erase_user": user_id})
        except StateUnavailable:
            # not stored: the client must retry; recommendations meanwhile are non-personalised
            return JSONResponse({"detail": "state store unavailable; consent not recorded, retry"},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"user_id": user_id, "granted": body.granted})

    def admin(request: Request) -> Response | None:
        """None when the caller may use the admin API, else the refusal."""
        token = os.environ.get(cfg.admin_token_env)
        client = request.client.host if request.client else ""
        if not token or client not in LOOPBACK:
            return JSONResponse({"detail": "admin API disabled (no token set) or not a loopback client"},
                                status_code=403)
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"detail": "bad admin token"}, status_code=401)
        return None

    @app.post("/v1/admin/reload")
    def reload(request: Request, body: ReloadIn | None = None) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        arm = body.arm if body is not None else None
        try:
            paths = None
            if body is not None and body.bundles is not None:
                current = holder.paths if arm is None or arm not in router.routes else router.routes[arm].holder.paths
                paths = _build(BundlePaths, {**current.__dict__, **body.bundles}, "bundles")
            new = router.reload(arm, paths)
        except (BundleSetError, ServiceConfigError) as e:
            metrics.reloads.labels("refused").inc()
            return JSONResponse({"detail": f"reload refused, the old set keeps serving: {e}"}, status_code=409)
        metrics.reloads.labels("ok").inc()
        return JSONResponse({"reloaded": True, "arm": arm, "versions": new.versions})

    @app.get("/v1/admin/experiment")
    def experiment_status(request: Request) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        return JSONResponse(router.status())

    @app.post("/v1/admin/experiment/{arm}/restore")
    def experiment_restore(request: Request, arm: str) -> Response:
        if (refused := admin(request)) is not None:
            return refused
        return JSONResponse({"arm": arm, "restored": router.restore(arm)})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            state.ping()
            state_ok = True
        except StateUnavailable:
            state_ok = False
        bs = holder.current
        body = {"state": state_ok, "ranker": bs.ranker is not None, "index": bs.index is not None,
"versions": bs.versions, "levels": list(LEVELS)}
        # degraded but serving (the static level needs nothing) is still ready
        return JSONResponse({"ready": True, **body})

    @app.get("/metrics")
    def metrics_() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def shutdown(app: FastAPI) -> None:
    """Flush the logs and stop the stage threads (idempotent)."""
    for w in (app.state.decision_log, app.state.feedback_log):
        if w is not None:
            w.close()
    app.state.pipeline.close()


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process (``recsys serve workers=N``): the serving
    config comes as JSON in ``RECSYS_SERVE_CONFIG``."""
    import json

    from recsys.service.config import serve_config

    return create_app(serve_config(json.loads(os.environ["RECSYS_SERVE_CONFIG"])))
