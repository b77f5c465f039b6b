"""Prometheus metrics of one service instance (its own registry, so several apps can
live in one process): request counts, per-stage latency histograms, fallback
levels, cap hits, errors."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("recsys_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.request_latency = Histogram("recsys_request_seconds", "request latency", ["route"], buckets=BUCKETS,
                                         registry=r)
        self.stage_latency = Histogram("recsys_stage_seconds", "pipeline stage latency", ["stage"], buckets=BUCKETS,
                                       registry=r)
        self.fallback = Counter("recsys_decisions_total", "decisions by fallback level", ["channel", "level"],
                                registry=r)
        self.cap_hits = Counter("recsys_cap_hits_total", "decisions shortened or changed by a frequency cap",
                                ["channel"], registry=r)
        self.errors = Counter("recsys_stage_errors_total", "stage failures", ["stage", "kind"], registry=r)
        self.reloads = Counter("recsys_reloads_total", "bundle reloads", ["outcome"], registry=r)
        self.arm_decisions = Counter("recsys_arm_decisions_total", "decisions by experiment arm", ["arm"], registry=r)
        self.rollbacks = Counter("recsys_arm_rollbacks_total", "automatic rollbacks of a challenger arm",
                                 ["arm", "guardrail"], registry=r)
