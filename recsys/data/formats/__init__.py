"""One module per input format; :mod:`recsys.data.loaders` is the public entry point."""
from __future__ import annotations

from recsys.data.formats.recbole import RecBoleLoader
from recsys.data.formats.seqtxt import SeqTxtLoader
from recsys.data.formats.tabular import CsvLoader, ParquetLoader

__all__ = ["CsvLoader", "ParquetLoader", "RecBoleLoader", "SeqTxtLoader"]
