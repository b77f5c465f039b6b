"""The one error type of the artifacts layer."""
from __future__ import annotations

from recsys.utils.errors import RecsysError


class BundleError(RecsysError, ValueError):
    """An artifact cannot be trusted or used: missing or modified manifest, checksum
    mismatch, unknown format or kind, a model class outside the registry, a version
    conflict, or an output that would replace something that is not a bundle.
    ``str(err)`` is one line naming the file; the CLI prints it and exits 2."""
