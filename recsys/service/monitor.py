"""``recsys monitor``: the service's metrics over time, checked for sudden drops and rises.

Two sources, each turned into windowed series for :mod:`recsys.evaluation.anomaly`:

* **logs** (:func:`read_log_series`): a joined log file (``recsys logs join`` output,
  Parquet or CSV: ``request_id``, ``timestamp``, ``click``; optional
  ``fallback_level``, ``latency_ms`` (the decision log's JSON of stage latencies,
  ``total`` used) and ``conversion`` (0/1 per request)) or a decision log folder
  (decision and feedback parts: a row is clicked when the feedback has ``click_event``
  for its decision and item, a request converts when the feedback has
  ``conversion_event`` for its decision). Per window of ``window_s`` seconds: ``ctr``
  (clicks / impressions), ``conversion`` (converted requests / requests),
  ``latency_p99_ms`` (over requests), ``fallback_rate`` (requests served below the
  ``primary_levels`` of the fallback chain / requests).
* **/metrics** (:func:`scrape`, :func:`metric_series`): the Prometheus text of a running
  service, scraped ``n`` times over loopback only; per interval between scrapes:
  ``latency_p99_ms`` (from the ``recsys_request_seconds`` histogram deltas, linear within
  a bucket as Prometheus' ``histogram_quantile``), ``fallback_rate`` (from
  ``recsys_decisions_total`` by level) and ``error_rate`` (5xx share of
  ``recsys_requests_total``).

Alerts are written as JSONL (one :class:`~recsys.evaluation.anomaly.Alert` per line),
atomically.
"""
from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.evaluation.anomaly import Alert, Series
from recsys.service.decision_log import DECISION_SCHEMA, FEEDBACK_SCHEMA, read_log
from recsys.utils.errors import DataError, RecsysError
from recsys.utils.io import atomic_path

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SKIP_ROUTES = ("/metrics", "/healthz", "/readyz")


def _read_file(path: Path) -> pa.Table:
    try:
        return pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"not a readable {'Parquet' if path.suffix == '.parquet' else 'CSV'} file "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _from_folder(path: Path, click_event: str, conversion_event: str) -> pa.Table:
    """A decision log folder as one table with ``click`` and ``conversion`` columns."""
    dec = read_log(path, "decisions", DECISION_SCHEMA)
    if dec.num_rows == 0:
        raise DataError(path, "no decision parts (decisions-*.parquet) in it")
    fb = read_log(path, "feedback", FEEDBACK_SCHEMA)
    clicked, converted = set(), set()
    for d, i, e in zip(*(fb.column(c).to_pylist() for c in ("decision_id", "item_id", "event"))):
        if e == click_event:
            clicked.add((d, i))
        if e == conversion_event:
            converted.add(d)
    req = dec.column("request_id").to_pylist()
    items = dec.column("item_id").to_pylist()
    dec = dec.append_column("click", pa.array([int((r, i) in clicked) for r, i in zip(req, items)], pa.int64()))
    return dec.append_column("conversion", pa.array([int(r in converted) for r in req], pa.int64()))


def read_log_series(path: str | Path, window_s: float = 300.0, primary_levels: Sequence[str] = ("personalised",),
                    click_event: str = "click", conversion_event: str = "purchase") -> list[Series]:
    """Windowed ``ctr``, ``conversion``, ``latency_p99_ms``, ``fallback_rate`` of a joined log
    file or a decision log folder (module docstring); a metric whose column is absent is left out."""
    p = Path(path)
    if window_s <= 0:
        raise RecsysError(f"window_s={window_s}: expected > 0 seconds")
    if p.is_dir():
        table = _from_folder(p, click_event, conversion_event)
    elif p.is_file():
        table = _read_file(p)
    else:
        raise DataError(p, "not found (expected a joined log file or a decision log folder)")
    for col in ("request_id", "timestamp"):
        if col not in table.column_names:
            raise DataError(p, f"missing column {col!r} (columns: {', '.join(table.column_names)})", column=col)
    if table.num_rows == 0:
        raise DataError(p, "no rows")
    ts = np.asarray(pc.cast(table.column("timestamp"), pa.float64()).to_numpy(zero_copy_only=False), dtype=float)
    if not np.all(np.isfinite(ts)):
        row = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise DataError(p, f"row {row}: expected a finite time in seconds", column="timestamp")
    t0 = math.floor(ts.min() / window_s) * window_s
    win = ((ts - t0) // window_s).astype(np.int64)
    n = int(win.max()) + 1
    times = t0 + np.arange(n) * window_s
    out: list[Series] = []
    # impressions: rows with an item (position >= 0 where the column exists)
    shown = np.ones(len(ts), dtype=bool)
    if "position" in table.column_names:
        shown = np.asarray(pc.fill_null(table.column("position"), -1).to_numpy(zero_copy_only=False)) >= 0
    if "click" in table.column_names:
        click = np.asarray(pc.fill_null(pc.cast(table.column("click"), pa.float64()), 0).to_numpy(), dtype=float)
        imp = np.bincount(win[shown], minlength=n).astype(float)
        clicks = np.bincount(win[shown], weights=click[shown], minlength=n)
        out.append(Series("ctr", times, np.divide(clicks, imp, out=np.full(n, np.nan), where=imp > 0), imp, True))
    # one row per request (its first row) for the per-request metrics
    _, first = np.unique(np.asarray(pc.cast(table.column("request_id"), pa.string()).to_pylist(), dtype=object),
                         return_index=True)
    rw = win[first]
    reqs = np.bincount(rw, minlength=n).astype(float)

    def rate(flags: np.ndarray) -> np.ndarray:
        hits = np.bincount(rw, weights=flags.astype(float), minlength=n)
        return np.divide(hits, reqs, out=np.full(n, np.nan), where=reqs > 0)

    if "conversion" in table.column_names:
        conv = np.asarray(pc.fill_null(pc.cast(table.column("conversion"), pa.float64()), 0).to_numpy(), dtype=float)
        out.append(Series("conversion", times, rate(conv[first] > 0), reqs, True))
    if "latency_ms" in table.column_names:
        raw = table.column("latency_ms").take(pa.array(first)).to_pylist()
        lat = np.array([_total_ms(v) for v in raw], dtype=float)
        p99 = np.full(n, np.nan)
        order = np.argsort(rw, kind="stable")
        bounds = np.searchsorted(rw[order], np.arange(n + 1))
        for w in range(n):
            vals = lat[order[bounds[w]:bounds[w + 1]]]
            vals = vals[np.isfinite(vals)]
            if len(vals):
                p99[w] = float(np.quantile(vals, 0.99))
        out.append(Series("latency_p99_ms", times, p99, reqs, False))
    if "fallback_level" in table.column_names:
        levels = np.asarray(pc.fill_null(table.column("fallback_level"), "").take(pa.array(first)).to_pylist(),
                            dtype=object)
        out.append(Series("fallback_rate", times, rate(~np.isin(levels, list(primary_levels))), reqs, True))
    return out


def _total_ms(v: Any) -> float:
    """The ``total`` of a decision log's ``latency_ms`` JSON (or a plain number)."""
    if v is None:
        return float("nan")
    if isinstance(v, (int, float)):
        return float(v)
    try:
        d = json.loads(v)
    except (TypeError, ValueError):
        return float("nan")
    if isinstance(d, dict):
        return float(d.get("total", sum(x for x in d.values() if isinstance(x, (int, float)))))
    return float(d) if isinstance(d, (int, float)) else float("nan")


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples ``(name, labels, value)`` of the Prometheus text exposition format."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(3) or "")), value))
    return out


def snapshot(samples: Iterable[tuple[str, dict[str, str], float]], primary_levels: Sequence[str] = ("personalised",)
             ) -> dict[str, Any]:
    """The counters the monitor needs from one scrape."""
    s: dict[str, Any] = {"requests": 0.0, "errors": 0.0, "decisions": 0.0, "fallbacks": 0.0, "buckets": {}}
    for name, labels, v in samples:
        route = labels.get("route", "")
        if name == "recsys_requests_total" and route not in SKIP_ROUTES:
            s["requests"] += v
            if labels.get("status", "").startswith("5"):
                s["errors"] += v
        elif name == "recsys_decisions_total":
            s["decisions"] += v
            if labels.get("level") not in primary_levels:
                s["fallbacks"] += v
        elif name == "recsys_request_seconds_bucket" and route not in SKIP_ROUTES:
            le = float("inf") if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
            s["buckets"][le] = s["buckets"].get(le, 0.0) + v
    return s


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts ``{le: count}``."""
    les = sorted(buckets)
    counts = np.array([buckets[le] for le in les])
    if not len(les) or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    i = int(np.searchsorted(counts, rank))
    if i >= len(les) or math.isinf(les[i]):
        return les[-2] if len(les) > 1 else float("nan")  # in the +Inf bucket: the largest finite bound
    lo = les[i - 1] if i > 0 else 0.0
    below = counts[i - 1] if i > 0 else 0.0
    inside = counts[i] - below
    return lo + (les[i] - lo) * ((rank - below) / inside if inside > 0 else 1.0)


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if urlparse(url).scheme not in ("http", "https") or host not in LOOPBACK:
        raise RecsysError(f"metrics_url={url}: only loopback http(s) URLs are scraped ({', '.join(LOOPBACK)})")


def scrape(url: str, n: int, interval_s: float, timeout_s: float = 5.0,
           primary_levels: Sequence[str] = ("personalised",)) -> list[tuple[float, dict[str, Any]]]:
    """``n`` snapshots of ``url`` (loopback only), ``interval_s`` apart: ``[(time, snapshot)]``."""
    check_loopback(url)
    if n < 2:
        raise RecsysError(f"scrape.n={n}: need at least 2 scrapes (series are differences between scrapes)")
    out = []
    for i in range(n):
        if i:
            time.sleep(interval_s)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback checked)
                text = r.read().decode()
        except OSError as e:
            raise RecsysError(f"metrics_url={url}: scrape {i + 1} of {n} failed ({e})") from None
        out.append((time.time(), snapshot(parse_prometheus(text), primary_levels)))
    return out


def metric_series(snaps: Sequence[tuple[float, dict[str, Any]]]) -> list[Series]:
    """Per interval between consecutive scrapes: ``latency_p99_ms``, ``fallback_rate``, ``error_rate``."""
    times = np.array([t for t, _ in snaps[1:]])
    lat, fb, dec, err, req = [], [], [], [], []
    for (_, a), (_, b) in zip(snaps[:-1], snaps[1:]):
        delta = {le: b["buckets"].get(le, 0.0) - a["buckets"].get(le, 0.0) for le in b["buckets"]}
        lat.append(histogram_quantile(0.99, delta) * 1e3)
        d_dec, d_req = b["decisions"] - a["decisions"], b["requests"] - a["requests"]
        dec.append(d_dec)
        fb.append((b["fallbacks"] - a["fallbacks"]) / d_dec if d_dec > 0 else float("nan"))
        req.append(d_req)
        err.append((b["errors"] - a["errors"]) / d_req if d_req > 0 else float("nan"))
    return [Series("latency_p99_ms", times, np.array(lat), np.array(req), False),
            Series("fallback_rate", times, np.array(fb), np.array(dec), True),
            Series("error_rate", times, np.array(err), np.array(req), True)]


def write_alerts(path: str | Path, alerts: Sequence[Alert]) -> Path:
    """The alerts as JSONL (one record per line), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(a.to_dict(), sort_keys=True) + "\n" for a in alerts))
    return Path(path)
