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
`recsys <command> --help` describes a command and its options. A config mistake
(unknown key or preset, wrong type, out of range, missing value) stops before
anything runs: one `error:` line on stderr, exit code 2.
"""

#: what each command does (first paragraph of ``recsys <command> --help``)
HELP: dict[tuple[str, ...], str] = {
    ("ope", "bench"): "Re-samples the synthetic world's logged impressions n_seeds times and reports bias, "
                      "RMSE and interval coverage of every off-policy estimator against the exact true value.",
    ("ope", "align"): "Trains model variants on the synthetic world and compares offline NDCG, the OPE estimates "
                      "(DR, SNIPS) and the true online value of each, to see whether offline metrics rank them "
                      "like the online truth.",
    ("ope", "regret"): "Runs bandit policies (epsilon-greedy, LinUCB, Thompson sampling) online in the synthetic "
                       "world and reports their cumulative regret against the oracle and static policies.",
    ("ope",): "Off-policy evaluation: estimates the value of `policy` on a log of impressions (the synthetic "
              "world's, or logs=<file>) with DM, IPS, SNIPS, DR, SNDR and Switch-DR, with bootstrap intervals "
              "and support / effective-sample-size diagnostics.",
    ("data", "stats"): "Loads a dataset preset (data=<preset>), prepares and caches it, and prints its statistics "
                       "(users, items, interactions, density, sequence lengths) as JSON. Writes no run directory.",
    ("data", "erase"): "Erases one user (user_id, passed on exactly as typed) from an event store, rebuilds the "
                       "derived features and online state from what remains, and checks that nothing of the user "
                       "is left anywhere.",
    ("features", "bench"): "Measures batch and online feature throughput (events/s, read latency) against a "
                           "naive pandas baseline on a synthetic event stream.",
    ("features", "drift"): "Compares two feature snapshots (reference= vs current=) feature by feature with "
                           "PSI, KS and chi-square / Cramer's V, flags drift beyond the thresholds and plots it.",
    ("features", "skew"): "Checks training/serving skew: recomputes the logged serving features offline from "
                          "the event log and reports every mismatch per feature.",
    ("features", "build"): "Computes the behavioural feature snapshot of every entity as of a time (events= or "
                           "the synthetic world) plus the online feature state, with a manifest.",
    ("data", "validate"): "Reads a data file (path=, format=seqtxt|recbole|csv|parquet), validates every row and "
                          "prints a JSON summary; bad input gives one `path:line: what` error. Writes nothing.",
    ("evaluate",): "Fits a non-neural baseline (model=popularity|random|markov|itemknn|ease|bpr|sasrec_fit) on a "
                   "dataset split and scores it by exact full-catalogue ranking; writes summary.json to the run "
                   "directory.",
    ("train",): "Trains a neural model (SASRec, BERT4Rec, GRU4Rec or two-tower) with PyTorch Lightning from an "
                "experiment preset, with early stopping on validation NDCG@10, then evaluates the best checkpoint "
                "exactly on the test split; writes checkpoints, model/ and summary.json to the run directory.",
    ("demo",): "The main job end to end on built-in synthetic data: baselines and SASRec trained and evaluated "
               "exactly, a results table, off-policy evaluation, an ONNX ranker and query encoder, and a FAISS "
               "retrieval index.",
    ("ab", "analyze"): "Analyses an A/B test from a Parquet file of exposures and outcomes (one row per user): "
                       "sample-ratio-mismatch check, Welch / z-tests with lift and CUPED, MDE, mSPRT sequential "
                       "curves; writes report.md, plots and summary.json, plus an audit archive.",
    ("ab", "plan"): "Sample size per arm for an A/B test from the baseline rate (binary) or std (continuous) "
                    "metric and the minimum detectable effect `mde`.",
    ("ab", "simulate"): "Simulates an A/B experiment with known lifts on synthetic users and analyses it "
                        "(checks=true also verifies the analysis recovers the truth).",
    ("rank", "train"): "Trains a click-through ranker (DCN-v2 or MLP) on the synthetic world's impression log "
                       "with point-in-time behavioural features (or a ratings dataset), split by request time; "
                       "reports test AUC, log loss, calibration and slate NDCG.",
    ("export",): "Exports a trained run to an ONNX bundle with a manifest and a parity check against torch: a "
                 "`rank train` run gives a ranker, a `train` SASRec or two-tower run a query encoder plus item "
                 "table.",
    ("export", "bench"): "Single-thread CPU latency (p50/p99) and throughput of an exported bundle with "
                         "onnxruntime, against torch eager.",
    ("index", "build"): "Builds a FAISS index bundle (flat, ivf, ivfpq or hnsw) from a trained run's item "
                        "embeddings or an items Parquet file and measures its recall@10 against exact search.",
    ("index", "query"): "Queries an index bundle: top-k items for a user (user=, from the precomputed user "
                        "vectors) or items similar to an item (item=), or a file of users (users_file=); ids are "
                        "passed on exactly as typed.",
    ("index", "tune"): "Sweeps the query-time knobs of an index bundle (nprobe, efSearch, k_factor_rf) and "
                       "reports the recall@10 vs queries/s frontier.",
    ("index", "bench"): "Benchmarks approximate indexes against exact Flat search on clustered synthetic "
                        "embeddings (1M items by default): recall, build time and queries/s; writes summary.json.",
}


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


def command_help(words: tuple[str, ...], config_name: str) -> str:
    """``recsys <command> --help``: what it does, its usage line(s), its keys with
    defaults and its config groups with their options."""
    import textwrap

    from recsys.cli.config import config_entries, config_header

    name = " ".join(words)
    out = textwrap.wrap(f"recsys {name}: {HELP[words]}", width=100)
    header = config_header(config_name)
    usage = [ln for ln in header if ln.startswith("recsys ")]
    notes = [ln for ln in header if not ln.startswith("recsys ") and ln.strip()]
    if usage:
        out += ["", *(f"usage: {ln}" if i == 0 else f"       {ln}" for i, ln in enumerate(usage))]
    if notes:
        out += ["", *notes]
    groups, keys = config_entries(config_name)
    if keys:
        out += ["", "options (key=default):"]
        for key, default, comment in keys:
            left = f"  {key}" if key.endswith(".*") else f"  {key}={default}"
            out.append(f"{left:<34} {comment}".rstrip() if comment else left)
    if groups:
        out += ["", "groups (group=option):"]
        for group, default in groups:
            options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
            out.append(f"  {f'{group}={default}':<32} {'|'.join(options)}")
    out += ["", f"Any key of the composed config can be overridden (`recsys {name} --cfg job` prints it);",
            "-m runs one job per value of comma lists (model=a,b); hydra.run.dir=<dir> sets the run directory;",
            f"--hydra-help shows Hydra's own flags. Config: {config_dir() / (config_name + '.yaml')}"]
    return "\n".join(out)


def _check(words: tuple[str, ...], config_name: str, rest: list[str]) -> list[str] | None:
    """Help and config checks before the Hydra app starts. Returns the arguments to
    hand to Hydra (id overrides quoted), or None when the command is done (help).
    A config mistake exits here with one ``error:`` line and code 2."""
    from hydra._internal.utils import get_args_parser

    from recsys.cli.config import config_header
    from recsys.cli.validate import Checker, ConfigError, examples_from, quote_ids

    args = get_args_parser().parse_args(rest)
    if args.help:
        print(command_help(words, config_name))
        return None
    if (args.hydra_help or args.info or args.shell_completion or args.experimental_rerun
            or args.config_name or args.config_path or args.config_dir):
        return rest  # Hydra's own business
    overrides = list(args.overrides)
    try:
        quoted = quote_ids(overrides, args.multirun)
        Checker(config_dir(), config_name, " ".join(words), quoted, multirun=args.multirun,
                require_values=args.cfg is None, examples=examples_from(config_header(config_name))).run()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    changed = {a: b for a, b in zip(overrides, quoted) if a != b}
    return [changed.get(a, a) for a in rest]


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
    register_resolvers()
    if tuple(argv[: len(words)]) == words:
        rest = _check(words, config_name, argv[len(words):])
        if rest is None:
            return
    else:  # a DDP child process: the parent checked (and quoted) these overrides
        rest = argv
    import hydra

    # Lightning's DDP launcher re-runs ``sys.argv`` (plus hydra overrides) for the
    # other ranks: keep the real program in argv[0] and pass the command by env.
    os.environ[_COMMAND_ENV] = " ".join(words)
    sys.argv = [sys.argv[0], *rest]
    app = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    app(_guarded(_resolve(target)))()


if __name__ == "__main__":
    main()
