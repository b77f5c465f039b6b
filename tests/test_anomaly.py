"""Metric anomaly alerts: planted anomalies are found with the right metric and time, clean
streams stay quiet (false-alarm rate over 20 seeds), and `recsys monitor` reads a joined log
and a real Prometheus /metrics text served over loopback."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import generate_latest

from recsys.evaluation.anomaly import Plant, detect_all, simulate_streams
from recsys.service.metrics import Metrics
from recsys.service.monitor import histogram_quantile, metric_series, read_log_series, scrape
from recsys.utils.errors import RecsysError
from tests.helpers import ROOT, run

W = 300.0
PLANTS = [Plant("ctr", 150, 0.7), Plant("latency_p99_ms", 120, 3.0, 5), Plant("fallback_rate", 200, 5.0, 20),
          Plant("conversion", 100, 0.3)]


def test_clean_streams_false_alarm_rate_over_20_seeds():
    with_alert = sum(bool(detect_all(simulate_streams(seed))) for seed in range(20))
    assert with_alert / 20 <= 0.05, with_alert  # streams of 288 windows x 4 metrics with any alert


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.metric)
def test_planted_anomaly_found_with_metric_and_time(plant):
    found = 0
    for seed in range(5):
        alerts = detect_all(simulate_streams(seed, plants=[plant]))
        hit = [a for a in alerts if a.metric == plant.metric and abs(a.time - plant.start * W) <= 3 * W]
        found += bool(hit)
        assert all(a.metric == plant.metric for a in alerts), alerts  # nothing on the other metrics
        if hit:
            assert hit[0].direction == ("drop" if plant.factor < 1 else "rise")
            assert hit[0].detected_time - plant.start * W <= 12 * W
    assert found == 5


def _joined_table(seed: int, drop_at: int | None) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = {"request_id": [], "timestamp": [], "position": [], "click": [], "fallback_level": [], "latency_ms": []}
    for w in range(60):
        for r in range(200):
            rid = f"{w}-{r}"
            ctr = 0.1 * (0.5 if drop_at is not None and w >= drop_at else 1.0)
            lat = json.dumps({"total": float(rng.lognormal(np.log(20), 0.3))})
            lvl = "personalised" if rng.random() > 0.02 else "popular"
            for k in range(5):
                rows["request_id"].append(rid)
                rows["timestamp"].append(1e9 + w * W + r)
                rows["position"].append(k)
                rows["click"].append(int(rng.random() < ctr))
                rows["fallback_level"].append(lvl)
                rows["latency_ms"].append(lat)
    return pa.table(rows)


def test_monitor_cli_on_a_joined_log(tmp_path):
    pq.write_table(_joined_table(0, drop_at=40), tmp_path / "bad.parquet")
    res = run("monitor", f"logs={tmp_path / 'bad.parquet'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    alerts = [json.loads(x) for x in (tmp_path / "run" / "alerts.jsonl").read_text().splitlines()]
    assert [a["metric"] for a in alerts] == ["ctr"], alerts
    assert abs(alerts[0]["time"] - (1e9 + 40 * W)) <= 3 * W and alerts[0]["direction"] == "drop"
    pq.write_table(_joined_table(1, drop_at=None), tmp_path / "ok.parquet")
    series = read_log_series(tmp_path / "ok.parquet", W)
    assert sorted(s.metric for s in series) == ["ctr", "fallback_rate", "latency_p99_ms"]
    assert detect_all(series) == []


def test_histogram_quantile_matches_prometheus():
    # 100 obs: 50 in (0, 0.01], 49 in (0.01, 0.1], 1 in (0.1, 1]: p99 = end of the second bucket
    assert histogram_quantile(0.99, {0.01: 50, 0.1: 99, 1.0: 100, float("inf"): 100}) == pytest.approx(0.1)
    assert histogram_quantile(0.5, {0.01: 50, 0.1: 99, float("inf"): 100}) == pytest.approx(0.01)


def test_scraped_metrics_over_loopback_find_a_latency_spike():
    """A real prometheus_client registry (the service's Metrics), served on 127.0.0.1; each scrape
    first records one interval of traffic; from scrape 25 on the latency is 5x."""
    m = Metrics()
    rng = np.random.default_rng(0)
    state = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["n"] += 1
            slow = 5.0 if state["n"] >= 25 else 1.0
            for _ in range(300):
                m.requests.labels("/v1/recommend", "200").inc()
                m.request_latency.labels("/v1/recommend").observe(float(rng.lognormal(np.log(0.02), 0.3)) * slow)
                m.fallback.labels("home", "personalised" if rng.random() > 0.02 else "popular").inc()
            body = generate_latest(m.registry)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        snaps = scrape(f"http://127.0.0.1:{srv.server_port}/metrics", 35, 0.0)
    finally:
        srv.shutdown()
        srv.server_close()
    series = metric_series(snaps)
    alerts = detect_all(series)
    assert [a.metric for a in alerts] == ["latency_p99_ms"], alerts
    assert alerts[0].time == series[0].times[23]  # the interval ending at scrape 25
    with pytest.raises(RecsysError, match="loopback"):
        scrape("http://example.com/metrics", 2, 0.0)
