"""The export layer's error type."""
from __future__ import annotations

from recsys.utils.errors import RecsysError


class ExportError(RecsysError):
    """Export refused: missing artifacts, too few rows, or failed parity."""
