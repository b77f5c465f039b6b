"""``recsys registry list|show|register|promote|approve|rollback|retire|card``: thin
commands over :mod:`recsys.lifecycle` (MLflow model registry, gates, audit trail,
model cards). No torch import except in ``promote`` (the offline gate scores the
models) and ``card`` (matplotlib)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.utils.errors import RecsysError


def _registry(cfg: DictConfig) -> Any:
    """``cfg.registry`` (``configs/registry/<local|server>.yaml``): a
    :class:`~recsys.lifecycle.registry.Registry`; MLflow is opened on first use."""
    from hydra.utils import instantiate

    return instantiate(cfg.registry)


def _need(cfg: DictConfig, *keys: str) -> None:
    missing = [k for k in keys if cfg.get(k) in (None, "")]
    if missing:
        raise RecsysError(f"recsys registry: {', '.join(f'{k}=' for k in missing)} required")


def run_evaluator() -> Any:
    """The offline gate's per-user metrics: the data split of the candidate's training run
    is rebuilt from its resolved config (:func:`recsys.cli.runs.run_split`, once per run)
    and both models are ranked on its test users."""
    from recsys.cli.runs import run_split
    from recsys.lifecycle.offline import model_dir_of, per_user_metric

    cache: dict[str, tuple[int, Any]] = {}

    def per_user(model: Any, on: Any, metric: str) -> Any:
        run_dir = on.path if on.kind == "run" else on.lineage.get("run_dir")
        if not run_dir or not (Path(str(run_dir)) / "summary.json").is_file():
            raise RecsysError(f"{on.name} v{on.version}: its training run (summary.json) is not available")
        if str(run_dir) not in cache:
            _, data, split = run_split(Path(str(run_dir)))
            cache[str(run_dir)] = (data.n_items, split.test)
        n_items, test = cache[str(run_dir)]
        return per_user_metric(model_dir_of(model.kind, model.path, model.lineage), test, n_items, metric)

    return per_user


def _row(v: Any) -> dict[str, Any]:
    m = v.lineage.get("metrics") or {}
    key = next((k for k in ("test/ndcg@10", "test/auc", "recall@10") if k in m), None)
    return {"name": v.name, "version": v.version, "kind": v.kind, "status": v.status,
            "aliases": ",".join(v.aliases), "created": v.created[:19], "metric": f"{key}={m[key]:.4f}" if key else "",
            "data": str(v.lineage.get("data_fingerprint") or "")[:12],
            "retrain_due": "yes" if v.tags.get("retrain_due") == "true" else ""}  # set by `data erase`


def list_(cfg: DictConfig) -> list[dict[str, Any]]:
    reg = _registry(cfg)
    names = [str(cfg.name)] if cfg.get("name") else reg.names()
    rows = [_row(v) for n in names for v in reg.versions(n)]
    if cfg.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        cols = ["name", "version", "kind", "status", "aliases", "created", "metric", "data", "retrain_due"]
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        print("  ".join(f"{c:<{width[c]}}" for c in cols))
        for r in rows:
            print("  ".join(f"{str(r[c]):<{width[c]}}" for c in cols))
    else:
        print(f"no registered models in {reg.uri}")
    return rows


def show(cfg: DictConfig) -> dict[str, Any]:
    _need(cfg, "name")
    reg = _registry(cfg)
    v = reg.get(str(cfg.name), str(cfg.version or "champion"))
    out = {**v.summary(), "tags": v.tags, "metrics": v.lineage.get("metrics"),
           "card": v.lineage.get("card"), "serving_link": str(reg.serving_link(v.name))}
    print(json.dumps(out, indent=2, default=str))
    return out


def register(cfg: DictConfig) -> dict[str, Any]:
    _need(cfg, "name", "source")
    reg = _registry(cfg)
    v = reg.register(str(cfg.source), str(cfg.name), who=cfg.who, why=str(cfg.why), sensitive=bool(cfg.sensitive),
                     alias=cfg.alias, intended_use=str(cfg.intended_use), limits=str(cfg.limits),
                     assumptions=str(cfg.assumptions))
    print(f"registered {v.name} v{v.version} ({v.kind}; aliases: {', '.join(v.aliases) or 'none'}) "
          f"from {v.lineage.get('source')}")
    return v.summary()


def promote(cfg: DictConfig) -> dict[str, Any]:
    _need(cfg, "name", "version")
    reg = _registry(cfg)
    gates = OmegaConf.to_container(cfg.gates, resolve=True) or {}
    results = reg.promote(str(cfg.name), str(cfg.version), gates=gates, per_user=run_evaluator(), who=cfg.who,
                          why=str(cfg.why))
    for r in results:
        note = " (warning: no evidence, not a pass)" if r.status == "not_available" else ""
        print(f"  {r.gate:<20} {r.status:<14} {r.message}{note}")
    v = reg.get(str(cfg.name), "champion")
    print(f"promoted {v.name} v{v.version} to champion; serving link: {reg.serving_link(v.name)}")
    return {"champion": v.version, "gates": [r.as_dict() for r in results]}


def approve(cfg: DictConfig) -> dict[str, Any]:
    _need(cfg, "name", "version", "why")
    a = _registry(cfg).approve(str(cfg.name), str(cfg.version), who=cfg.who, why=str(cfg.why))
    print(f"approved {cfg.name} v{cfg.version} by {a['who']}")
    return a


def rollback(cfg: DictConfig) -> dict[str, Any]:
    _need(cfg, "name")
    reg = _registry(cfg)
    v = reg.rollback(str(cfg.name), who=cfg.who, why=str(cfg.why))
    print(f"rolled back {v.name}: champion is v{v.version} again; reload the service to serve it "
          f"(serving link: {reg.serving_link(v.name)})")
    return v.summary()


def retire(cfg: DictConfig) -> dict[str, Any]:
    _need(cfg, "name", "version")
    v = _registry(cfg).retire(str(cfg.name), str(cfg.version), who=cfg.who, why=str(cfg.why))
    print(f"retired {v.name} v{v.version} (artifact archived: {v.tags.get('recsys.archived')})")
    return v.summary()


def card(cfg: DictConfig) -> dict[str, Any]:
    from recsys.lifecycle.cards import write_card

    _need(cfg, "name")
    reg = _registry(cfg)
    v = reg.get(str(cfg.name), str(cfg.version or "champion"))
    out = Path(str(cfg.out)) if cfg.get("out") else reg.dir / "cards" / f"{v.name}-v{v.version}"
    res = write_card(reg, v.name, v.version, out)
    print(f"card: {res['markdown']}\ncard: {res['html']}", file=sys.stdout)
    return res
