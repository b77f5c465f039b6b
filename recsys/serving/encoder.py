"""Torch-free query-encoder runtime: ONNX Runtime + numpy over an export bundle.

``QueryEncoderRuntime(bundle_dir)`` verifies the bundle (``manifest.sha256``,
then the sha256 and size of ``query_encoder.onnx`` and ``item_embeddings.npy``),
loads the item table (``.npy``, no pickle) and checks its shape against the
manifest. Requests are item-id sequences, left-padded with 0, one row per user:

* ``encode(items)`` -> query states ``(B, D)`` float32;
* ``top_k(items, k, exclude_seen=True)`` -> ``(ids (B, k) int64, scores (B, k) float32)``
  over the whole catalogue (``state @ table.T``); id 0 (padding) never appears and,
  with ``exclude_seen``, neither does any id of the request row (the whole row, also
  the part beyond ``max_len`` that the encoder does not read); equal scores go to the
  smaller id, also at the k-th place (which of several tied items makes the cut).
  ``k`` is a positive integer (Python or numpy int; ``2.7``, ``True``, ``0``, ``-3``
  are refused) no larger than the items left to recommend.

Validation raises :class:`RequestError` (a ``ValueError``): non-integer dtype,
not 1-D / 2-D, empty, ids outside ``[0, n_items]``, a 0 after a real item (not
left-padded), and, for encoders whose only input is the history, a row that is all
padding (an empty history has no query state: serve such users from a cold-start
source, e.g. popularity). Rows longer than the model's ``max_len`` keep their last
``max_len`` items (what the model was trained on).

Multi-input encoders (the two-tower user tower) declare more inputs in the
manifest after ``items``, each ``(batch,)`` int64 in ``[0, vocab_size)`` (e.g.
``user_id``, the hashed user id, and ``user_<feature>`` codes). They are passed
by name: ``encode(items, user_id=..., user_region=...)`` or
``encode({"items": ..., "user_id": ..., ...})``; a missing or unknown input, a
non-integer dtype (NaN named as such), a shape other than ``(batch,)`` (a scalar
is accepted for a 1-D ``items``) or a value out of range is a one-line
:class:`RequestError`. These encoders accept an all-padding history (a cold-start
user, encoded from the side inputs alone; the two-tower user tower pools an empty
history to zeros).

Example::

    enc = QueryEncoderRuntime("export/sasrec_query")
    ids, scores = enc.top_k(np.array([[0, 0, 12, 40, 7]]), k=10)  # (1, 10) each
    tt = QueryEncoderRuntime("export/two_tower_query")
    ids, scores = tt.top_k(history, k=10, user_id=buckets, user_region=codes)
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.serving.bundle import BundleError, RequestError, load_manifest, open_session
from recsys.utils.topk import mask_seen, top_k_rows  # noqa: F401  (top_k_rows re-exported)


class QueryEncoderRuntime:
    """Args:
        bundle_dir: a query-encoder bundle (``recsys export run=<train run>``).
        intra_op_threads: ONNX Runtime intra-op threads (1 = lowest latency per request).
        providers: execution providers; default CUDA when available, then CPU.
    """

    def __init__(self, bundle_dir: str | Path, intra_op_threads: int = 1, providers: list[str] | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, kind="query_encoder")
        spec = self.manifest["inputs"][0]
        self.vocab_size, self.max_len = int(spec["vocab_size"]), spec.get("max_len")
        self.side_inputs: list[dict[str, Any]] = [dict(i) for i in self.manifest["inputs"][1:]]
        for i in self.side_inputs:
            if i.get("dtype") != "int64" or list(i.get("shape") or []) != ["batch"] or int(i.get("vocab_size", 0)) < 1:
                raise BundleError(f"{self.bundle_dir}: input {i.get('name')!r} is {i.get('dtype')}{i.get('shape')}, "
                                  f"the runtime serves (batch,) int64 side inputs with a vocab_size")
        emb = self.manifest["item_embeddings"]
        try:
            self.item_embeddings = np.load(self.bundle_dir / emb["file"], allow_pickle=False)
        except ValueError as e:
            raise BundleError(f"{self.bundle_dir / emb['file']}: not a plain .npy array ({e})") from None
        if list(self.item_embeddings.shape) != list(emb["shape"]) or self.item_embeddings.dtype != np.float32:
            raise BundleError(f"{self.bundle_dir / emb['file']}: {self.item_embeddings.dtype}{list(self.item_embeddings.shape)}, "
                              f"manifest says {emb['dtype']}{emb['shape']}")
        if self.vocab_size != len(self.item_embeddings):
            raise BundleError(f"{self.bundle_dir}: input vocabulary {self.vocab_size} != {len(self.item_embeddings)} table rows")
        self.item_ids: np.ndarray | None = None  # raw id of each input id ("" at 0), when the bundle has them
        self._item_index: dict[str, int] | None = None
        if "item_ids" in self.manifest:
            f = self.bundle_dir / self.manifest["item_ids"]["file"]
            try:
                self.item_ids = np.load(f, allow_pickle=False)
            except ValueError as e:
                raise BundleError(f"{f}: not a plain .npy array ({e})") from None
            if self.item_ids.dtype.kind != "U" or self.item_ids.shape != (self.vocab_size,):
                raise BundleError(f"{f}: {self.item_ids.dtype}{list(self.item_ids.shape)}, expected "
                                  f"({self.vocab_size},) unicode raw item ids")
        self.session = open_session(self.bundle_dir, self.manifest, intra_op_threads, providers)
        self.providers = self.session.get_providers()
        want_names = ["items", *(i["name"] for i in self.side_inputs)]
        got_names = [i.name for i in self.session.get_inputs()]
        if sorted(got_names) != sorted(want_names):
            raise BundleError(f"{self.bundle_dir / self.manifest['model']['file']}: ONNX inputs {got_names}, manifest declares {want_names}")

    def item_index(self, raw_ids: list[str]) -> np.ndarray:
        """The encoder's input ids of raw item ids, in order; ids it does not know
        are dropped. Needs a bundle with ``item_ids`` (exports since the decision service)."""
        if self.item_ids is None:
            raise BundleError(f"{self.bundle_dir}: no item_ids in the bundle (re-export it to map raw item ids)")
        if self._item_index is None:
            self._item_index = {s: i for i, s in enumerate(self.item_ids.tolist()) if i > 0}
        get = self._item_index.get
        return np.fromiter((j for j in map(get, raw_ids) if j is not None), dtype=np.int64)

    @property
    def input_names(self) -> list[str]:
        """``items`` first, then the side inputs (the manifest's order)."""
        return ["items", *(i["name"] for i in self.side_inputs)]

    @property
    def embedding_version(self) -> str | None:
        return self.manifest.get("embedding_version")

    @property
    def n_items(self) -> int:
        return self.vocab_size - 1

    def validate(self, items: Any) -> np.ndarray:
        """``(B, T)`` int64 ready for ONNX Runtime (a 1-D input is one user), or :class:`RequestError`."""
        return self._window(self._validate_rows(items))

    def _validate_rows(self, items: Any) -> np.ndarray:
        """The checked request, every row whole (not cut to ``max_len``), ``(B, T)`` int64."""
        a = np.asarray(items)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise RequestError(f"items: shape {a.shape}, expected (seq,) or (batch, seq)")
        if a.dtype.kind not in "iu":
            raise RequestError(f"items: dtype {a.dtype}, expected an integer dtype (int64 item ids)")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise RequestError(f"items: empty request, shape {a.shape}")
        if a.min() < 0 or a.max() >= self.vocab_size:
            bad = a[(a < 0) | (a >= self.vocab_size)][0]
            raise RequestError(f"items: id {bad} out of range [0, {self.n_items}] (0 = padding)")
        real = a > 0
        gaps = np.flatnonzero(((np.cumsum(real, axis=1) > 0) & ~real).any(axis=1))
        if len(gaps):
            raise RequestError(f"items: row {int(gaps[0])} has padding (0) after an item; sequences must be left-padded")
        if not self.side_inputs:
            empty = np.flatnonzero(~real[:, -1])  # left-padded: a row with any item ends with one
            if len(empty):
                raise RequestError(f"items: row {int(empty[0])} is all padding (no item): an empty history has no "
                                   f"query state; serve it from a cold-start source (e.g. popularity)")
        return np.ascontiguousarray(a, dtype=np.int64)

    def _window(self, a: np.ndarray) -> np.ndarray:
        """The last ``max_len`` items of each row (what the model reads)."""
        if self.max_len and a.shape[1] > self.max_len:
            a = np.ascontiguousarray(a[:, -int(self.max_len):])
        return a

    def check_k(self, k: Any) -> int:
        """``k`` as an int in ``[1, n_items]``, or :class:`RequestError` (bools, non-integral
        numbers and strings are refused; numpy integers are fine)."""
        ok = isinstance(k, (numbers.Integral, np.integer)) and not isinstance(k, (bool, np.bool_))
        if not ok and isinstance(k, (float, np.floating)) and float(k).is_integer():
            ok = True  # 10.0 (e.g. from JSON) is 10; 2.7 is refused below
        if not ok:
            shown = repr(k) if isinstance(k, str) else k
            raise RequestError(f"k={shown}: expected a positive integer, 1 <= k <= {self.n_items}")
        if not 1 <= int(k) <= self.n_items:
            raise RequestError(f"k={k}: expected 1 <= k <= {self.n_items}")
        return int(k)

    def validate_side(self, side: Mapping[str, Any], batch: int, single: bool) -> dict[str, np.ndarray]:
        """The side inputs as ``{name: (batch,) int64}``, or :class:`RequestError`."""
        names = [i["name"] for i in self.side_inputs]
        extra = sorted(set(side) - set(names))
        if extra:
            raise RequestError(f"unknown input {extra[0]!r}: this encoder takes {self.input_names}")
        missing = [n for n in names if n not in side]
        if missing:
            raise RequestError(f"missing input {missing[0]!r}: this encoder takes {self.input_names}")
        out = {}
        for spec in self.side_inputs:
            name, n = spec["name"], int(spec["vocab_size"])
            a = np.asarray(side[name])
            if a.dtype.kind == "f" and np.isnan(a).any():
                raise RequestError(f"{name}: contains NaN, expected int64 ids in [0, {n - 1}]")
            if a.dtype.kind not in "iu":
                raise RequestError(f"{name}: dtype {a.dtype}, expected an integer dtype (int64 ids)")
            if a.ndim == 0 and single:
                a = a[None]
            if a.shape != (batch,):
                raise RequestError(f"{name}: shape {a.shape}, expected ({batch},) (one value per row of items)")
            if a.min() < 0 or a.max() >= n:
                bad = a[(a < 0) | (a >= n)][0]
                raise RequestError(f"{name}: value {bad} out of range [0, {n - 1}] (0 = unknown)")
            out[name] = np.ascontiguousarray(a, dtype=np.int64)
        return out

    def feeds(self, items: Any, side: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Validated ONNX Runtime inputs; ``items`` may also be a mapping holding every input."""
        return self._feeds(items, side)[0]

    def _feeds(self, items: Any, side: Mapping[str, Any] | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The ONNX Runtime inputs and the whole validated ``items`` rows (for exclusion)."""
        side = dict(side or {})
        if isinstance(items, Mapping):
            if side:
                raise RequestError("pass the inputs either as one mapping or as items + keyword inputs, not both")
            side = dict(items)
            if "items" not in side:
                raise RequestError(f"missing input 'items': this encoder takes {self.input_names}")
            items = side.pop("items")
        single = np.ndim(items) == 1
        full = self._validate_rows(items)
        return {"items": self._window(full), **self.validate_side(side, len(full), single)}, full

    def encode(self, items: Any, **side: Any) -> np.ndarray:
        """Query states ``(B, D)`` float32."""
        return self.session.run(["state"], self.feeds(items, side))[0]

    def scores(self, items: Any, **side: Any) -> np.ndarray:
        """Scores of every catalogue id ``(B, n_items + 1)`` (column 0 is padding)."""
        return self.encode(items, **side) @ self.item_embeddings.T

    def top_k(self, items: Any, k: int = 10, exclude_seen: bool = True, **side: Any) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` item ids and their scores, each ``(B, k)``, best first; equal scores
        in id order. With ``exclude_seen`` every id of a request row is excluded (the
        whole row, not only the last ``max_len`` the encoder reads)."""
        k = self.check_k(k)
        feeds, full = self._feeds(items, side)
        s = mask_seen(self.session.run(["state"], feeds)[0] @ self.item_embeddings.T,  # (B, n_items + 1)
                      full if exclude_seen else None)
        if exclude_seen:
            if k > self.n_items - full.shape[1]:  # a long row may leave fewer than k items to recommend
                left = (s > -np.inf).sum(axis=1)
                if (left < k).any():
                    r = int(np.flatnonzero(left < k)[0])
                    raise RequestError(f"k={k}: row {r} has seen {self.n_items - int(left[r])} of the {self.n_items} "
                                       f"items, only {int(left[r])} are left to recommend")
        return top_k_rows(s, k)
