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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recsys.cli.config import config_dir, register_resolvers

@dataclass(frozen=True)
class Command:
    """One entry of ``commands.yaml``."""

    words: tuple[str, ...]
    config: str
    target: str  # "module:function"
    usage: tuple[str, ...]
    help: str


def _load_commands() -> dict[tuple[str, ...], Command]:
    import yaml

    rows = yaml.safe_load((Path(__file__).with_name("commands.yaml")).read_text())
    return {tuple(r["words"].split()): Command(tuple(r["words"].split()), r["config"], r["target"],
                                               tuple(r["usage"]), r["help"]) for r in rows}


COMMANDS = _load_commands()

# Library chatter a person running a command should not see, by name: INFO lines of
# these loggers (Lightning's "GPU available", "💡 Tip", "Restoring states from the
# checkpoint", "`Trainer.fit` stopped"; faiss's missing SIMD builds; matplotlib's font
# cache) and these warning messages. Their warnings and errors still show.
QUIET_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.rank_zero", "lightning_fabric.utilities.distributed",
                 "faiss.loader", "matplotlib.font_manager")
QUIET_WARNINGS = ((r".*isinstance\(treespec, LeafSpec\)", FutureWarning),  # Lightning 2.6 on torch 2.13
                  # configs/hydra/launcher/submitit_*.yaml spell out every field of the plugin's
                  # schema of the same name, so they stay complete when Hydra stops merging the two
                  (r"\s*'hydra/launcher/submitit_(local|slurm)' is validated against ConfigStore schema", UserWarning))


def quiet_libraries() -> None:
    """Silence :data:`QUIET_LOGGERS` below WARNING and ignore :data:`QUIET_WARNINGS`
    (every command, DDP children included, goes through :func:`main`)."""
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def usage() -> str:
    width = max(len(" ".join(w)) for w in COMMANDS) + 2
    lines = [f"  {' '.join(c.words):<{width}}{u}" for c in COMMANDS.values() for u in c.usage]
    return "\n".join(["usage: recsys <command> [key=value ...] [-m] [--cfg job]", "", "commands:", *lines, "",
                      "Every argument after the command is a Hydra override (e.g. paths.data_root=/data,",
                      "hydra.run.dir=runs/x, -m for sweeps). Configs: " + str(config_dir()),
                      "`recsys <command> --help` describes a command and its options. A config mistake",
                      "(unknown key or preset, wrong type, out of range, missing value) stops before",
                      "anything runs: one `error:` line on stderr, exit code 2."])


def _resolve(target: str) -> Callable:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _guarded(fn: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and exit code 2."""

    def task(cfg):  # noqa: ANN001 - DictConfig, imported lazily
        from recsys.utils.errors import RecsysError

        quiet_libraries()  # again: a submitit job runs this in a process that never ran main()
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
    for words in sorted(COMMANDS, key=len, reverse=True):  # "ope bench" before "ope"
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
    out = textwrap.wrap(f"recsys {name}: {COMMANDS[words].help}", width=100)
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
    from recsys.cli.ids import IdQuotingError, quote_ids
    from recsys.cli.validate import Checker, ConfigError, examples_from

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
    except (ConfigError, IdQuotingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    changed = {a: b for a, b in zip(overrides, quoted) if a != b}
    return [changed.get(a, a) for a in rest]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    words = _match(argv)
    if words is None:
        print(f"error: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        sys.exit(2)
    config_name, target = COMMANDS[words].config, COMMANDS[words].target
    if words == ("serve",):
        # one decision per request thread: faiss (OpenMP) and numpy (OpenBLAS) would start a
        # thread team per calling thread and oversubscribe the cores (measured: recsys serve
        # bench failed at 100 requests/s with the defaults, passed 150/s with one thread);
        # set before numpy / faiss load, inherited by uvicorn workers. Override in the environment.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    quiet_libraries()
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
