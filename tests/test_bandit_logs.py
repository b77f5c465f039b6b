"""Bandit log format: validation errors name file, line/row and column; CLI exit codes."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.bandit_logs import read_bandit_log, synthetic_bandit_log
from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.utils.errors import DataError
from tests.helpers import run

HEADER = "request_id,user_id,timestamp,position,item_id,propensity,click,logging_policy\n"
GOOD = [(1, "u1", 10, 0, "a", 0.5, 1), (1, "u1", 10, 1, "b", 0.25, 0),
        (2, "u2", 11, 0, "b", 0.5, 0), (2, "u2", 11, 1, "c", 0.2, 1)]


def _csv(tmp_path, rows, header=HEADER, name="log.csv"):
    path = tmp_path / name
    path.write_text(header + "".join(",".join(map(str, r)) + ",pol\n" for r in rows))
    return path


def test_good_csv_and_parquet(tmp_path):
    log = read_bandit_log(_csv(tmp_path, GOOD))
    assert log.actions.shape == (2, 2) and log.slate_size == 2 and log.n_items == 3
    assert log.item_ids[log.actions].tolist() == [["a", "b"], ["b", "c"]]
    assert log.rewards.tolist() == [[1, 0], [0, 1]] and log.propensities[1].tolist() == [0.5, 0.2]
    assert log.logging_policies == ["pol"]
    t = pa.table({"request_id": [1, 1], "user_id": ["u", "u"], "position": [1, 0], "item_id": ["x", "y"],
                  "propensity": [0.1, 0.2], "purchase": [0, 1]})
    pq.write_table(t, tmp_path / "l.parquet")
    log = read_bandit_log(tmp_path / "l.parquet", columns={"reward": "purchase"})
    assert log.item_ids[log.actions].tolist() == [["y", "x"]] and log.rewards.tolist() == [[1, 0]]


# (row, field, new value, phrases the one-line message must contain, column it must name)
CASES = {
    "prop_zero": (1, 5, 0, ["log.csv:3", "propensity must be > 0"], "propensity"),
    "prop_gt1": (2, 5, 1.5, ["log.csv:4", "<= 1"], "propensity"),
    "prop_missing": (0, 5, "", ["log.csv:2", "propensity missing"], "propensity"),
    "pos_range": (3, 3, 7, ["log.csv:5", "out of range"], "position"),
    "pos_negative": (3, 3, -1, ["log.csv:5", "integer >= 0"], "position"),
    "pos_fraction": (3, 3, 0.5, ["log.csv:5", "integer >= 0"], "position"),
    "reward_nonbinary": (2, 6, 2, ["log.csv:4", "0 or 1"], "click"),
    "reward_nan": (2, 6, "nan", ["log.csv:4", "not finite"], "click"),
    "reward_text": (2, 6, "yes", ["log.csv:4", "expected a number", "yes"], "click"),
    "dup_position": (1, 3, 0, ["log.csv:3", "more than once"], "position"),
    "user_missing": (2, 1, "", ["log.csv:4", "missing value"], "user_id"),
}


def _edit(row: int, field: int, value) -> list[tuple]:
    rows = [list(r) for r in GOOD]
    rows[row][field] = value
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("case", list(CASES))
def test_validation_errors(tmp_path, case):
    row, field, value, phrases, column = CASES[case]
    with pytest.raises(DataError) as e:
        read_bandit_log(_csv(tmp_path, _edit(row, field, value)), slate_size=2)
    msg = str(e.value)
    assert "\n" not in msg and e.value.column == column, msg
    for p in phrases:
        assert p in msg, (p, msg)


def test_missing_column_empty_file_and_incomplete_slate(tmp_path):
    path = tmp_path / "nocol.csv"
    path.write_text("request_id,user_id,position,item_id,click\n1,u,0,a,1\n")
    with pytest.raises(DataError) as e:
        read_bandit_log(path)
    assert e.value.column == "propensity" and "nocol.csv" in str(e.value) and "not found" in str(e.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_bandit_log(empty)
    with pytest.raises(DataError, match="lacks position 1"):
        read_bandit_log(_csv(tmp_path, GOOD[:3]))
    with pytest.raises(DataError, match="not found"):
        read_bandit_log(tmp_path / "nope.parquet")


def test_synthetic_log_matches_world():
    w = generate_world(SyntheticConfig(n_users=60, n_items=40, n_requests=50, seed=2))
    log = synthetic_bandit_log(w)
    assert log.actions.shape == (50, w.config.slate_size)
    probs = w.logging_distribution(log.users)
    assert np.allclose(np.take_along_axis(probs, log.actions, axis=1), log.propensities)
    assert "category" in log.action_features


def test_cli_ope_on_tiny_world_and_bad_log(tmp_path):
    small = ["data.n_users=150", "data.n_items=60", "data.loader.n_requests=400", "ope.n_bootstrap=50",
             f"paths.cache_dir={tmp_path / 'cache'}"]
    res = run("ope", "policy=popularity", f"hydra.run.dir={tmp_path / 'run'}", *small)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["estimates"]) == {"DM", "IPS", "SNIPS", "DR", "SNDR", "SwitchDR"}
    assert summary["true_value"] > 0 and "rel_error" in summary["estimates"]["DR"]
    assert (tmp_path / "run" / "ope.png").stat().st_size > 0
    bad = _csv(tmp_path, _edit(1, 5, -0.1), name="bad.csv")
    res = run("ope", f"logs={bad}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.csv:3" in lines[0] and "propensity" in lines[0], res.stderr


def test_ope_on_an_external_log_file(tmp_path):
    """`recsys ope logs=<parquet> data=synthetic`: a log joined to a catalogue, no world truth."""
    import json

    import pyarrow.parquet as pq

    from recsys.data.bandit_logs import synthetic_log_table
    from recsys.data.synthetic import SyntheticConfig, generate_world
    from tests.helpers import run

    world = generate_world(SyntheticConfig(n_users=300, n_items=100, n_requests=2000))
    log = tmp_path / "log.parquet"
    pq.write_table(synthetic_log_table(world).drop_columns(["category"]), log)
    out = tmp_path / "run"
    res = run("ope", f"logs={log}", "policy=popularity", "data=synthetic", "data.n_users=300", "data.n_items=100",
              "ope.n_bootstrap=50",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["true_value"] is None  # an external log carries no truth
    est = s["estimates"]
    assert {"DM", "IPS", "SNIPS", "DR", "SNDR", "SwitchDR"} <= set(est)
    assert all(e["ci_low"] <= e["estimate"] <= e["ci_high"] for e in est.values())
    assert s["diagnostics"]["ess"] > 0
