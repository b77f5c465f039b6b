"""Torch-free retrieval runtime: load an index bundle (``recsys index build``) and
search it with faiss + numpy only.

The bundle format, checksum verification and search code live in
:mod:`recsys.retrieval.bundle` (numpy + faiss, no torch, no pyarrow), because the
layer contracts let serving import retrieval but not the other way round, and
``recsys index build/bench`` need the same code; this module is the serving
entry point.

Example::

    from recsys.serving.index import IndexRuntime
    rt = IndexRuntime("export/items_index", search_params={"efSearch": 64}, threads=1)
    hits = rt.search_users(["u17"], k=10, exclude_seen=True)      # by user id
    hits = rt.similar_items(["i42"], k=10, category="books")       # by item id
    hits = rt.search(query_vectors, k=10)                          # (B, D) vectors
    hits.ids, hits.scores                                          # (B, k) each

Bad input raises :class:`recsys.utils.errors.DataError` with one line naming the
file or id: an unknown user / item id, a query of the wrong dimension or dtype, a
query row with NaN / inf (named by its row), a ``k`` that is not a positive integer
(``0``, ``-3``, ``2.7``; numpy ints are fine), a missing, truncated or modified
bundle file (every file's size and sha256 are checked against ``manifest.json`` on
load). The checks live in :class:`recsys.retrieval.bundle.IndexBundle`.
"""
from __future__ import annotations

from recsys.retrieval.bundle import BUNDLE_FORMAT, Hits, IndexBundle, load_manifest

IndexRuntime = IndexBundle

__all__ = ["BUNDLE_FORMAT", "Hits", "IndexBundle", "IndexRuntime", "load_manifest"]
