"""The artifacts layer (ground floor: stdlib, numpy, pyarrow; no torch at import
time): the one bundle format (:mod:`.bundle`), model folders and the registry of
model classes an artifact may name (:mod:`.models`), the ``embeddings/`` folder
(:mod:`.embeddings`), and the check of ``_target_`` values read from disk
(:mod:`.targets`). One error type: :class:`BundleError`."""
from recsys.artifacts.errors import BundleError

__all__ = ["BundleError"]
