"""What bounds one stage of a decision: a failure type (:class:`StageFailed`), the
per-stage circuit breaker and the deadline a level's worker thread publishes to the
request thread (:class:`Progress`). Used by :mod:`recsys.service.pipeline`."""
from __future__ import annotations

import threading
import time
from typing import Callable


def is_error(reason: str) -> bool:
    """A reason that is a failure (the error-rate guardrail), not a normal fallback."""
    return (":error" in reason or reason.endswith((":timeout", ":circuit_open")) or ":unexpected:" in reason
            or "state_unavailable" in reason)


class StageFailed(Exception):
    """A stage did not deliver: error, timeout, open circuit or low confidence."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


class CircuitBreaker:
    """Per stage: ``failures`` consecutive failures open the circuit for ``cooldown_s``
    (the stage is skipped); the first call after the cooldown tries again."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._count: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, stage: str) -> bool:
        return self.clock() >= self._open_until.get(stage, 0.0)

    def success(self, stage: str) -> None:
        with self._lock:
            self._count[stage] = 0

    def failure(self, stage: str) -> None:
        with self._lock:
            n = self._count.get(stage, 0) + 1
            self._count[stage] = n
            if n >= self.failures:
                self._open_until[stage], self._count[stage] = self.clock() + self.cooldown_s, 0

    def is_open(self, stage: str) -> bool:
        return not self.allow(stage)


class Progress:
    """What the thread computing a level is doing: the stage and its deadline (on the
    ``time.perf_counter`` clock), read by the waiting request thread; ``abandoned``
    tells the worker its result is no longer wanted. The request thread sleeps until
    ``waiting_until`` (the deadline it last read); a stage whose deadline comes
    earlier wakes it (``changed``), so a short budget after a long one is enforced on
    time, while the usual case (each deadline later than the one waited on) costs no
    wake-up at all."""

    __slots__ = ("stage", "started", "deadline", "abandoned", "lat", "waiting_until", "changed")

    def __init__(self, started: float, deadline: float):
        self.stage, self.started, self.deadline, self.abandoned = "queue", started, deadline, False
        self.lat: dict[str, float] = {}
        self.waiting_until = deadline
        self.changed = threading.Event()

    def enter(self, stage: str, budget_ms: float, now: float | None = None) -> None:
        t = time.perf_counter() if now is None else now
        self.stage, self.started, self.deadline = stage, t, t + budget_ms / 1e3
        if self.deadline < self.waiting_until:
            self.changed.set()
