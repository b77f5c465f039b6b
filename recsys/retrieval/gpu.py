"""Backends: which device builds and searches, and the torch exact top-k index.

``select_backend("auto")``: ``faiss-gpu`` when the installed faiss sees a GPU
(``faiss.get_num_gpus() > 0``), else ``torch`` (exact top-k on the CUDA device)
when torch sees CUDA, else ``faiss-cpu``. torch is imported only when a CUDA
driver is present, so CPU runs never pay its import.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

BACKENDS = ("auto", "faiss-cpu", "faiss-gpu", "torch")


def cuda_available() -> bool:
    """torch sees a CUDA device (torch is imported only if a driver is present)."""
    if not (Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()
            or os.environ.get("RECSYS_ASSUME_CUDA")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def select_backend(requested: str = "auto") -> str:
    if requested not in BACKENDS:
        from recsys.utils.errors import RecsysError

        raise RecsysError(f"backend={requested!r}, expected one of {BACKENDS}")
    if requested != "auto":
        return requested
    if faiss.get_num_gpus() > 0:
        return "faiss-gpu"
    if cuda_available():
        return "torch"
    return "faiss-cpu"


def gpu_supports(factory: str) -> bool:
    """faiss GPU has Flat, IVF-Flat, IVF-SQ and IVF-PQ; not HNSW."""
    return "HNSW" not in factory


def to_faiss_gpu(index: faiss.Index, device: int = 0) -> tuple[faiss.Index, Any]:
    """(GPU copy of ``index``, its resources); keep the resources alive as long as the index."""
    res = faiss.StandardGpuResources()
    co = faiss.GpuClonerOptions()
    co.useFloat16 = False
    return faiss.index_cpu_to_gpu(res, device, index, co), res


class TorchExactIndex:
    """Exact top-k with faiss's search API, on any torch device.

    Args:
        vectors: (n, D) float32 items (row r = id r).
        metric: ``ip`` / ``cos`` (largest inner product; give normalised vectors for cos)
            or ``l2`` (smallest squared distance, returned like faiss does).
        device: ``cuda`` (default when available) or ``cpu`` (tests).
        query_batch: queries per matmul; bounds the (batch, n) score matrix.

    Example::

        ix = TorchExactIndex(V, "ip", device="cuda")
        D, I = ix.search(Q, 10)      # numpy (B, 10) float32, (B, 10) int64
    """

    def __init__(self, vectors: np.ndarray, metric: str = "ip", device: str | None = None,
                 query_batch: int = 1024):
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.xb = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32), device=self.device)
        self.ntotal, self.d = self.xb.shape
        self.metric = metric
        self.norms = (self.xb * self.xb).sum(1) if metric == "l2" else None
        self.query_batch = int(query_batch)

    def search(self, x: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        nq, d = x.shape
        assert d == self.d, (d, self.d)
        k = min(int(k), self.ntotal)
        out_d, out_i = [], []
        with torch.inference_mode():
            q_all = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, non_blocking=True)
            for s in range(0, nq, self.query_batch):
                q = q_all[s:s + self.query_batch]  # (b, D)
                sim = q @ self.xb.T  # (b, n)
                if self.norms is None:
                    vals, idx = torch.topk(sim, k, dim=1)
                else:
                    dist = (q * q).sum(1, keepdim=True) - 2 * sim + self.norms  # squared L2
                    vals, idx = torch.topk(dist, k, dim=1, largest=False)
                out_d.append(vals)
                out_i.append(idx)
            dd = torch.cat(out_d).cpu().numpy()
            ii = torch.cat(out_i).cpu().numpy().astype(np.int64)
        return dd, ii

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
