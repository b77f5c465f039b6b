"""``recsys features build``: identity resolution, TTL, a snapshot of every entity's
features (priors fitted on the snapshot) and the online state, written as one
folder: ``{user,item,user_item,user_category}.parquet``, ``manifest.json`` and
``online_state/``.

The manifest's ``settings`` (events, items, identity resolution, ttl, as_of, the
consent list) are
what :mod:`recsys.features.erasure` rebuilds these very features with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl

from recsys.features import batch
from recsys.features.consent import ConsentList, drop_without_consent
from recsys.features.definitions import FeatureSet
from recsys.features.events import check_events, scan_events
from recsys.features.identity import resolve_identities
from recsys.features.online import OnlineFeatures
from recsys.features.retention import apply_ttl
from recsys.utils.io import write_json_atomic
from recsys.utils.progress import progress


def build_features(events: str | pl.DataFrame, items: str | pl.DataFrame | None, fs: FeatureSet, out: Path, *,
                   label: str, config: Mapping[str, Any], as_of: float | None = None, ttl: str | None = None,
                   resolve: bool = True, online_state: bool = True, threads: int | None = None,
                   consent: ConsentList | None = None) -> dict[str, Any]:
    """Build the features folder ``out`` and return its manifest.

    Args:
        events (str | polars.DataFrame): a Parquet path or a frame of events.
        items (str | polars.DataFrame | None): item categories, joined when the
            events carry no ``category``.
        fs (FeatureSet): the feature set; ``config`` is its config, recorded.
        label (str): how the events are named in errors and in the manifest.
        as_of (float | None): snapshot time (default: the last event + 1 s).
        ttl (str | None): drop events older than this before ``as_of`` (e.g. ``90d``).
        resolve (bool): resolve identities when the log has logins and devices.
        online_state (bool): also replay the events into the online store and save it.
        threads (int | None): the snapshot's worker threads (None: every core).
        consent (ConsentList | None): drop the events of users without consent (and,
            after identity resolution, of every id linked to them) before anything.
    """
    lf = scan_events(events, items=items, name=label)
    identity = None
    frame = None
    if resolve and isinstance(events, (str, pl.DataFrame)):
        raw = pl.read_parquet(events) if isinstance(events, str) else events
        if "device_id" in raw.columns and (raw["event_type"] == "login").any():
            frame, identity = resolve_identities(raw)
            lf = scan_events(frame, items=items, name=label)
    consent_info = None
    if consent is not None:
        if frame is None:
            frame = lf.collect()
        frame, dropped = drop_without_consent(frame, consent)
        consent_info = {**consent.describe(), **dropped}
        lf = scan_events(frame, items=items, name=label)
    info = check_events(lf, label)
    as_of_given = as_of is not None
    as_of = float(as_of) if as_of_given else float(info["t_max"]) + 1.0
    lf = apply_ttl(lf, as_of, ttl)
    frames, params = batch.snapshot_and_params(lf, fs, as_of, "fit", label=label, threads=threads)
    files = batch.write_features(frames, out, threads=threads)
    # settings: everything `recsys data erase` needs to rebuild these very features
    settings = {"events": label, "items": str(Path(items).resolve()) if isinstance(items, str) else (
                    None if items is None else "<synthetic items>"),
                "resolve_identities": identity is not None, "ttl": ttl, "as_of": as_of,
                "as_of_given": as_of_given, "params": "fit", "consent": consent_info}
    manifest = {"feature_set": fs.version, "as_of": as_of, "ttl": ttl, "params": params,
                "events": label, "settings": settings,
                "rows": {e: f.height for e, f in frames.items()}, "files": files, "consent": consent_info,
                "definitions": fs.describe(), "identity": identity, "config": dict(config)}
    write_json_atomic(out / "manifest.json", manifest)
    if online_state:
        online = OnlineFeatures(fs, params)
        ordered = lf.filter(pl.col("timestamp") < as_of).sort("timestamp", maintain_order=True).collect()
        for s in progress(range(0, ordered.height, 8192), "features: online replay", total=-(-ordered.height // 8192)):
            online.update(ordered.slice(s, 8192))
        online.save(out / "online_state")
    return manifest
