"""Progress bars for the long stages (index build and tune, OPE studies, feature
builds, evaluation of many users, export parity).

``progress(iterable, desc, total)`` wraps a loop in a tqdm bar on stderr. It is a
plain pass-through (no tqdm import, nothing written) when stderr is not a
terminal, so test output, CI logs and redirected runs stay clean, or when the
environment sets ``RECSYS_PROGRESS=0``; ``RECSYS_PROGRESS=1`` forces the bars on.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

ENV = "RECSYS_PROGRESS"


def enabled() -> bool:
    """Bars on: ``RECSYS_PROGRESS=1``, off: ``RECSYS_PROGRESS=0``, else on when stderr is a TTY."""
    flag = os.environ.get(ENV, "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T] | Iterable[T]:
    """``iterable`` with a progress bar named ``desc`` on stderr when :func:`enabled`,
    else ``iterable`` itself. ``total`` defaults to ``len(iterable)`` where it has one.

    Example::

        for start in progress(range(0, n, batch), "evaluate", total=-(-n // batch)):
            ...
    """
    if not enabled():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True,
                mininterval=0.5)
