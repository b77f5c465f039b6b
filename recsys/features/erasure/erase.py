"""``erase_user`` (all or nothing over every artifact given) and ``verify_erased``
(every remaining trace); see :mod:`recsys.features.erasure`."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.features.erasure.rebuild import describe_settings, rebuild_features, stage_online
from recsys.features.erasure.runs import bundle_dirs, embedding_dirs, stage_cache, stage_embeddings, stage_index_bundle
from recsys.features.erasure.targets import ARTIFACT_TYPES, Targets, Trace, scan, weight_files
from recsys.features.erasure.transaction import Transaction
from recsys.features.identity import identity_links
from recsys.features.store import read_parquet_frame
from recsys.utils.errors import DataError


def _user_trace(user_id: str, events: pl.DataFrame) -> tuple[np.ndarray, dict[str, Any], Trace]:
    mask, links = identity_links(events, user_id)
    return mask, links, Trace(set(links["user_ids"]) | {user_id}, set(links["device_ids"]))


def _public_links(links: dict[str, Any]) -> dict[str, Any]:
    """Counts only: the report must not list the user's other ids."""
    return {"linked_user_ids": len(links["user_ids"]) - 1, "linked_device_ids": len(links["device_ids"]),
            "shared_user_ids_kept": links["shared_user_ids"], "shared_device_ids_kept": links["shared_device_ids"],
            "events": links["n_events"], "events_through_identity_links": links["n_events_through_links"],
            "events_through_shared_devices": links["n_events_through_shared_devices"],
            "identity_resolution": links["resolved_through_logins"]}


def erase_user(user_id: str, targets: Targets) -> dict[str, Any]:
    """Erase ``user_id`` from every artifact in ``targets`` (all or nothing); see the module doc."""
    if not isinstance(user_id, str) or not user_id:
        raise DataError(None, f"user id must be a non-empty string, got {user_id!r}")
    targets.check_exist()
    label = str(targets.events)
    events = read_parquet_frame(targets.events, allow_empty=True)
    if "user_id" not in events.columns:
        raise DataError(targets.events, "no user id column", column="user_id")
    mask, links, trace = _user_trace(user_id, events)
    n_events = int(mask.sum())
    others = [p for kind, paths in targets.given().items() if kind != "events" for p in paths]
    if not n_events and not scan(others, trace):
        raise DataError(targets.events, f"unknown user id {user_id!r}: no events and no trace in the artifacts "
                                        "given (nothing erased)", column="user_id")
    res: dict[str, Any] = {"user_id": user_id, "identity": _public_links(links), "events_removed": n_events,
                           "artifacts": {}, "not_erased": []}
    arts = res["artifacts"]
    tx = Transaction()
    handled: list[Path] = []  # every path a new version (or a deletion) is staged for
    try:
        if n_events:
            events.filter(pl.Series(~mask)).write_parquet(tx.new_file(targets.events))
            handled.append(targets.events)
            arts["events"] = {"path": label, "status": "erased", "events_removed": n_events,
                              "events_removed_through_identity_links": links["n_events_through_links"],
                              "events_kept": events.height - n_events}
        else:
            arts["events"] = {"path": label, "status": "no trace", "events_removed": 0}

        rebuilt = None
        if targets.features_dir is not None:
            fdir = targets.features_dir
            rebuilt = rebuild_features(fdir, events, mask, links, targets.items, label)
            if rebuilt["changed"]:
                for entity, frame in rebuilt["frames"].items():
                    frame.write_parquet(tx.new_file(fdir / f"{entity}.parquet"), compression="lz4", statistics=False)
                    handled.append(fdir / f"{entity}.parquet")
                m = dict(rebuilt["manifest"])
                m.update(rows={e: f.height for e, f in rebuilt["frames"].items()},
                         erasures=int(m.get("erasures", 0)) + 1, last_erasure=time.time())
                tx.new_file(fdir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True, default=str)
                                                               + "\n")
            arts["features_dir"] = {"path": str(fdir), "status": "erased" if rebuilt["changed"] else "no trace",
                                    "user_rows_removed": rebuilt["rows_removed"],
                                    "rebuilt_with": describe_settings(rebuilt["settings"]),
                                    "other_users_rows": "identical to the build's (checked)"}

        if targets.online_state is not None:
            arts["online_state"] = stage_online(targets, events, mask, trace, rebuilt, n_events, label, tx)
            if arts["online_state"]["status"] == "erased":
                handled.append(targets.online_state)

        for run in targets.runs:
            info: dict[str, Any] = {"path": str(run), "embeddings": {}, "index_bundles": {}}
            held = bool(scan([run], trace))
            for d in embedding_dirs(run):
                if r := stage_embeddings(d, trace, tx):
                    info["embeddings"][str(d)] = r
                    handled.append(d)
            for d in bundle_dirs(run):
                if r := stage_index_bundle(d, trace, tx):
                    info["index_bundles"][str(d)] = r
                    handled.append(d)
            if held:
                for w in weight_files(run):
                    res["not_erased"].append({"artifact": "run", "path": str(w), "column": None, "rows": None,
                                              "why": "model weights trained on the user's events (may hold a "
                                                     "per-user embedding row): retrain without the user"})
            info["status"] = "erased" if info["embeddings"] or info["index_bundles"] else "no trace"
            arts.setdefault("run", []).append(info)

        for d in targets.indexes:
            r = stage_index_bundle(d, trace, tx)
            if r:
                handled.append(d)
            arts.setdefault("index", []).append({"path": str(d), "status": "erased" if r else "no trace",
                                                 "removed": r or {}})

        if targets.cache_dir is not None:
            deleted = stage_cache(targets.cache_dir, trace, tx)
            handled += [targets.cache_dir / name for name in deleted]
            arts["cache"] = {"path": str(targets.cache_dir), "status": "erased" if deleted else "no trace",
                             "datasets_deleted": deleted}

        # what still holds the user outside everything staged: reported, never claimed erased
        staged = {new for _, new in tx.ops if new is not None}
        seen = {(h["path"], h["column"]) for h in res["not_erased"]}
        for kind, paths in targets.given().items():
            for h in scan(paths, trace, skip=set(handled) | staged):
                if (h["path"], h["column"]) not in seen:
                    seen.add((h["path"], h["column"]))
                    res["not_erased"].append({"artifact": kind, **h, "why": "holds the user but is not a file "
                                              "this command rewrites: delete it or rebuild it without the user"})
    except BaseException:
        tx.abort()
        raise

    tx.commit()
    try:
        left = scan(handled, trace, skip=tx.backups)
        if left:
            raise DataError(left[0]["path"], f"user {user_id!r} still present after erasure "
                                             f"(column {left[0]['column']}); every artifact was restored")
    except BaseException:
        tx.rollback()
        raise
    tx.finish()
    return _finish(res, targets)


def _finish(res: dict[str, Any], targets: Targets) -> dict[str, Any]:
    arts = res["artifacts"]

    def status(v: Any) -> list[str]:
        return [x["status"] for x in v] if isinstance(v, list) else [v["status"]]

    res["changed"] = [k for k in ARTIFACT_TYPES if k in arts and "erased" in status(arts[k])]
    res["checked_no_trace"] = [k for k in ARTIFACT_TYPES if k in arts and k not in res["changed"]]
    res["not_given"] = targets.not_given()
    res["complete"] = not res["not_given"] and not res["not_erased"]
    return res


def verify_erased(user_id: str, targets: Targets) -> dict[str, Any]:
    """Every remaining trace of ``user_id`` (its id and the ids the given events
    still link to it) in the artifacts given."""
    if not isinstance(user_id, str) or not user_id:
        raise DataError(None, f"user id must be a non-empty string, got {user_id!r}")
    targets.check_exist()
    events = read_parquet_frame(targets.events, allow_empty=True)
    _, links, trace = _user_trace(user_id, events)
    roots = [p for paths in targets.given().values() for p in paths]
    traces = list({(h["path"], h["column"]): h for h in scan(roots, trace)}.values())  # nested roots: once
    for run in targets.runs:
        if any(Path(h["path"]).is_relative_to(run) for h in traces):
            traces += [{"path": str(w), "column": "<model weights>", "rows": None}
                       for w in weight_files(run)]
    return {"user_id": user_id, "identity": _public_links(links), "checked": list(targets.given()),
            "not_given": targets.not_given(), "traces": traces, "clean": not traces}
