"""``recsys <command> [hydra overrides...]``: one console script, one Hydra app
per subcommand over the shared ``configs/`` tree.

Imports are lazy: ``recsys data stats`` and ``recsys data validate`` never import
torch or Lightning.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable

from recsys.cli.config import config_dir, register_resolvers

#: command words -> (root config name, "module:function")
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("ope", "bench"): ("ope_bench", "recsys.cli.ope_cmd:bench"),  # multi-word commands before ("ope",)
    ("ope", "align"): ("ope_align", "recsys.cli.ope_cmd:align"),
    ("ope", "regret"): ("ope_regret", "recsys.cli.ope_cmd:regret"),
    ("ope",): ("ope", "recsys.cli.ope_cmd:ope"),
    ("data", "stats"): ("data_stats", "recsys.cli.data_cmd:stats"),
    ("data", "erase"): ("data_erase", "recsys.cli.features_cmd:erase"),
    ("features", "bench"): ("features_bench", "recsys.cli.features_cmd:bench"),
    ("features", "drift"): ("features_drift", "recsys.cli.features_cmd:drift"),
    ("features", "skew"): ("features_skew", "recsys.cli.features_cmd:skew"),
    ("features", "build"): ("features_build", "recsys.cli.features_cmd:build"),
    ("data", "validate"): ("data_validate", "recsys.cli.data_cmd:validate"),
    ("evaluate",): ("evaluate", "recsys.cli.evaluate_cmd:evaluate"),
    ("train",): ("train", "recsys.cli.train_cmd:train"),
    ("demo",): ("demo", "recsys.cli.demo_cmd:demo"),
    ("ab", "analyze"): ("ab_analyze", "recsys.cli.ab_cmd:analyze"),
    ("ab", "plan"): ("ab_plan", "recsys.cli.ab_cmd:plan"),
    ("ab", "simulate"): ("ab_simulate", "recsys.cli.ab_cmd:simulate"),
    ("rank", "train"): ("rank_train", "recsys.cli.rank_cmd:train"),
    ("export", "bench"): ("export_bench", "recsys.cli.export_cmd:bench"),  # before ("export",)
    ("export",): ("export", "recsys.cli.export_cmd:export"),
    ("index", "build"): ("index_build", "recsys.cli.index_cmd:build"),
    ("index", "query"): ("index_query", "recsys.cli.index_cmd:query"),
    ("index", "tune"): ("index_tune", "recsys.cli.index_cmd:tune"),
    ("index", "bench"): ("index_bench", "recsys.cli.index_cmd:bench"),
}

USAGE = """usage: recsys <command> [key=value ...] [-m] [--cfg job]

commands:
  data stats     data=<preset>                         dataset statistics as JSON
  data validate  path=<file> format=<seqtxt|recbole|csv|parquet>
  data erase     user_id=<id> events=<parquet> [features_dir=<dir> online_state=<dir>]  erase a user everywhere
  features build [events=<parquet> items=<parquet> as_of=<t> ttl=90d]   behavioural features + online state
  features bench [n_events=10000000]            batch / online throughput vs a pandas baseline
  features drift reference=<parquet> current=<parquet>   PSI / KS / chi-square per feature, plots
  features skew  logged=<parquet> events=<parquet> [entity=user params=<manifest.json>]
  evaluate       model=<popularity|random|markov|itemknn|ease|bpr|sasrec_fit> data=<preset> split=<loo|temporal>
  train          experiment=<sasrec_beauty|...> [net=... loss=... trainer=cpu|gpu|ddp|ddp_cpu]
  ope            policy=<markov|popularity|...|linucb|linear_ts|bernoulli_ts> [logs=<file>]  off-policy evaluation
  ope bench      100-seed study of the OPE estimators on the synthetic world
  ope regret     bandits learning online in the synthetic world: cumulative regret vs oracle
  ope align      offline NDCG vs OPE estimate vs true online value, per model variant
  demo           synthetic data -> baselines + SASRec -> exact evaluation -> table -> OPE table
  ab analyze     path=<parquet> [experiment.salt=... columns.timestamp=...]   A/B report + audit archive
  ab plan        baseline_rate=<p>|std=<sd> mde=<m> [relative=false arms=3]   sample size per arm
  ab simulate    [simulation.lifts.treatment=0.05 world=... checks=true]      synthetic experiment (+ checks)
  rank train     [ranker=dcn|dcn_parallel|mlp data.loader.n_requests=...]    CTR ranker, test AUC vs Bayes AUC
  rank train     data=ml100k                  ratings ranker (rating >= 4 vs lower + sampled unrated)
  export         run=<rank train run dir> name=<bundle>       ONNX bundle + manifest + parity check
  export         run=<train run dir (SASRec)> name=<bundle>   query_encoder.onnx + item table + top-10 parity
  export bench   bundle=<name|path>           single-thread latency p50/p99, ORT vs torch eager
  index build    source=<run dir|items parquet> name=<bundle> [index=flat|ivf|ivfpq|hnsw]   FAISS bundle + recall@10
  index query    bundle=<name|path> user=<id>|item=<id>|users_file=<parquet> [k=10 exclude_seen=true category=c nprobe=.. efSearch=..]
  index tune     bundle=<name|path>           sweep nprobe/efSearch: recall@10 vs queries/s frontier
  index bench    [bench.n_items=1000000]      approximate vs exact on 1M clustered items; summary.json

Every argument after the command is a Hydra override (e.g. paths.data_root=/data,
hydra.run.dir=runs/x, -m for sweeps). Configs: {configs}
"""


def _resolve(target: str) -> Callable:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _guarded(fn: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and exit code 2."""

    def task(cfg):  # noqa: ANN001 - DictConfig, imported lazily
        from recsys.utils.errors import RecsysError

        try:
            return fn(cfg)
        except Exception as e:  # hydra's instantiate wraps errors: look down the chain
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, RecsysError):
                cause = cause.__cause__
            if cause is None:
                raise
            print(f"error: {cause}", file=sys.stderr)
            sys.exit(cause.exit_code)

    task.__name__ = fn.__name__
    task.__module__ = fn.__module__
    return task


_COMMAND_ENV = "RECSYS_COMMAND"


def _match(argv: list[str]) -> tuple[str, ...] | None:
    for words in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            return words
    # a DDP child process (Lightning sets LOCAL_RANK) gets only the overrides
    env = os.environ.get(_COMMAND_ENV)
    if env and "LOCAL_RANK" in os.environ and tuple(env.split()) in COMMANDS:
        return tuple(env.split())
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(configs=config_dir()))
        return
    words = _match(argv)
    if words is None:
        print(f"error: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(USAGE.format(configs=config_dir()), file=sys.stderr)
        sys.exit(2)
    config_name, target = COMMANDS[words]
    # faiss logs each missing SIMD build (avx512, avx2) at INFO under Hydra's root logger
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    rest = argv[len(words):] if tuple(argv[: len(words)]) == words else argv
    import hydra

    register_resolvers()
    # Lightning's DDP launcher re-runs ``sys.argv`` (plus hydra overrides) for the
    # other ranks: keep the real program in argv[0] and pass the command by env.
    os.environ[_COMMAND_ENV] = " ".join(words)
    sys.argv = [sys.argv[0], *rest]
    app = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    app(_guarded(_resolve(target)))()


if __name__ == "__main__":
    main()
