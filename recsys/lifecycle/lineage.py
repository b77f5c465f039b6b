"""What a registered version records about where it came from, read from the
artifact itself (never typed by hand): a ``recsys train`` / ``rank train`` run's
``summary.json`` + verified ``model/`` folder, or an export / index bundle's verified
``manifest.json``.

:func:`read_lineage` returns one flat dict with the same keys for every kind::

    kind                 run | ranker | query_encoder | index
    source               the folder registered (absolute)
    data_fingerprint     sha256 of the prepared data the model was trained on
    git_commit           commit of the code that trained / exported it
    config               resolved config of the training run (runs; bundles: the run's, when readable)
    config_sha256        sha256 of that config (canonical JSON)
    weights_sha256       sha256 of weights.safetensors
    model_class          registered class (``recsys.models.sequential.SASRec``)
    embedding_version    ``<class>/<weights sha256[:16]>`` (runs with item vectors, encoders, indexes)
    feature_set_version  rankers: the feature set the model reads
    metrics              the run's val/* and test/* numbers (bundles: the test metrics they carry)
    timings, environment training time and host (runs)
    parity               bundles: the export's ONNX-vs-torch parity report
    run_dir              the training run a bundle was exported from
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys.artifacts.bundle import EXPORT_FORMAT, INDEX_FORMAT, MANIFEST_FILE, verify_bundle
from recsys.artifacts.errors import BundleError
from recsys.utils.errors import RecsysError
from recsys.utils.io import sha256_json

KINDS = ("run", "ranker", "query_encoder", "index")


class LineageError(RecsysError):
    """A folder that is neither a run nor a bundle, or whose lineage cannot be read."""


def _summary(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "summary.json"
    try:
        s = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise LineageError(f"{p}: unreadable run summary ({e})") from None
    if not isinstance(s, dict):
        raise LineageError(f"{p}: not a JSON object")
    return s


def _numbers(d: dict[str, Any], prefixes: tuple[str, ...] = ("val/", "test/")) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if k.startswith(prefixes) and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def _run_lineage(run_dir: Path) -> dict[str, Any]:
    from recsys.artifacts.models import ModelFolder

    s = _summary(run_dir)
    try:
        folder = ModelFolder.open(run_dir / "model")
    except BundleError as e:
        raise LineageError(f"{run_dir}: its model folder does not verify ({e})") from None
    cfg = s.get("config") or {}
    env = s.get("environment") or {}
    has_items = (run_dir / "embeddings").is_dir()
    feature_set = None
    if "features.json" in folder.manifest["files"]:
        feature_set = (folder.json("features.json") or {}).get("feature_set_version")
    return {"kind": "run", "command": s.get("command"), "model": s.get("model"),
            "data_fingerprint": (s.get("data") or {}).get("fingerprint"), "data": s.get("data"),
            "split": s.get("split"), "git_commit": env.get("git_commit"), "environment": env,
            "config": cfg, "config_sha256": sha256_json(cfg) if cfg else None,
            "weights_sha256": folder.meta["weights_sha256"], "model_class": folder.model_class,
            "embedding_version": folder.embedding_version if has_items else None,
            "feature_set_version": feature_set, "metrics": _numbers(s), "timings": s.get("timings") or {},
            "run_dir": str(run_dir)}


def _bundle_lineage(d: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    fmt = manifest.get("format")
    kind = manifest.get("kind") or ("index" if fmt == INDEX_FORMAT else "ranker")
    raw_model = manifest.get("model")
    model: dict[str, Any] = raw_model if isinstance(raw_model, dict) else {}
    run_dir = model.get("run_dir") or manifest.get("model_run")
    out: dict[str, Any] = {
        "kind": kind, "name": manifest.get("name"), "data_fingerprint": manifest.get("data_fingerprint"),
        "git_commit": manifest.get("git_commit"), "weights_sha256": model.get("weights_sha256"),
        "model_class": model.get("class") or (manifest.get("model") if isinstance(manifest.get("model"), str) else None),
        "embedding_version": manifest.get("embedding_version"),
        "feature_set_version": manifest.get("feature_set_version"),
        "metrics": _numbers(manifest.get("test_metrics") or {}), "parity": manifest.get("parity"),
        "run_dir": run_dir, "manifest_format": fmt,
        "environment": {"versions": manifest.get("versions")}, "timings": {},
    }
    if kind == "index":
        out["metrics"] = {k: float(v) for k, v in manifest.items() if k.startswith("recall@")}
        out["index_spec"] = manifest.get("index_spec")
    # the training run's config, timings and metrics when the run is still there (lineage through the bundle)
    if run_dir and (Path(run_dir) / "summary.json").is_file():
        try:
            s = _summary(Path(run_dir))
        except LineageError:
            s = {}
        cfg = s.get("config") or {}
        out.update(config=cfg, config_sha256=sha256_json(cfg) if cfg else None, timings=s.get("timings") or {},
                   run_metrics=_numbers(s), environment={**(s.get("environment") or {}), **out["environment"]})
        out["git_commit"] = out["git_commit"] or (s.get("environment") or {}).get("git_commit")
    else:
        out.update(config={}, config_sha256=None)
    return out


def read_lineage(source: str | Path) -> dict[str, Any]:
    """The lineage of a run directory or a bundle folder (verified first)."""
    d = Path(source).resolve()
    if not d.is_dir():
        raise LineageError(f"{source}: no such folder (expected a run directory or a bundle)")
    if (d / MANIFEST_FILE).is_file():
        try:
            manifest = verify_bundle(d, format=(EXPORT_FORMAT, INDEX_FORMAT))
        except BundleError as e:
            raise LineageError(f"{source}: not a verifiable export or index bundle ({e})") from None
        out = _bundle_lineage(d, manifest)
    elif (d / "summary.json").is_file() and (d / "model").is_dir():
        out = _run_lineage(d)
    else:
        raise LineageError(f"{source}: neither a run directory (summary.json + model/) nor a bundle (manifest.json)")
    out["source"] = str(d)
    return out
