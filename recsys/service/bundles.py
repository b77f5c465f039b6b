"""Load and pair-check the bundle set a service runs on; swap sets atomically.

A set is the ranker, the FAISS index, the item catalogue and the users table
named by :class:`~recsys.service.config.BundlePaths` (each may be absent: its
level is then skipped). Loading verifies every bundle (manifest checksum, every
file's sha256) and the versions that must agree:

* the ranker's ``feature_set_version`` must be the one this service computes
  (:data:`recsys.features.ranker.FEATURE_SET_VERSION`, plus ``+<behavioural
  feature set>`` when the manifest has a ``behavioural`` block, computed online
  by :class:`recsys.service.behaviour.Behaviour`) and its inputs a subset of
  what :func:`recsys.service.rules.ranker_features` assembles;
* the index's ``embedding_version`` must be one the ranker lists as compatible
  (:func:`recsys.serving.bundle.check_pairing`).

* the query encoder's ``embedding_version`` must equal the index's (the index
  holds the vectors of the run the encoder was exported from), and the encoder
  bundle must map its input ids to raw item ids (``item_ids.npy``).

Any failure is one :class:`BundleSetError` line; :class:`BundleHolder` keeps the
running set until a new one has loaded completely.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.features.ranker import FEATURE_SET_VERSION
from recsys.service.config import BundlePaths
from recsys.utils.errors import RecsysError

#: ranker inputs the service computes (see :func:`recsys.service.rules.ranker_features`)
REQUEST_INPUTS = ("user", "item", "position", "hour", "user_ctr", "item_ctr", "user_log_imps", "item_log_imps")


class BundleSetError(RecsysError):
    """A bundle set that cannot be served (missing, corrupt or mismatched)."""


@dataclass
class Catalogue:
    """Per-key facts from a Parquet file keyed by ``item_id`` (the item catalogue:
    ``category`` for diversity, ``available``, item-level ranker inputs by column
    name) or ``user_id`` (user-level ranker inputs, e.g. ``user_group``)."""

    item_ids: np.ndarray                                  # (n,) str
    category: dict[str, str] = field(default_factory=dict)
    unavailable: set[str] = field(default_factory=set)
    columns: dict[str, dict[str, float]] = field(default_factory=dict)  # ranker input -> item -> value
    known: set[str] = field(default_factory=set)                        # every key listed
    _servable: set[str] | None = field(default=None, repr=False)

    @property
    def servable(self) -> set[str]:
        """Listed and not unavailable (computed once)."""
        if self._servable is None:
            self._servable = self.known - self.unavailable
        return self._servable

    @classmethod
    def read(cls, path: str | Path, key: str = "item_id") -> "Catalogue":
        import pyarrow.parquet as pq

        p = Path(path)
        if not p.is_file():
            raise BundleSetError(f"{p}: catalogue file not found")
        try:
            t = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise BundleSetError(f"{p}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        if key not in t.column_names:
            raise BundleSetError(f"{p}: no {key} column (columns: {', '.join(t.column_names)})")
        ids = np.asarray([str(v) for v in t.column(key).to_pylist()], dtype=object)
        cat = dict(zip(ids, map(str, t.column("category").to_pylist()))) if "category" in t.column_names else {}
        unavailable = set()
        if "available" in t.column_names:
            unavailable = {i for i, a in zip(ids, t.column("available").to_pylist()) if not a}
        cols = {c: dict(zip(ids, t.column(c).to_pylist())) for c in t.column_names
                if c not in (key, "available")}
        return cls(ids, cat, unavailable, cols, set(ids.tolist()))


@dataclass
class BundleSet:
    encoder: Any = None
    ranker: Any = None
    behaviour: Any = None  # Behaviour of the ranker's behavioural features (online state)
    index: Any = None
    catalogue: Catalogue | None = None
    users: Catalogue | None = None
    versions: dict[str, str] = field(default_factory=dict)
    # the static level's list with unavailable / unknown items already removed (filled
    # by the pipeline on first use: a set is immutable once loaded)
    static_base: list[str] | None = None
    # the ranker's item-level inputs as arrays by catalogue row (filled by
    # recsys.service.rules.ranker_features on first use)
    item_inputs: Any = None


def _exists(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise BundleSetError(f"{p}: {what} bundle not found")
    return p


def load_bundle_set(paths: BundlePaths, threads: int = 1, previous: BundleSet | None = None) -> BundleSet:
    """Load, verify and pair-check a bundle set (see the module docstring).
    ``previous``: the running set, whose behavioural state is kept when the new
    ranker uses the same feature set; ``paths.events``: an event file replayed into
    a new behavioural state."""
    from recsys.service.behaviour import Behaviour
    from recsys.serving.bundle import check_pairing, load_manifest
    from recsys.serving.encoder import QueryEncoderRuntime
    from recsys.serving.index import IndexRuntime
    from recsys.serving.ranker import RankerRuntime

    s = BundleSet()
    try:
        if paths.catalogue is not None:
            s.catalogue = Catalogue.read(paths.catalogue)
        if paths.users is not None:
            s.users = Catalogue.read(paths.users, key="user_id")
        categories = s.catalogue.category if s.catalogue is not None else None
        if (p := _exists(paths.index, "index")) is not None:
            s.index = IndexRuntime(p, threads=threads)
            v = s.index.manifest.get("embedding_version")
            if v:
                s.versions["embedding_version"] = str(v)
        if (p := _exists(paths.encoder, "encoder")) is not None:
            if s.index is None:
                raise BundleSetError(f"{p}: a query encoder needs an index bundle (serve.bundles.index)")
            s.encoder = QueryEncoderRuntime(p, intra_op_threads=threads)
            ev, iv = s.encoder.embedding_version, s.index.manifest.get("embedding_version")
            if not ev or ev != iv:
                raise BundleSetError(f"{p}: encoder embedding_version {ev} != index {paths.index} "
                                     f"embedding_version {iv} (export both from the same train run)")
            if s.encoder.item_ids is None:
                raise BundleSetError(f"{p}: the encoder bundle has no item_ids.npy (raw item ids); re-export it")
            if s.encoder.item_embeddings.shape[1] != s.index.dim:
                raise BundleSetError(f"{p}: encoder dim {s.encoder.item_embeddings.shape[1]} != index dim {s.index.dim}")
            s.versions["encoder"] = str(s.encoder.manifest.get("name") or p.name)
        if (p := _exists(paths.ranker, "ranker")) is not None:
            spec = load_manifest(p).get("behavioural")
            want = FEATURE_SET_VERSION
            if spec is not None:
                keep = previous.behaviour if previous is not None else None
                s.behaviour = keep if keep is not None and keep.version == spec.get("feature_set") \
                    else Behaviour(spec, str(p))
                want = f"{FEATURE_SET_VERSION}+{s.behaviour.version}"
                if s.behaviour is not keep and paths.events is not None:
                    s.behaviour.replay(paths.events, categories)
            s.ranker = RankerRuntime(p, feature_set_version=want, intra_op_threads=threads)
            if s.index is not None:
                check_pairing(s.ranker.manifest, p, str(paths.index))
            s.versions["feature_set_version"] = str(s.ranker.feature_set_version)
            s.versions["ranker"] = str(s.ranker.manifest.get("name") or p.name)
    except RecsysError as e:
        if isinstance(e, BundleSetError):
            raise
        raise BundleSetError(str(e)) from None
    if s.ranker is not None:
        known = set(REQUEST_INPUTS) | {c.removesuffix("_idx") for t in (s.catalogue, s.users) if t for c in t.columns}
        known |= set(s.behaviour.columns if s.behaviour is not None else [])
        missing = sorted(set(s.ranker.inputs) - known)
        if missing:
            raise BundleSetError(f"{paths.ranker}: ranker inputs {missing} are neither computed by the service nor "
                                 f"columns of the catalogue ({paths.catalogue}) or users ({paths.users}) table")
    return s


class BundleHolder:
    """The serving set; :meth:`swap` replaces it only after the new set loaded whole.
    A request takes :attr:`current` once and uses that set throughout."""

    def __init__(self, paths: BundlePaths, threads: int = 1):
        self.paths, self.threads = paths, threads
        self.current = load_bundle_set(paths, threads)
        self._lock = threading.Lock()

    def swap(self, paths: BundlePaths | None = None) -> BundleSet:
        """Load ``paths`` (default: the same paths again); on any error raise and keep serving the old set."""
        with self._lock:
            new_paths = paths or self.paths
            new = load_bundle_set(new_paths, self.threads, self.current)
            self.current, self.paths = new, new_paths
            return new
