"""``erase_user`` (all or nothing over every artifact given) and ``verify_erased``
(every remaining trace); see :mod:`recsys.features.erasure`."""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from recsys.features.erasure.logs import archive_dirs, stage_ab_archive, stage_decision_log, stage_identity
from recsys.features.erasure.rebuild import describe_settings, rebuild_features, stage_online
from recsys.features.erasure.runs import (bundle_dirs, cache_fingerprints, embedding_dirs, run_fingerprints, stage_cache,
                                         stage_embeddings, stage_index_bundle)
from recsys.features.erasure.targets import ARTIFACT_TYPES, Targets, Trace, scan, weight_files
from recsys.features.erasure.transaction import Transaction
from recsys.features.identity import identity_links
from recsys.features.store import read_parquet_frame
from recsys.utils.errors import DataError
from recsys.utils.io import write_json_atomic

RECEIPT_FORMAT = "recsys.erasure_receipt/1"
NOT_OURS = {
    "": "holds the user but is not a file this command rewrites: delete it or rebuild it without the user",
    "registry": "a registered model's artifact (owned by the MLflow registry, immutable): not changed here; "
                "the version is flagged retrain_due - retrain without the user, then retire it",
}


def _user_trace(user_id: str, events: pl.DataFrame, closure: dict[str, Any] | None = None
                ) -> tuple[np.ndarray, dict[str, Any], Trace]:
    """The user's events, links and trace: identity resolution over the events, plus
    the ids an identity link file links to the user (``closure``,
    :func:`~recsys.features.identity.link_closure`); events of any of those ids are the user's."""
    mask, links = identity_links(events, user_id)
    trace = Trace(set(links["user_ids"]) | {user_id}, set(links["device_ids"]))
    links["identity_file_shared"] = 0
    if closure is not None:
        trace.user_ids |= closure["user_ids"]
        trace.device_ids |= closure["device_ids"]
        trace.session_ids |= closure["session_ids"]
        links["identity_file_shared"] = closure["shared"]
        hit = pl.Series([False] * events.height)
        for cols, ids in ((("user_id", "raw_user_id"), trace.user_ids), (("device_id",), trace.device_ids),
                          (("session_id",), trace.session_ids)):
            for c in cols:
                if c in events.columns and ids:
                    hit = hit | events[c].cast(pl.String).is_in(sorted(ids)).fill_null(False)
        extra = hit.to_numpy().astype(bool) & ~mask
        if extra.any():
            mask = mask | extra
            new = events.filter(pl.Series(extra))
            affected = set(new["user_id"].cast(pl.String).drop_nulls().to_list())
            if "raw_user_id" in events.columns:
                affected |= set(new["raw_user_id"].cast(pl.String).drop_nulls().to_list())
            links["affected_ids"] = sorted(set(links["affected_ids"]) | affected)
            links["n_events"] = int(mask.sum())
            links["n_events_through_links"] += int(extra.sum())
    links["user_ids"] = sorted(trace.user_ids)
    links["device_ids"] = sorted(trace.device_ids)
    links["session_ids"] = sorted(trace.session_ids)
    return mask, links, trace


def _closure(user_id: str, targets: Targets) -> dict[str, Any] | None:
    from recsys.features.identity import link_closure, read_link_file

    return link_closure(read_link_file(targets.identity), user_id) if targets.identity is not None else None


def user_trace(user_id: str, targets: Targets, receipt: Path | None = None) -> Trace:
    """The ids of ``user_id`` in the given events and identity file (and, with
    ``receipt``, the digests of the ids an earlier erasure removed)."""
    targets.check_exist()
    events = read_parquet_frame(targets.events, allow_empty=True)
    if "user_id" not in events.columns:
        raise DataError(targets.events, "no user id column", column="user_id")
    trace = _user_trace(user_id, events, _closure(user_id, targets))[2]
    return trace.with_receipt(read_receipt(receipt)) if receipt is not None else trace


def _public_links(links: dict[str, Any]) -> dict[str, Any]:
    """Counts only: the report must not list the user's other ids."""
    return {"linked_user_ids": len(links["user_ids"]) - 1, "linked_device_ids": len(links["device_ids"]),
            "linked_session_ids": len(links.get("session_ids", [])),
            "shared_user_ids_kept": links["shared_user_ids"], "shared_device_ids_kept": links["shared_device_ids"],
            "shared_identity_components_kept": links.get("identity_file_shared", 0),
            "events": links["n_events"], "events_through_identity_links": links["n_events_through_links"],
            "events_through_shared_devices": links["n_events_through_shared_devices"],
            "identity_resolution": links["resolved_through_logins"]}


def erase_user(user_id: str, targets: Targets, receipt: Path | None = None) -> dict[str, Any]:
    """Erase ``user_id`` from every artifact in ``targets`` (all or nothing); see the module doc.
    ``receipt``: where to write salted digests of every erased id (what ``verify``
    needs once no file links those ids to the user any more)."""
    if not isinstance(user_id, str) or not user_id:
        raise DataError(None, f"user id must be a non-empty string, got {user_id!r}")
    targets.check_exist()
    label = str(targets.events)
    events = read_parquet_frame(targets.events, allow_empty=True)
    if "user_id" not in events.columns:
        raise DataError(targets.events, "no user id column", column="user_id")
    closure = _closure(user_id, targets)
    mask, links, trace = _user_trace(user_id, events, closure)
    n_events = int(mask.sum())
    others = [p for kind, paths in targets.given().items() if kind not in ("events", "identity") for p in paths]
    if not n_events and not scan(others, trace, json_ids=True) and not (closure is not None and closure["rows"].any()):
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
            fingerprints = cache_fingerprints(targets.cache_dir, trace)
            deleted = stage_cache(targets.cache_dir, trace, tx)
            handled += [targets.cache_dir / name for name in deleted]
            arts["cache"] = {"path": str(targets.cache_dir), "status": "erased" if deleted else "no trace",
                             "datasets_deleted": deleted, "data_fingerprints": fingerprints}

        if closure is not None and targets.identity is not None:
            n = stage_identity(targets.identity, closure["rows"], tx)
            if n:
                handled.append(targets.identity)
            arts["identity"] = {"path": str(targets.identity), "status": "erased" if n else "no trace",
                                "links_removed": n}

        for d in targets.decision_logs:
            r = stage_decision_log(d, trace, tx)
            if r:
                handled.append(d)
            arts.setdefault("decision_log", []).append({"path": str(d), "status": "erased" if r else "no trace",
                                                        "removed": r or {}})

        for root in targets.ab_archives:
            for d in archive_dirs(root):
                r = stage_ab_archive(d, trace, tx)
                if r:
                    handled.append(d)
                arts.setdefault("ab_archive", []).append({"path": str(d), "status": "erased" if r else "no trace",
                                                          "removed": r or {}})
            if not archive_dirs(root):
                arts.setdefault("ab_archive", []).append({"path": str(root), "status": "no trace", "removed": {}})

        # runs whose prepared data held the user (what the registry's lineage names)
        res["user_data"] = {"data_fingerprints": sorted(set(arts.get("cache", {}).get("data_fingerprints", []))
                                                        | set(run_fingerprints(targets.runs, trace))),
                            "runs": [str(r) for r in targets.runs if scan([r], trace)]}

        # what still holds the user outside everything staged: reported, never claimed erased
        staged = {new for _, new in tx.ops if new is not None}
        seen = {(h["path"], h["column"]) for h in res["not_erased"]}
        for kind, paths in targets.given().items():
            for h in scan(paths, trace, skip=set(handled) | staged, json_ids=kind == "ab_archive"):
                if (h["path"], h["column"]) not in seen:
                    seen.add((h["path"], h["column"]))
                    res["not_erased"].append({"artifact": kind, **h, "why": NOT_OURS.get(kind, NOT_OURS[""])})
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
    if receipt is not None:
        write_json_atomic(receipt, {"format": RECEIPT_FORMAT, "erased_at": time.time(),
                                    **trace.receipt(secrets.token_hex(16))})
        res["receipt"] = str(receipt)
    return _finish(res, targets)


def _finish(res: dict[str, Any], targets: Targets) -> dict[str, Any]:
    arts = res["artifacts"]

    def status(v: Any) -> list[str]:
        return [x["status"] for x in v] if isinstance(v, list) else [v["status"]]

    res["changed"] = [k for k in ARTIFACT_TYPES if k in arts and {"erased", "flagged"} & set(status(arts[k]))]
    res["checked_no_trace"] = [k for k in ARTIFACT_TYPES if k in arts and k not in res["changed"]]
    res["not_given"] = targets.not_given()
    res["complete"] = not res["not_given"] and not res["not_erased"]
    return res


def add_external(res: dict[str, Any], kind: str, part: dict[str, Any], not_erased: Sequence[dict[str, Any]] = ()
                 ) -> dict[str, Any]:
    """Merge the erasure of an artifact type this package does not rewrite itself
    (``state``: recsys.service.erase, ``registry``: recsys.lifecycle.erasure)."""
    res["artifacts"][kind] = part
    res["not_erased"] += list(not_erased)
    if part["status"] in ("erased", "flagged") and kind not in res["changed"]:
        res["changed"] = [k for k in ARTIFACT_TYPES if k in res["changed"] or k == kind]
    elif part["status"] != "erased" and kind not in res["checked_no_trace"]:
        res["checked_no_trace"] = [k for k in ARTIFACT_TYPES if k in res["checked_no_trace"] or k == kind]
    res["not_given"] = [k for k in res["not_given"] if k != kind]
    res["complete"] = not res["not_given"] and not res["not_erased"]
    return res


def add_traces(res: dict[str, Any], kind: str, hits: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge what ``verify`` found in an artifact type this package does not scan itself (``state``)."""
    res["traces"] += [{"artifact": kind, **h} for h in hits]
    res["checked"] = [k for k in ARTIFACT_TYPES if k in res["checked"] or k == kind]
    res["not_given"] = [k for k in res["not_given"] if k != kind]
    res["clean"] = not res["traces"] and not res["cannot_change"]
    return res


def read_receipt(path: Path) -> dict[str, Any]:
    """An erasure receipt (written by :func:`erase_user`), checked."""
    try:
        r = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable erasure receipt ({type(e).__name__}); expected the "
                              "erasure_receipt.json an erase wrote") from None
    if not isinstance(r, dict) or r.get("format") != RECEIPT_FORMAT or not isinstance(r.get("digests"), dict):
        raise DataError(path, f"not an erasure receipt (expected format {RECEIPT_FORMAT!r} with salt and digests)")
    return r


def verify_erased(user_id: str, targets: Targets, receipt: Path | None = None) -> dict[str, Any]:
    """Every remaining trace of ``user_id`` in the artifacts given: its id, the ids
    the given events and identity file still link to it, and (``receipt``) every id
    the erasure removed, found by its salted digest."""
    if not isinstance(user_id, str) or not user_id:
        raise DataError(None, f"user id must be a non-empty string, got {user_id!r}")
    targets.check_exist()
    events = read_parquet_frame(targets.events, allow_empty=True)
    _, links, trace = _user_trace(user_id, events, _closure(user_id, targets))
    if receipt is not None:
        trace = trace.with_receipt(read_receipt(receipt))
    found: dict[tuple[str, Any], dict[str, Any]] = {}
    for kind, paths in targets.given().items():
        for h in scan(paths, trace, json_ids=kind == "ab_archive"):
            found.setdefault((h["path"], h["column"]), {"artifact": kind, **h})
    traces = [h for h in found.values() if h["artifact"] != "registry"]  # nested roots: once
    cannot = [{**h, "why": NOT_OURS["registry"]} for h in found.values() if h["artifact"] == "registry"]
    for run in targets.runs:
        if any(Path(h["path"]).is_relative_to(run) for h in traces):
            traces += [{"path": str(w), "column": "<model weights>", "rows": None}
                       for w in weight_files(run)]
    return {"user_id": user_id, "identity": _public_links(links), "checked": list(targets.given()),
            "not_given": targets.not_given(), "traces": traces, "cannot_change": cannot,
            "clean": not traces and not cannot,
            "linked_ids_from": (["events"] + (["identity file"] if targets.identity else [])
                                + (["receipt"] if receipt is not None else []))}
