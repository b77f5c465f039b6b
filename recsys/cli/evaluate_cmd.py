"""``recsys evaluate``: fit one model, evaluate it with exact full ranking."""
from __future__ import annotations

import time

from hydra.utils import instantiate
from omegaconf import DictConfig

from recsys.cli.common import data_lineage, format_table, load_data, split_data, write_summary
from recsys.utils.seed import seed_everything


def evaluate(cfg: DictConfig) -> dict:
    from recsys.training.baselines import evaluate_split

    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    data, prep_s = load_data(cfg)
    split = split_data(cfg, data)
    model = instantiate(cfg.model)
    result = evaluate_split(model, data, split, instantiate(cfg.evaluation))
    timings = {"prepare_s": prep_s, **result.pop("timings"), "total_s": time.perf_counter() - t0}
    model_name = type(model).__name__
    cols = [f"test/{m}" for m in ("hr@10", "ndcg@10", "recall@20", "ndcg@20", "mrr")]
    print(format_table({model_name: result}, cols))
    if "fairness" in result:
        from recsys.evaluation.fairness_report import format_fairness

        print(format_fairness(result["fairness"], cfg.evaluation.fairness.get("table_metric")))
    path = write_summary(cfg, {"command": "evaluate", "model": model_name, **result,
                               "data": data_lineage(data), "split": split.info, "timings": timings})
    print(f"summary: {path}")
    return result
