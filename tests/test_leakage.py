"""Leave-one-out on data with real timestamps warns (one line, naming the temporal
split or preset); ordinal sequences, generated data and temporal splits do not."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from recsys.data.splits import LeaveOneOut, TemporalSplit, loo_leakage_warning
from recsys.cli.config import config_dir
from tests.helpers import prepared, run

CONFIGS = config_dir()

ROWS = [(f"u{u}", f"i{(u * 7 + j) % 13}", 1_600_000_000.0 + 86_400 * (u + 3 * j)) for u in range(30) for j in range(6)]


def _file_backed(kind: str = "unix"):
    data = prepared(ROWS, timestamp_kind=kind)
    data.meta["sources"] = [{"path": "events.csv", "sha256": "0" * 64}]  # read from a file
    return data


def test_warning_only_for_loo_on_recorded_time():
    data = _file_backed()
    loo, temporal = LeaveOneOut().split(data), TemporalSplit().split(data)
    msg = loo_leakage_warning(data, loo.info, "experiment=x_temporal")
    assert msg is not None and "\n" not in msg
    assert "real timestamps" in msg and msg.endswith("use experiment=x_temporal")
    assert loo_leakage_warning(data, temporal.info) is None
    ordinal = _file_backed("ordinal")  # S3-Rec style sequences: leave-one-out is the protocol
    assert loo_leakage_warning(ordinal, LeaveOneOut().split(ordinal).info) is None
    generated = prepared(ROWS)  # no source files (the synthetic world)
    assert loo_leakage_warning(generated, LeaveOneOut().split(generated).info) is None


def _evaluate(tmp_path: Path, csv: Path, name: str, *extra: str):
    return run("evaluate", "data=csv", f"data.loader.path={csv}", "model=popularity", *extra,
               f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)


def test_cli_warns_under_loo_not_under_temporal(tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t:.0f}\n" for u, i, t in ROWS))
    r = _evaluate(tmp_path, csv, "loo")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "leave-one-out split on 'csv'" in lines[0] and lines[0].endswith("split=temporal")
    summary = json.loads((tmp_path / "loo" / "summary.json").read_text())
    assert summary["split"]["warnings"] == [lines[0].removeprefix("warning: ")]
    r = _evaluate(tmp_path, csv, "temporal", "split=temporal")
    assert r.returncode == 0, r.stderr
    assert "warning:" not in r.stderr and "test/ndcg@10" in r.stdout


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIGS / "experiment").glob("*_temporal.yaml")))
def test_temporal_presets_pair_a_base_preset(preset):
    """The warning names ``<experiment>_temporal``: each such preset is its base with
    the temporal split, and the data it reads carries time (not the ordinal seqtxt)."""
    base = preset.removesuffix("_temporal")
    assert (CONFIGS / "experiment" / f"{base}.yaml").is_file()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", [f"experiment={preset}"])
        base_cfg = compose("train", [f"experiment={base}"])
    assert cfg.split._target_ == "recsys.data.splits.TemporalSplit"
    assert cfg.data.loader._target_ != "recsys.data.loaders.SeqTxtLoader"
    assert cfg.net._target_ == base_cfg.net._target_ and cfg.trainer == base_cfg.trainer


def test_new_presets_exist():
    names = {p.stem for p in (CONFIGS / "experiment").glob("*_temporal.yaml")}
    assert {"sasrec_beauty_temporal", "sasrec_toys_temporal", "two_tower_ml100k_temporal"} <= names
