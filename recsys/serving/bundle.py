"""What every export bundle shares at serving time (numpy + stdlib; onnxruntime when a session is opened).

A bundle folder holds ``manifest.json``, ``manifest.sha256`` (the sha256 of the
manifest's bytes, ``sha256sum`` format) and the files the manifest lists with
their sha256 and size. :func:`load_manifest` verifies all of it, so a modified
or truncated model, a modified manifest, or a missing file is refused with a
one-line :class:`BundleError`. (This is integrity checking, not signing: whoever
can rewrite every file can rewrite the checksums too.)

Versions a bundle can declare (top-level manifest keys):

* ``feature_set_version`` (rankers): the features the model was trained on;
* ``embedding_version`` (query encoders, retrieval indexes):
  ``"<model class>/<first 16 hex of the run's weights sha256>"``; query vectors
  and item vectors only make sense together when these are equal;
* ``compatible_embedding_versions`` (rankers): the retrieval embeddings the
  ranker was exported against (see :func:`check_pairing`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from recsys.artifacts.bundle import EXPORT_FORMAT, MANIFEST_SHA_FILE, read_manifest_verified, verify_bundle
from recsys.artifacts.errors import BundleError

MANIFEST_FORMAT = EXPORT_FORMAT
__all__ = ["BundleError", "MANIFEST_FORMAT", "MANIFEST_SHA_FILE", "RequestError", "check_pairing",
           "declared_embedding_version", "load_manifest", "open_session", "read_manifest_verified"]


class RequestError(ValueError):
    """A request does not match the bundle's declared inputs."""


def load_manifest(bundle_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The verified manifest of an export bundle (:func:`recsys.artifacts.bundle.verify_bundle`):
    its own checksum, its format, its ``kind`` (when given; bundles without a kind
    are rankers), the model file listed, and every listed file's size and sha256."""
    manifest = verify_bundle(bundle_dir, format=EXPORT_FORMAT, kind=kind)
    model = manifest.get("model")
    name = model.get("file") if isinstance(model, dict) else None
    if not isinstance(name, str) or name not in manifest["files"]:
        raise BundleError(f"{Path(bundle_dir) / 'manifest.json'}: names no model file among the files it lists")
    return manifest


def declared_embedding_version(other: Any) -> tuple[str, str]:
    """``(embedding_version, where)`` of a retrieval-side bundle given as a
    folder, a manifest dict or an object with a ``manifest`` attribute."""
    if isinstance(other, (str, Path)):
        manifest, where = read_manifest_verified(other), str(other)
    elif isinstance(other, Mapping):
        manifest, where = dict(other), "the given manifest"
    elif hasattr(other, "manifest"):
        manifest, where = other.manifest, str(getattr(other, "bundle_dir", type(other).__name__))
    else:
        raise BundleError(f"retrieval_bundle: expected a bundle folder, a manifest or a runtime, got {type(other).__name__}")
    version = manifest.get("embedding_version")
    if not version:
        raise BundleError(f"{where}: declares no embedding_version (cannot check it against the ranker)")
    return str(version), where


def check_pairing(ranker_manifest: Mapping[str, Any], ranker_dir: Any, retrieval: Any) -> str:
    """Refuse a ranker + retrieval pairing unless the retrieval side's
    ``embedding_version`` is one the ranker lists as compatible; returns it."""
    version, where = declared_embedding_version(retrieval)
    allowed = list(ranker_manifest.get("compatible_embedding_versions") or [])
    if version not in allowed:
        raise BundleError(f"{ranker_dir}: ranker is compatible with embedding versions {allowed or 'none declared'}, "
                          f"but {where} declares embedding_version {version!r}")
    return version


def open_session(bundle_dir: Path, manifest: Mapping[str, Any], intra_op_threads: int = 1,
                 providers: Any = None) -> Any:
    """An ONNX Runtime session on the bundle's model file: ``intra_op_threads``
    threads, sequential execution, the CUDA provider when available else the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(intra_op_threads), 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    available = ort.get_available_providers()
    wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    model = Path(bundle_dir) / manifest["model"]["file"]
    try:
        return ort.InferenceSession(str(model), opts, providers=wanted)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"{model}: onnxruntime cannot load it: {e}") from None
