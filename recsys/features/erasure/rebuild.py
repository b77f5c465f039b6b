"""Erasure from a ``recsys features build`` folder and an online state: rebuilt with
the build's own settings (its ``manifest.json``) from the original events minus
the user's, every other user's rows checked identical to the build's first."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.features import batch
from recsys.features.definitions import build_feature_set
from recsys.features.erasure.targets import Targets, Trace, scan
from recsys.features.erasure.transaction import Transaction
from recsys.features.events import check_events, scan_events
from recsys.features.identity import resolve_identities
from recsys.features.retention import apply_ttl
from recsys.utils.errors import DataError


def read_build_manifest(directory: Path, what: str) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        raise DataError(path, f"no such file ({what} must come from `recsys features build`, "
                              "whose manifest.json records how to rebuild it)")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg})", line=e.lineno) from None
    for key in ("feature_set", "as_of", "config"):
        if key not in m:
            raise DataError(path, f"no {key!r} (not a `recsys features build` manifest)")
    return m


def build_settings(manifest: dict[str, Any], items: str | None) -> dict[str, Any]:
    """How the build computed its features: recorded ``settings`` (newer builds) or
    inferred from the manifest (older ones: identity resolution ran iff it reported)."""
    s = dict(manifest.get("settings") or {})
    s.setdefault("resolve_identities", manifest.get("identity") is not None)
    s.setdefault("ttl", manifest.get("ttl"))
    s["as_of"] = float(manifest["as_of"])
    if items is not None:
        s["items"] = items
    s.setdefault("items", None)
    return s


def feature_set_of(manifest: dict[str, Any], where: Path) -> Any:
    fs = build_feature_set(manifest["config"])
    if fs.version != manifest["feature_set"]:
        raise DataError(where, f"the manifest's config gives feature set {fs.version}, it records "
                               f"{manifest['feature_set']}")
    return fs


def _consent_mask(ev: pl.DataFrame, recorded: dict[str, Any]) -> pl.Series:
    """Rows the build's consent list allows; refused when the list changed since the
    build (rebuilding with another list would change other users' rows)."""
    from recsys.features.consent import drop_without_consent, read_consent_list

    consent = read_consent_list(recorded["path"], default=bool(recorded["default"]))
    if consent.sha256 != recorded["sha256"]:
        raise DataError(recorded["path"], "the consent list changed since the features were built (sha256 "
                                          f"{recorded['sha256'][:12]}... recorded); rebuild them with "
                                          "`recsys features build consent=...` first")
    kept, _ = drop_without_consent(ev.with_row_index("__consent_row"), consent)
    return pl.Series(np.isin(np.arange(ev.height), kept["__consent_row"].to_numpy()))


def counted_events(events: pl.DataFrame, mask: np.ndarray, settings: dict[str, Any], label: str) -> pl.LazyFrame:
    """The events a build with ``settings`` counts, minus the erased ones (``mask``).

    Identities are resolved on the *original* events, as the build resolved them,
    then the user's events are dropped: every other event keeps the attribution
    it had in the build (removing the user's events cannot re-attribute them)."""
    ev = events
    if settings["resolve_identities"]:
        ev = resolve_identities(events)[0]
    ev = ev.filter(pl.Series(~mask))
    if settings.get("consent"):  # the build dropped users without consent: so does its rebuild
        ev = ev.filter(_consent_mask(ev, settings["consent"]))
    items = settings.get("items")
    if isinstance(items, str) and not Path(items).is_file():
        raise DataError(items, "no such file (the items= the features were built with; pass items=<path>)")
    lf = scan_events(ev, items=items, name=label)
    check_events(lf, label)
    return apply_ttl(lf, settings["as_of"], settings.get("ttl"))


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    keys = [c for c in ("user_id", "item_id", "category") if c in df.columns]
    return df.sort(keys) if keys else df


FLOAT_RTOL, FLOAT_ATOL = 1e-9, 1e-12  # a sum over fewer rows may differ in the last bits (summation order)


def _rows_differ(old: pl.DataFrame, new: pl.DataFrame) -> int:
    """Rows of ``old`` / ``new`` without an equal row in the other (0: same rows);
    float columns are equal within ``FLOAT_RTOL`` / ``FLOAT_ATOL`` when the key
    (non-float) columns line up row for row."""
    if old.columns != new.columns:
        return max(old.height, new.height, 1)
    if old.height == new.height and _sorted(old).equals(_sorted(new)):
        return 0
    floats = [c for c in old.columns if old.schema[c].is_float()]
    keys = [c for c in old.columns if c not in floats]
    if old.height == new.height and floats and keys:
        so, sn = old.sort(keys, maintain_order=True), new.sort(keys, maintain_order=True)
        if so.select(keys).equals(sn.select(keys)) and not so.select(keys).is_duplicated().any():
            bad = np.zeros(old.height, dtype=bool)
            for c in floats:
                a, b = so[c].to_numpy().astype(float), sn[c].to_numpy().astype(float)
                bad |= ~np.isclose(a, b, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True)
            return int(bad.sum())
    both = old.join(new, on=old.columns, how="semi", nulls_equal=True).height
    return old.height + new.height - 2 * both


def rebuild_features(fdir: Path, events: pl.DataFrame, mask: np.ndarray, links: dict[str, Any],
                     items: str | None, label: str) -> dict[str, Any]:
    """New feature frames of a build folder without the erased events, and a check
    that every other user's rows are exactly the build's."""
    manifest = read_build_manifest(fdir, "features_dir")
    fs = feature_set_of(manifest, fdir / "manifest.json")
    settings = build_settings(manifest, items)
    lf = counted_events(events, mask, settings, label)
    frames, _ = batch.snapshot_and_params(lf, fs, settings["as_of"], manifest.get("params"), label=label)
    exclude = set(links["affected_ids"]) | set(links["user_ids"])
    removed, changed_others, changed = {}, {}, False
    for entity, new in frames.items():
        path = fdir / f"{entity}.parquet"
        if not path.is_file():
            raise DataError(path, "missing (the manifest's features_dir is incomplete)")
        old = pl.read_parquet(path)
        if _rows_differ(old, new):
            changed = True
        if "user_id" in new.columns:
            keep = ~pl.col("user_id").is_in(sorted(exclude))
            removed[entity] = old.height - old.filter(keep).height
            n = _rows_differ(old.filter(keep), new.filter(keep))
            if n:
                changed_others[entity] = n
    if changed_others:
        raise DataError(fdir, f"rebuilding with the manifest's settings ({describe_settings(settings)}) would "
                              f"change other users' features ({changed_others} rows): the manifest does not say "
                              "how these features were built (pass items= if the build had it, or rebuild them "
                              "with `recsys features build`); nothing was changed")
    return {"frames": frames, "manifest": manifest, "settings": settings, "fs": fs, "lf": lf,
            "rows_removed": removed, "changed": changed}


def describe_settings(s: dict[str, Any]) -> str:
    return (f"as_of {s['as_of']:.0f}, ttl {s.get('ttl')}, identity resolution "
            f"{'on' if s['resolve_identities'] else 'off'}, items {s.get('items')}")


def replay_online(fs: Any, params: Any, lf: pl.LazyFrame, as_of: float) -> Any:
    """A fresh online store fed the events before ``as_of`` in time order (what the build does)."""
    from recsys.features.online import OnlineFeatures

    online = OnlineFeatures(fs, params)
    ordered = lf.filter(pl.col("timestamp") < as_of).sort("timestamp", maintain_order=True).collect()
    for s in range(0, ordered.height, 8192):
        online.update(ordered.slice(s, 8192))
    return online


def state_manifest(sdir: Path, features_manifest: Path | None) -> Path:
    beside = sdir.parent
    if (beside / "manifest.json").is_file():
        return beside
    if features_manifest is not None:
        return features_manifest
    raise DataError(sdir, "cannot tell how this online state was built (no `features build` manifest.json "
                          "beside it): pass features_dir=<the build folder>")



def stage_online(targets: Targets, events: pl.DataFrame, mask: np.ndarray, trace: Trace, rebuilt: Any,
                  n_events: int, label: str, tx: Transaction) -> dict[str, Any]:
    sdir = targets.online_state
    meta_path = sdir / "meta.json"
    if not meta_path.is_file():
        raise DataError(sdir, "not an online feature state folder (no meta.json)")
    hits = scan([sdir], trace)
    if not n_events and not hits:
        return {"path": str(sdir), "status": "no trace"}
    mdir = state_manifest(sdir, targets.features_dir)
    if rebuilt is not None and mdir == targets.features_dir:
        fs, lf, settings = rebuilt["fs"], rebuilt["lf"], rebuilt["settings"]
    else:
        manifest = read_build_manifest(mdir, "online_state")
        fs = feature_set_of(manifest, mdir / "manifest.json")
        settings = build_settings(manifest, targets.items)
        lf = counted_events(events, mask, settings, label)
    meta = json.loads(meta_path.read_text())
    if meta.get("feature_set") != fs.version:
        raise DataError(sdir, f"state built for feature set {meta.get('feature_set')}, the build manifest says "
                              f"{fs.version}")
    online = replay_online(fs, meta.get("params"), lf, settings["as_of"])
    staged = tx.new_dir(sdir)
    staged.rmdir()  # OnlineFeatures.save writes the folder atomically itself
    online.save(staged)
    return {"path": str(sdir), "status": "erased", "replayed_events": int(online.n_events)}
