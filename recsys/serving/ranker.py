"""Torch-free ranker runtime: ONNX Runtime + numpy over an export bundle.

``RankerRuntime(bundle_dir)`` verifies the manifest against ``manifest.sha256``
and every file's sha256 against the manifest (a tampered manifest, a tampered
or truncated model is refused), checks the bundle's feature-set version against
the one this service computes and, when given a retrieval bundle, that its
``embedding_version`` is one the ranker was exported against; it
validates each request against the manifest before scoring: missing or extra
features, wrong dtype or shape, NaN / inf, and out-of-vocabulary ids all raise
:class:`RequestError` (a ``ValueError``) naming the feature.

Example::

    rt = RankerRuntime("export/dcn", feature_set_version="ranker_features/1",
                       retrieval_bundle="export/sasrec_query")  # optional checks
    logits = rt.score({"user": np.array([3, 3]), "item": np.array([7, 9]), ...})  # (2,)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.serving.bundle import (MANIFEST_FORMAT, BundleError, RequestError, check_pairing,  # noqa: F401
                                   load_manifest, open_session)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class RankerRuntime:
    """Score candidates with an exported ranker.

    Args:
        bundle_dir: an ``export/<name>/`` folder.
        feature_set_version: the version of the features this caller computes;
            a bundle declaring another version is refused (None skips the check).
        retrieval_bundle: the retrieval side this ranker will re-rank for (a
            bundle folder, its manifest, or a ``QueryEncoderRuntime``); refused
            unless its ``embedding_version`` is in the ranker manifest's
            ``compatible_embedding_versions`` (None skips the check).
        intra_op_threads: ONNX Runtime intra-op threads (1 = lowest latency per request).
        providers: execution providers; default CUDA when available, then CPU.
    """

    def __init__(self, bundle_dir: str | Path, feature_set_version: str | None = None,
                 intra_op_threads: int = 1, providers: list[str] | None = None, retrieval_bundle: Any = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, kind="ranker")
        declared = self.manifest.get("feature_set_version")
        if feature_set_version is not None and declared != feature_set_version:
            raise BundleError(f"{self.bundle_dir}: bundle was trained on feature set {declared!r}, "
                              f"this service computes {feature_set_version!r}")
        self.embedding_version = (None if retrieval_bundle is None
                                  else check_pairing(self.manifest, self.bundle_dir, retrieval_bundle))
        self.inputs = {i["name"]: i for i in self.manifest["inputs"]}
        self.session = open_session(self.bundle_dir, self.manifest, intra_op_threads, providers)
        self.providers = self.session.get_providers()

    @property
    def feature_set_version(self) -> str | None:
        return self.manifest.get("feature_set_version")

    def validate(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Arrays ready for ONNX Runtime, or :class:`RequestError` naming the feature."""
        missing = sorted(set(self.inputs) - set(features))
        extra = sorted(set(features) - set(self.inputs))
        if missing or extra:
            raise RequestError(f"request features do not match the bundle: missing {missing}, unexpected {extra}")
        out: dict[str, np.ndarray] = {}
        n = None
        for name, spec in self.inputs.items():
            a = np.asarray(features[name])
            if a.ndim != 1:
                raise RequestError(f"feature {name!r}: shape {a.shape}, expected (batch,)")
            if n is None:
                n = len(a)
            elif len(a) != n:
                raise RequestError(f"feature {name!r}: {len(a)} rows, other features have {n}")
            if spec["dtype"] == "int64":
                if a.dtype.kind not in "iu":
                    raise RequestError(f"feature {name!r}: dtype {a.dtype}, expected an integer dtype (int64)")
                vocab = spec.get("vocab_size")
                if vocab is not None and len(a) and (a.min() < 0 or a.max() >= vocab):
                    bad = a[(a < 0) | (a >= vocab)][0]
                    raise RequestError(f"feature {name!r}: id {bad} out of vocabulary [0, {vocab})")
                out[name] = a.astype(np.int64, copy=False)
            else:
                if a.dtype.kind != "f":
                    raise RequestError(f"feature {name!r}: dtype {a.dtype}, expected a float dtype ({spec['dtype']})")
                if not np.all(np.isfinite(a)):
                    raise RequestError(f"feature {name!r}: NaN or infinite value at row {int(np.argmin(np.isfinite(a)))}")
                out[name] = a.astype(np.float32, copy=False)
        if not n:
            raise RequestError("empty request: no candidates")
        return out

    def score(self, features: Mapping[str, Any]) -> np.ndarray:
        """Logits (B,) float32 of B candidates given as name -> (B,) arrays."""
        return self.session.run(["logits"], self.validate(features))[0]

    def predict_proba(self, features: Mapping[str, Any]) -> np.ndarray:
        """P(click) (B,)."""
        return sigmoid(self.score(features).astype(np.float64))

    def score_candidates(self, context: Mapping[str, Any], candidates: Mapping[str, Any]) -> np.ndarray:
        """One request: ``context`` holds per-request scalars (user, hour, ...),
        ``candidates`` per-candidate arrays (B,); returns logits (B,)."""
        n = len(next(iter(candidates.values()))) if candidates else 0
        full = {k: np.full(n, v, dtype=np.asarray(v).dtype) for k, v in context.items()}
        clash = sorted(set(context) & set(candidates))
        if clash:
            raise RequestError(f"features {clash} given both per request and per candidate")
        return self.score({**full, **candidates})
