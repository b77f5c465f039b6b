"""``recsys lifecycle watch``: drift decision -> retrain -> challenger -> gates -> canary hand-off.

:func:`watch` is the whole loop; each step is a record of the registry's audit trail
(``drift_check``, ``retrain``, the registry's own ``register``, ``gates``,
``canary_handoff``), and its files go to ``out_dir``:

``decision.json``
    the drift decision with every window's evidence (:mod:`recsys.lifecycle.drift_watch`);
``retrain/``
    the retrain's run directory: ``recsys train`` run in a subprocess on the
    champion's resolved config (its lineage, i.e. the run's ``summary.json`` config)
    with the data window moved (``window``: dotted keys of that config, e.g.
    ``data.loader.path: events/2026-12.parquet`` or, for the synthetic world,
    ``data.seed: 7``); ``retrain_config.yaml`` is the config it ran;
``gates.json``
    the gates run on the challenger against the champion (not a promotion);
``canary.yaml``
    the serving fragment that puts the challenger in a canary arm
    (``serve.experiment`` of :mod:`recsys.service.experiment`), written only when no
    gate blocks.

``dry_run``: the decision only; nothing is written, nothing is recorded.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import yaml

from recsys.lifecycle.drift_watch import Decision, WatchRule, decide, split_windows
from recsys.lifecycle.gates import GateContext, refusal_line, run_gates
from recsys.lifecycle.registry import CHALLENGER, Registry, RegistryError
from recsys.utils.errors import DataError, RecsysError
from recsys.utils.io import write_json_atomic, write_text_atomic

#: serving bundle key of each registered kind (a ``run`` is served through its export)
BUNDLE_KEYS = {"ranker": "ranker", "query_encoder": "encoder", "index": "index"}


@dataclass
class Canary:
    """The canary arm the challenger gets (``serve.experiment``, docs/serving.md)."""

    traffic: float = 0.05
    weight: float = 1.0
    bundle_key: str | None = None      # serve.bundles key (default by kind; a run needs one: its export)
    guardrails: dict[str, Any] = field(default_factory=dict)


def _read(path: str | Path, what: str) -> Any:
    import polars as pl

    p = Path(path)
    if not p.exists():
        raise DataError(p, f"{what} not found (expected a Parquet file or folder)")
    try:
        return pl.read_parquet(p / "*.parquet" if p.is_dir() else p)
    except Exception as e:  # noqa: BLE001 - polars raises several types for a bad file
        raise DataError(p, f"unreadable {what} Parquet ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def drift_decision(reference: str | Path, current: str | Path, rule: WatchRule, *, time_column: str = "timestamp",
                   window_s: float | None = None, n_windows: int | None = None) -> Decision:
    """Read the reference and current Parquet, cut the current rows into windows and decide."""
    ref = _read(reference, "reference")
    cur = _read(current, "current")
    return decide(ref, split_windows(cur, time_column, window_s, n_windows), rule)


def _set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node.get(p), dict):
            raise RecsysError(f"window.{key}: the champion's config has no {'.'.join(parts[: i + 1])!r} section")
        node = node[p]
    if parts[-1] not in node:
        raise RecsysError(f"window.{key}: the champion's config has no key {key!r} "
                          f"(in {'.'.join(parts[:-1]) or 'the root'}: {', '.join(sorted(node))})")
    node[parts[-1]] = value


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{data: {seed: 1}}`` and ``{"data.seed": 1}`` -> ``{"data.seed": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def retrain_config(champion_config: Mapping[str, Any], window: Mapping[str, Any],
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The champion's resolved config with the data window moved (``window``) and
    ``overrides`` applied (dotted keys that must exist), written back to run anywhere."""
    if not champion_config:
        raise RecsysError("the champion's lineage has no resolved config (register a `recsys train` run)")
    if not window:
        raise RecsysError("window= is required: the dotted config keys that move the data window "
                          "(e.g. window.data.loader.path=<new events> or window.data.seed=<n>)")
    cfg = copy.deepcopy(dict(champion_config))
    for k, v in {**_flatten(window), **_flatten(overrides or {})}.items():
        _set_dotted(cfg, str(k), v)
    cfg.setdefault("paths", {})["output_dir"] = "${hydra:runtime.output_dir}"
    cfg.pop("hydra", None)
    return cfg


def launch_retrain(config: Mapping[str, Any], run_dir: Path, timeout_s: float = 3600.0) -> tuple[Path, float]:
    """Run ``recsys train`` on ``config`` in a subprocess, into ``run_dir``; returns the run
    directory and the wall time. A failed run raises with the tail of its stderr."""
    cfg_dir = run_dir.parent / f".{run_dir.name}.config"
    write_text_atomic(cfg_dir / "retrain_config.yaml", yaml.safe_dump(dict(config), sort_keys=False))
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "recsys", "train", "--config-path", str(cfg_dir.resolve()),
           "--config-name", "retrain_config", f"hydra.run.dir={run_dir.resolve()}"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RecsysError(f"retrain: `recsys train` did not finish within {timeout_s:g} s") from None
    wall = time.perf_counter() - t0
    if r.returncode != 0 or not (run_dir / "summary.json").is_file():
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RecsysError(f"retrain: `recsys train` failed with exit code {r.returncode}: {tail}")
    (run_dir / "retrain_config.yaml").write_text((cfg_dir / "retrain_config.yaml").read_text())
    return run_dir, wall


def canary_fragment(name: str, version: str, kind: str, artifact: str, canary: Canary,
                    champion_version: str | None) -> dict[str, Any]:
    """The ``serve.experiment`` fragment that puts ``name`` v``version`` in a canary arm."""
    key = canary.bundle_key or BUNDLE_KEYS.get(kind)
    if key is None:
        raise RecsysError(f"canary.bundle_key is required for a {kind} (e.g. ranker or encoder: the serve.bundles "
                          f"key its export replaces)")
    if key not in ("encoder", "ranker", "index", "catalogue", "users", "events"):
        raise RecsysError(f"canary.bundle_key={key!r}: expected a serve.bundles key (encoder, ranker, index, ...)")
    arm = f"{name}_v{version}"
    exp: dict[str, Any] = {"name": f"{name}-v{version}-canary", "salt": f"{name}-v{version}-canary",
                           "traffic": float(canary.traffic),
                           "arms": {"champion": {"weight": 1.0},
                                    arm: {"weight": float(canary.weight), "bundles": {key: artifact}}}}
    if canary.guardrails:
        exp["guardrails"] = dict(canary.guardrails)
    return {"serve": {"experiment": exp},
            "recsys": {"model": name, "challenger_version": version, "champion_version": champion_version,
                       "arm": arm, "bundle_key": key, "registry_ref": f"registry:{name}@{CHALLENGER}",
                       "needs_export": kind == "run"}}


def watch(reg: Registry, name: str, *, reference: str | Path, current: str | Path, rule: WatchRule,
          out_dir: str | Path, time_column: str = "timestamp", window_s: float | None = None,
          n_windows: int | None = None, window: Mapping[str, Any] | None = None,
          overrides: Mapping[str, Any] | None = None, gates: Mapping[str, Mapping[str, Any]] | None = None,
          canary: Canary | None = None, dry_run: bool = False, who: str | None = None,
          retrain_timeout_s: float = 3600.0) -> dict[str, Any]:
    """The watch loop for the champion of ``name`` (see the module docstring). Returns a summary."""
    champ = reg.champion(name)
    if champ is None:
        raise RegistryError(f"{name}: no champion to watch (promote a version first)")
    if champ.kind != "run" and not champ.lineage.get("config"):
        raise RegistryError(f"{name} v{champ.version}: a {champ.kind} without its training run's config "
                            "cannot be retrained")
    decision = drift_decision(reference, current, rule, time_column=time_column, window_s=window_s,
                              n_windows=n_windows)
    out: dict[str, Any] = {"model": name, "champion": champ.version, "trigger": decision.trigger,
                           "reason": decision.reason, "trigger_window": decision.trigger_window,
                           "flagged": decision.flagged, "dry_run": dry_run}
    if dry_run:
        return out
    if decision.trigger:  # check the retrain config before recording anything
        cfg = retrain_config(champ.lineage.get("config") or {}, window or {}, overrides)
    out_path = Path(out_dir)
    write_json_atomic(out_path / "decision.json", {"model": name, "champion": champ.version, "reference": str(reference),
                                                   "current": str(current), **decision.as_dict()})
    reg._record("drift_check", name, champ.version, who, decision.reason,
                outcome="retrain" if decision.trigger else "no_retrain",
                details={"decision": str(out_path / "decision.json"), "flagged": decision.flagged,
                         "trigger_window": decision.trigger_window})
    if not decision.trigger:
        return out
    run_dir = out_path / "retrain"
    reg._record("retrain", name, champ.version, who, f"launched: {decision.reason}", outcome="launched",
                details={"run_dir": str(run_dir), "window": dict(window or {})})
    try:
        _, wall = launch_retrain(cfg, run_dir, retrain_timeout_s)
    except RecsysError as e:
        reg._record("retrain", name, champ.version, who, str(e), outcome="failed", details={"run_dir": str(run_dir)})
        raise
    reg._record("retrain", name, champ.version, who, f"finished in {wall:.1f} s", outcome="ok",
                details={"run_dir": str(run_dir), "wall_s": wall})
    v = reg.register(run_dir, name, who=who, why=f"retrain on drift of v{champ.version}: {decision.reason}",
                     alias=CHALLENGER)
    results = run_gates(gates or {}, v.candidate(), GateContext(champion=champ.candidate()))
    blocked = any(r.blocks for r in results)
    gate_ev = {"time": datetime.now(timezone.utc).isoformat(), "name": name, "version": v.version,
               "champion": champ.version, "outcome": "refused" if blocked else "passed",
               "purpose": "canary hand-off (not a promotion)", "gates": [r.as_dict() for r in results]}
    write_json_atomic(out_path / "gates.json", gate_ev)
    slot = Path(v.tags["recsys.lineage"]).parent
    write_json_atomic(slot / "gates" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-watch.json", gate_ev)
    reg.client.set_model_version_tag(name, v.version, "recsys.gates", json.dumps({r.gate: r.status for r in results}))
    line = refusal_line(name, v.version, results) if blocked else f"gates passed for {name} v{v.version}"
    reg._record("gates", name, v.version, who, line, outcome="refused" if blocked else "passed",
                details={"evidence": str(out_path / "gates.json"), "gates": gate_ev["gates"]})
    moved = v.lineage.get("data_fingerprint") != champ.lineage.get("data_fingerprint")
    out.update(challenger=v.version, run_dir=str(run_dir), retrain_wall_s=wall, data_moved=moved,
               gates={r.gate: r.status for r in results}, gates_blocked=blocked)
    if blocked:
        out["canary"] = None
        out["refusal"] = line
        return out
    frag = canary_fragment(name, v.version, v.kind, v.path, canary or Canary(), champ.version)
    write_text_atomic(out_path / "canary.yaml", yaml.safe_dump(frag, sort_keys=False))
    reg._record("canary_handoff", name, v.version, who, f"challenger v{v.version} to a canary arm "
                f"({frag['serve']['experiment']['traffic']:.0%} of traffic)",
                details={"fragment": str(out_path / "canary.yaml"), "arm": frag["recsys"]["arm"]})
    out["canary"] = str(out_path / "canary.yaml")
    return out
