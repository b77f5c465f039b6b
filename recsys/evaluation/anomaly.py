"""Sudden drops and rises in metric time series: a robust z-score against a rolling
baseline, and alert records.

A series is one value per time window (e.g. CTR of the impressions logged in each
5-minute window), optionally with the window's count (impressions, requests) for
rates. For point ``t`` the baseline is the median of the last ``window`` *normal*
points before it (alerted points are left out, so a lasting shift keeps alerting
instead of becoming the new normal) and the score is

    z = (value - median) / max(1.4826 * MAD, binomial SE, rel_floor * |median|)

where the binomial SE ``sqrt(m (1 - m) / count)`` applies to rates with counts (a
window with few impressions is noisy, and a flat history has MAD 0). A point is
anomalous when ``z`` goes past ``threshold`` in the metric's bad direction (``drop``
for CTR and conversion, ``rise`` for latency and fallback rate, or ``both``) and the
change is at least ``min_relative_change`` of the baseline. Runs of anomalous points
of one metric are one alert: the first time, its value, baseline and score, the worst
score, the number of windows and the last time. Severity: ``critical`` when the worst
``|z|`` reaches ``critical_factor * threshold``, else ``warning``. Points with too
little history (``min_history``) or a count below ``min_count`` are not scored.

:func:`simulate_streams` draws windowed CTR, conversion, latency p99 and fallback
rate with realistic noise (binomial rates, lognormal latency, a daily cycle) and
optional planted anomalies, for measuring the detection and false-alarm rates.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

DIRECTIONS = ("drop", "rise", "both")
# the bad direction of the service's metrics
DEFAULT_DIRECTIONS = {"ctr": "drop", "conversion": "drop", "latency_p99_ms": "rise", "fallback_rate": "rise",
                      "error_rate": "rise"}
RATES = ("ctr", "conversion", "fallback_rate", "error_rate")


@dataclass(frozen=True)
class DetectorOptions:
    """See the module docstring."""

    window: int = 24
    min_history: int = 12
    guard: int = 6
    threshold: float = 6.0
    cusum_k: float = 1.0
    cusum_h: float = 8.0
    cusum_clip: float = 4.0
    critical_factor: float = 2.0
    min_relative_change: float = 0.1
    rel_floor: float = 0.02
    min_count: int = 1

    def __post_init__(self) -> None:
        if self.window < 2 or self.min_history < 2 or self.min_history > self.window:
            raise ValueError(f"detector: need 2 <= min_history <= window, got min_history={self.min_history} "
                             f"window={self.window}")
        if self.threshold <= 0 or self.critical_factor < 1 or self.cusum_k <= 0 or self.cusum_h <= 0:
            raise ValueError("detector: threshold, cusum_k, cusum_h must be > 0 and critical_factor >= 1")


@dataclass
class Series:
    """One metric over time windows: ``times`` (window start, seconds), ``values`` (NaN: no
    data), ``counts`` (the window's denominator for rates; None otherwise)."""

    metric: str
    times: np.ndarray
    values: np.ndarray
    counts: np.ndarray | None = None
    is_rate: bool = False


@dataclass
class Alert:
    """One alert record (a line of the alerts JSONL). ``time``: the window where the change
    starts (a spike: the alerting window; a shift: where its CUSUM excursion began);
    ``detected_time``: the window that raised it; ``end_time``: the last anomalous window."""

    time: float
    metric: str
    value: float
    baseline: float
    score: float
    severity: str
    direction: str
    detector: str
    detected_time: float
    end_time: float
    n_windows: int
    worst_score: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Episode:
    start: int
    alarm: int
    end: int
    detector: str
    sign: int


def _scale(h: np.ndarray, med: float, count: float | None, is_rate: bool, o: DetectorOptions) -> float:
    scale = 1.4826 * float(np.median(np.abs(h - med)))
    if is_rate and count is not None:
        m = min(max(med, 1.0 / max(count, 1.0)), 1 - 1e-12)  # a zero baseline counts as one event
        scale = max(scale, float(np.sqrt(m * (1 - m) / count)))
    return max(scale, o.rel_floor * abs(med), 1e-12)


def _episodes(series: Series, o: DetectorOptions, direction: str) -> tuple[np.ndarray, np.ndarray, list[_Episode]]:
    """Robust z per point, its baseline, and the alert episodes (module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    signs = {"drop": (-1,), "rise": (1,), "both": (-1, 1)}[direction]
    v = np.asarray(series.values, dtype=np.float64)
    n = len(v)
    z, base = np.full(n, np.nan), np.full(n, np.nan)
    history: list[float] = []
    cusum = {sg: 0.0 for sg in signs}
    began = {sg: 0 for sg in signs}
    episodes: list[_Episode] = []
    current: _Episode | None = None
    for t in range(n):
        x = v[t]
        count = None if series.counts is None else float(series.counts[t])
        if not np.isfinite(x) or (count is not None and count < o.min_count):
            continue
        bad = False
        if len(history) >= o.min_history + o.guard:
            h = np.asarray(history[-(o.window + o.guard):len(history) - o.guard])
            med = float(np.median(h))
            z[t] = zt = (x - med) / _scale(h, med, count, series.is_rate, o)
            base[t] = med
            big = abs(x - med) >= o.min_relative_change * abs(med)
            if current is not None:  # an open alert lasts while the metric stays off in its direction
                bad = current.sign * zt >= o.cusum_k and big
                if bad:
                    current.end = t
                else:
                    current = None
            else:
                for sg in signs:
                    s = sg * zt
                    prev = cusum[sg]
                    cusum[sg] = max(0.0, prev + min(s, o.cusum_clip) - o.cusum_k)
                    if prev == 0.0 and cusum[sg] > 0:
                        began[sg] = t
                    if s >= o.threshold and big:
                        current = _Episode(t, t, t, "spike", sg)
                    elif cusum[sg] >= o.cusum_h:
                        idx = np.flatnonzero(np.isfinite(z[began[sg]:t + 1])) + began[sg]
                        # change point: the start of the excursion's strongest tail (sum of s - 1.5 k)
                        tail = np.cumsum((np.minimum(sg * z[idx], o.cusum_clip) - 1.5 * o.cusum_k)[::-1])[::-1]
                        cp = int(np.argmax(tail))
                        # the shift must be large both since the change point and over the last 3 windows
                        size = min(abs(float(np.mean(v[idx[cp:]])) - med), abs(float(np.mean(v[idx[-3:]])) - med))
                        if size >= o.min_relative_change * abs(med):
                            current = _Episode(int(idx[cp]), t, t, "shift", sg)
                    if current is not None:
                        episodes.append(current)
                        bad = True
                        cusum = {k: 0.0 for k in signs}
                        break
        if not bad:
            history.append(float(x))
    return z, base, episodes


def scores(series: Series, options: DetectorOptions = DetectorOptions(), direction: str = "both"
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per point: ``(z, baseline)``; NaN where not scored."""
    z, base, _ = _episodes(series, options, direction)
    return z, base


def detect(series: Series, options: DetectorOptions = DetectorOptions(), direction: str | None = None,
           source: str = "") -> list[Alert]:
    """Alerts of one series (one per episode; see the module docstring)."""
    d = direction or DEFAULT_DIRECTIONS.get(series.metric, "both")
    z, base, episodes = _episodes(series, options, d)
    out = []
    for e in episodes:
        span = z[e.start:e.end + 1]
        span = span[np.isfinite(span)]
        worst = float(span[np.argmax(e.sign * span)]) if len(span) else float(z[e.alarm])
        out.append(Alert(
            time=float(series.times[e.start]), metric=series.metric, value=float(series.values[e.alarm]),
            baseline=float(base[e.alarm]), score=float(z[e.alarm]),
            severity="critical" if abs(worst) >= options.critical_factor * options.threshold else "warning",
            direction="drop" if e.sign < 0 else "rise", detector=e.detector,
            detected_time=float(series.times[e.alarm]), end_time=float(series.times[e.end]),
            n_windows=int(e.end - e.alarm + 1), worst_score=worst, source=source))
    return out


def detect_all(series: Sequence[Series], options: DetectorOptions = DetectorOptions(),
               directions: Mapping[str, str] | None = None, source: str = "") -> list[Alert]:
    """Alerts of every series, in time order."""
    dirs = {**DEFAULT_DIRECTIONS, **(directions or {})}
    out = [a for s in series for a in detect(s, options, dirs.get(s.metric, "both"), source)]
    return sorted(out, key=lambda a: (a.time, a.metric))


@dataclass(frozen=True)
class Plant:
    """A planted anomaly: ``metric`` multiplied by ``factor`` from window ``start`` for ``length`` windows."""

    metric: str
    start: int
    factor: float
    length: int = 10**9


def simulate_streams(seed: int, n_windows: int = 288, window_s: float = 300.0, impressions: float = 10_000.0,
                     ctr: float = 0.05, conversion: float = 0.01, latency_ms: float = 40.0,
                     fallback: float = 0.02, daily_amplitude: float = 0.3,
                     plants: Sequence[Plant] = ()) -> list[Series]:
    """Windowed metrics of a service (one day of 5-minute windows by default): traffic and CTR
    follow a daily cycle, rates are binomial draws from their window's counts, latency p99 is
    the 99th percentile of lognormal request latencies; ``plants`` multiply a metric's true
    level (rates, latency) over a span of windows."""
    rng = np.random.default_rng([seed, 31])
    t = np.arange(n_windows)
    times = t * window_s
    phase = 2 * np.pi * times / 86_400.0
    traffic = rng.poisson(impressions * (1 + daily_amplitude * np.sin(phase))).astype(np.float64)
    requests = np.maximum(rng.poisson(traffic / 5.0), 1).astype(np.float64)
    level = {"ctr": ctr * (1 + 0.1 * np.sin(phase + 1.0)), "conversion": np.full(n_windows, conversion),
             "fallback_rate": np.full(n_windows, fallback), "latency_p99_ms": np.full(n_windows, latency_ms)}
    for p in plants:
        if p.metric not in level:
            raise ValueError(f"unknown metric {p.metric!r} to plant (choose from {sorted(level)})")
        span = (t >= p.start) & (t < p.start + p.length)
        level[p.metric] = np.where(span, level[p.metric] * p.factor, level[p.metric])
    clicks = rng.binomial(traffic.astype(np.int64), np.clip(level["ctr"], 0, 1))
    conv = rng.binomial(requests.astype(np.int64), np.clip(level["conversion"], 0, 1))
    fb = rng.binomial(requests.astype(np.int64), np.clip(level["fallback_rate"], 0, 1))
    # p99 of `requests` lognormal latencies with median latency_ms / e^(2.33 * 0.35)
    sigma = 0.35
    p99 = np.array([np.quantile(rng.lognormal(np.log(m) - 2.326 * sigma, sigma, int(n)), 0.99)
                    for m, n in zip(level["latency_p99_ms"], requests)])
    safe = np.maximum(traffic, 1)
    return [Series("ctr", times, clicks / safe, traffic, True),
            Series("conversion", times, conv / requests, requests, True),
            Series("latency_p99_ms", times, p99, requests, False),
            Series("fallback_rate", times, fb / requests, requests, True)]
