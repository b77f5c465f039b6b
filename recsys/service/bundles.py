"""Load and pair-check the bundle set a service runs on; swap sets atomically.

A set is the ranker, the FAISS index, the item catalogue and the users table
named by :class:`~recsys.service.config.BundlePaths` (each may be absent: its
level is then skipped). Loading verifies every bundle (manifest checksum, every
file's sha256) and the versions that must agree:

* the ranker's ``feature_set_version`` must be the one this service computes
  (:data:`recsys.features.ranker.FEATURE_SET_VERSION`) and its inputs a subset of
  what :func:`recsys.service.rules.ranker_features` assembles;
* the index's ``embedding_version`` must be one the ranker lists as compatible
  (:func:`recsys.serving.bundle.check_pairing`).

A query-encoder bundle is not part of a set yet: its bundle maps the encoder's
item indices to no raw item ids, so the personalised level queries the index
with its precomputed user vectors.

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
    ranker: Any = None
    index: Any = None
    catalogue: Catalogue | None = None
    users: Catalogue | None = None
    versions: dict[str, str] = field(default_factory=dict)


def _exists(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise BundleSetError(f"{p}: {what} bundle not found")
    return p


def load_bundle_set(paths: BundlePaths, threads: int = 1) -> BundleSet:
    """Load, verify and pair-check a bundle set (see the module docstring)."""
    from recsys.serving.bundle import check_pairing
    from recsys.serving.index import IndexRuntime
    from recsys.serving.ranker import RankerRuntime

    s = BundleSet()
    try:
        if (p := _exists(paths.index, "index")) is not None:
            s.index = IndexRuntime(p, threads=threads)
            v = s.index.manifest.get("embedding_version")
            if v:
                s.versions["embedding_version"] = str(v)
        if (p := _exists(paths.ranker, "ranker")) is not None:
            s.ranker = RankerRuntime(p, feature_set_version=FEATURE_SET_VERSION, intra_op_threads=threads)
            if s.index is not None:
                check_pairing(s.ranker.manifest, p, str(paths.index))
            s.versions["feature_set_version"] = str(s.ranker.feature_set_version)
            s.versions["ranker"] = str(s.ranker.manifest.get("name") or p.name)
        if paths.catalogue is not None:
            s.catalogue = Catalogue.read(paths.catalogue)
        if paths.users is not None:
            s.users = Catalogue.read(paths.users, key="user_id")
    except RecsysError as e:
        if isinstance(e, BundleSetError):
            raise
        raise BundleSetError(str(e)) from None
    if s.ranker is not None:
        known = set(REQUEST_INPUTS) | {c for t in (s.catalogue, s.users) if t for c in t.columns}
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
            new = load_bundle_set(new_paths, self.threads)
            self.current, self.paths = new, new_paths
            return new
