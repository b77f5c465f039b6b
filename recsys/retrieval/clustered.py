"""Realistically clustered synthetic embeddings for index benchmarks.

Learned item embeddings are neither uniform nor isotropic: items form topical
clusters of very unequal size, and the variance is concentrated in a few
directions. :func:`clustered_embeddings` draws from a mixture of Gaussians with

* ``n_clusters`` centres ~ N(0, diag(s)) with a decaying spectrum
  ``s_j = (j + 1) ** -spectrum_decay`` (a few dominant directions),
* power-law (Zipf) cluster sizes: P(cluster c) ∝ (c + 1) ** -zipf_a,
* within-cluster spread ``spread`` times the centre scale (same spectrum),

then normalises every vector to unit length (embeddings trained with a
dot-product or cosine objective). Queries (:func:`clustered_queries`) are new
draws from the same mixture with the same seed-derived centres, never items.

Example::

    X, Q = clustered_embeddings(1_000_000, 64, seed=0), clustered_queries(1000, 64, seed=0)
"""
from __future__ import annotations

import numpy as np


def _mixture(dim: int, n_clusters: int, zipf_a: float, spectrum_decay: float, seed: int):
    rng = np.random.default_rng([seed, 0])
    scale = (np.arange(dim) + 1.0) ** -spectrum_decay
    scale = (scale / np.sqrt((scale ** 2).mean())).astype(np.float32)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32) * scale
    p = (np.arange(n_clusters) + 1.0) ** -zipf_a
    return centres, p / p.sum(), scale


def _draw(n: int, dim: int, stream: int, seed: int, n_clusters: int, zipf_a: float, spread: float,
          spectrum_decay: float, chunk: int = 200_000) -> np.ndarray:
    centres, p, scale = _mixture(dim, n_clusters, zipf_a, spectrum_decay, seed)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        c = rng.choice(n_clusters, m, p=p)
        x = centres[c] + rng.standard_normal((m, dim)).astype(np.float32) * (scale * np.float32(spread))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    return out


def clustered_embeddings(n: int, dim: int = 64, *, seed: int = 0, n_clusters: int = 1000, zipf_a: float = 1.0,
                         spread: float = 0.5, spectrum_decay: float = 0.5) -> np.ndarray:
    """(n, dim) float32 unit vectors from the mixture (items)."""
    return _draw(n, dim, 1, seed, n_clusters, zipf_a, spread, spectrum_decay)


def clustered_queries(n: int, dim: int = 64, *, seed: int = 0, n_clusters: int = 1000, zipf_a: float = 1.0,
                      spread: float = 0.5, spectrum_decay: float = 0.5) -> np.ndarray:
    """(n, dim) float32 unit query vectors: fresh draws from the items' mixture."""
    return _draw(n, dim, 2, seed, n_clusters, zipf_a, spread, spectrum_decay)
