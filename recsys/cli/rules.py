"""The declarative rules of the config checks (:mod:`recsys.cli.validate`): keys
that may take several types, and the range of numeric keys (key pattern -> range)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

from recsys.utils.errors import RecsysError

#: keys that legitimately take several types (no check against the default's type)
ANY_TYPE = ("trainer.devices", "trainer.precision", "trainer.strategy", "trainer.max_time",
            "trainer.limit_*", "trainer.val_check_interval", "trainer.overfit_batches", "*device")


@dataclass(frozen=True)
class Range:
    """Allowed numeric values: ``lo <= x <= hi`` (``<`` where open), or one of ``also``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple = ()
    note: str = ""

    def ok(self, x: float) -> bool:
        if x in self.also:
            return True
        if math.isnan(x):
            return False
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.lo is not None and self.hi is not None:
            parts.append(f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}")
        elif self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        elif self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        text = " ".join(parts)
        if self.also:
            text += " or " + " or ".join(f"{a:g}" for a in self.also) + (f" ({self.note})" if self.note else "")
        elif self.note:
            text += f" ({self.note})"
        return text


POSITIVE = Range(lo=1)
NON_NEGATIVE = Range(lo=0)
FRACTION = Range(lo=0, hi=1, hi_open=True)

#: key pattern (fnmatch on the full dotted key) -> allowed range; the first match
#: wins. Checked on every value of the composed config (defaults and presets too)
#: and on every value of a sweep; lists are checked element by element.
RANGES: tuple[tuple[str, Range], ...] = (
    ("trainer.max_epochs", Range(lo=0, also=(-1,), note="no limit; 0 evaluates without training")),
    ("trainer.check_val_every_n_epoch", POSITIVE),
    ("trainer.log_every_n_steps", POSITIVE),
    ("trainer.gradient_clip_val", NON_NEGATIVE),
    ("*batch_size", POSITIVE),
    ("*batch_sizes", POSITIVE),
    ("throughput_batch", POSITIVE),
    ("k", POSITIVE),
    ("*.k", POSITIVE),
    ("evaluation.ks", POSITIVE),
    ("module.ks", POSITIVE),
    ("*beyond_k", POSITIVE),
    ("*top_k", POSITIVE),
    ("*epochs", NON_NEGATIVE),
    ("*num_workers", NON_NEGATIVE),
    ("*seed", NON_NEGATIVE),
    ("data.n_users", POSITIVE),
    ("data.n_items", POSITIVE),
    ("*n_requests", POSITIVE),
    ("*max_len", POSITIVE),
    ("*max_history", POSITIVE),
    ("*dropout", FRACTION),
    ("*mask_prob", FRACTION),
    ("*_fraction", FRACTION),
    ("*.lr", Range(lo=0, lo_open=True)),
    ("*weight_decay", NON_NEGATIVE),
    ("*threads", POSITIVE),
    ("nprobe", POSITIVE),
    ("efSearch", POSITIVE),
    ("k_factor_rf", POSITIVE),
    ("print_max", NON_NEGATIVE),
    ("*tolerance", NON_NEGATIVE),
    ("*patience", NON_NEGATIVE),
)


class ConfigError(RecsysError):
    """A config mistake on the command line; ``str(err)`` is one line."""


def range_for(key: str) -> Range | None:
    for pattern, rule in RANGES:
        if fnmatchcase(key, pattern):
            return rule
    return None
