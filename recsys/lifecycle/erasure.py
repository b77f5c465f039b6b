"""Which registered model versions were trained on an erased user's data, and the
``retrain_due=true`` flag on them (``recsys data erase registry=<dir>``).

A version is the user's when, by its lineage (:mod:`recsys.lifecycle.lineage`):

* its ``data_fingerprint`` is the fingerprint of prepared data that held the user
  (a cached dataset the erasure deleted, or a given run that held the user);
* its source run (``source`` / ``run_dir``) is one of the given runs that held the user;
* or its registered artifact copy still holds one of the user's ids.

The registered copy is the registry's (immutable, owned by MLflow): it is never
rewritten here; the flag and the audit record say it must be retrained without
the user and retired. The audit record never names the user (the trail is
append-only): it names what matched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.features.erasure.targets import Trace, scan
from recsys.lifecycle.registry import RETRAIN_DUE_TAG, Registry, flag_retrain_due, retrain_due


def _same(a: Any, paths: set[Path]) -> bool:
    return bool(a) and Path(str(a)).resolve() in paths


def trained_on(reg: Registry, user_data: dict[str, Any], trace: Trace) -> list[dict[str, Any]]:
    """``{"model": "name/version", "matched_by": [...]}`` for every version trained on the user's data."""
    fps = set(user_data.get("data_fingerprints") or [])
    runs = {Path(r).resolve() for r in user_data.get("runs") or []}
    out = []
    for name in reg.names():
        for v in reg.versions(name):
            lin = v.lineage
            matched = []
            if lin.get("data_fingerprint") and lin["data_fingerprint"] in fps:
                matched.append("data_fingerprint")
            if _same(lin.get("source"), runs) or _same(lin.get("run_dir"), runs):
                matched.append("training run")
            if Path(v.path).exists() and scan([Path(v.path)], trace):
                matched.append("registered artifact holds the user")
            if matched:
                out.append({"model": f"{name}/{v.version}", "name": name, "version": v.version,
                            "matched_by": matched, "already_flagged": v.tags.get(RETRAIN_DUE_TAG) == "true"})
    return out


def flag_trained_on(directory: str | Path, user_data: dict[str, Any], trace: Trace, uri: str | None = None,
                    who: str | None = None) -> dict[str, Any]:
    """Flag every version trained on the user's data ``retrain_due=true`` (+ an audit
    record); returns the ``registry`` part of the erasure report."""
    reg = Registry(directory, uri)
    found = trained_on(reg, user_data, trace)
    for f in found:
        if not f["already_flagged"]:
            flag_retrain_due(reg, f["name"], f["version"], who=who,
                             why="data erasure: trained on data of an erased user",
                             details={"matched_by": f["matched_by"]})
    return {"path": str(directory), "status": "flagged" if found else "no trace",
            "retrain_due": [f["model"] for f in found], "matched": [{k: f[k] for k in ("model", "matched_by")}
                                                                     for f in found]}


def list_retrain_due(directory: str | Path, uri: str | None = None) -> list[str]:
    return retrain_due(Registry(directory, uri))
