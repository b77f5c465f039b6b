"""Deterministic A/B assignment by consistent hashing.

A user's bucket for a salt is ``int(sha256(f"{salt}/{user_id}")[:8], big-endian) %
10000``: uniform on ``[0, 10000)``, the same on every run, machine and Python
version (no ``hash()``, no random state).

Three independent hashes decide where a user goes (:func:`assign`):

1. **Holdback** (``holdback.salt``, global across experiments): bucket below
   ``holdback.share * 10000`` -> :data:`HOLDBACK`. Held-back users are outside every
   experiment that names the same holdback, so they never see any treatment.
2. **Exposure** (``salt``): bucket below ``traffic * 10000`` -> in the experiment,
   otherwise :data:`NOT_IN_EXPERIMENT`. Buckets fill from 0 upward, so raising
   ``traffic`` (10% -> 20%) only adds users; nobody already in leaves.
3. **Arm** (``salt + ":arm"``): cumulative relative shares split ``[0, 10000)``
   into arms. This hash does not depend on ``traffic``, so a ramp never moves a user
   between arms. Changing the *split* (50/50 -> 70/30) does move users, by design.

Example::

    >>> design = ExperimentDesign("ranker-v2", salt="ranker-v2-2026", arms={"control": 0.5, "treatment": 0.5},
    ...                           traffic=0.2)
    >>> assign(np.array(["u1", "u2", "u3"]), design)   # doctest: +SKIP
    array(['', 'treatment', ''], dtype='<U9')
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

N_BUCKETS = 10_000
NOT_IN_EXPERIMENT = ""
HOLDBACK = "holdback"


def buckets(user_ids: Iterable[Any], salt: str) -> np.ndarray:
    """Bucket in ``[0, N_BUCKETS)`` of every id (int64 array, same length).

    ``user_ids`` may be any array or iterable; ids are hashed as ``str(id)``.
    About 0.55 s per million ids on one core.
    """
    ids = np.asarray(user_ids).ravel().tolist()
    prefix = f"{salt}/"
    digest = b"".join([hashlib.sha256(f"{prefix}{u}".encode()).digest()[:8] for u in ids])
    return (np.frombuffer(digest, dtype=">u8") % N_BUCKETS).astype(np.int64)


@dataclass(frozen=True)
class Holdback:
    """A global holdback: ``share`` of all users (by ``salt``) see no treatment."""

    salt: str
    share: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"holdback share must be in [0, 1), got {self.share}")


@dataclass(frozen=True)
class ExperimentDesign:
    """What :func:`assign` needs: a salt, relative arm shares and traffic.

    Args:
        name: experiment name (archive folder, reports).
        salt: hashing salt; keep it fixed for the life of the experiment.
        arms: arm name -> relative share (normalised to sum to 1), in a fixed
            order: the cumulative split follows this order. The first arm is the
            control unless ``control`` says otherwise.
        traffic: fraction of (non-held-back) users in the experiment, in (0, 1].
        holdback: optional global holdback.
        control: name of the control arm.
    """

    name: str
    salt: str
    arms: Mapping[str, float]
    traffic: float = 1.0
    holdback: Holdback | None = None
    control: str | None = field(default=None)

    def __post_init__(self) -> None:
        shares = np.array(list(self.arms.values()), dtype=np.float64)
        if len(shares) < 2 or (shares <= 0).any() or not np.isfinite(shares).all():
            raise ValueError(f"arms need >= 2 entries with positive shares, got {dict(self.arms)}")
        if any(not str(a) or a == HOLDBACK for a in self.arms):
            raise ValueError(f"arm names must be non-empty and not {HOLDBACK!r}: {list(self.arms)}")
        if not 0.0 < self.traffic <= 1.0:
            raise ValueError(f"traffic must be in (0, 1], got {self.traffic}")
        if self.control is not None and self.control not in self.arms:
            raise ValueError(f"control {self.control!r} is not an arm: {list(self.arms)}")

    @property
    def control_arm(self) -> str:
        return self.control if self.control is not None else next(iter(self.arms))

    @property
    def shares(self) -> dict[str, float]:
        """Relative arm shares, normalised to sum to 1."""
        total = float(sum(self.arms.values()))
        return {a: float(s) / total for a, s in self.arms.items()}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["arms"] = dict(self.arms)
        out["control_arm"] = self.control_arm
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentDesign":
        hb = d.get("holdback")
        return cls(name=str(d["name"]), salt=str(d["salt"]), arms={str(k): float(v) for k, v in d["arms"].items()},
                   traffic=float(d.get("traffic", 1.0)),
                   holdback=Holdback(str(hb["salt"]), float(hb["share"])) if hb else None,
                   control=d.get("control"))


def arm_edges(shares: Mapping[str, float]) -> np.ndarray:
    """Upper bucket edge of each arm: ``round(cumsum(shares) * N_BUCKETS)``, last = N."""
    s = np.array(list(shares.values()), dtype=np.float64)
    edges = np.rint(np.cumsum(s / s.sum()) * N_BUCKETS).astype(np.int64)
    edges[-1] = N_BUCKETS
    return edges


def assign(user_ids: Iterable[Any], design: ExperimentDesign) -> np.ndarray:
    """Arm name of every user (numpy unicode array); ``""`` = not in the
    experiment, ``"holdback"`` = in the global holdback. Deterministic."""
    ids = np.asarray(user_ids).ravel()
    names = np.array([NOT_IN_EXPERIMENT, HOLDBACK, *design.arms])
    code = np.zeros(len(ids), dtype=np.int64)  # index into names
    exposed = buckets(ids, design.salt) < int(round(design.traffic * N_BUCKETS))
    if design.holdback is not None and design.holdback.share > 0:
        held = buckets(ids, design.holdback.salt) < int(round(design.holdback.share * N_BUCKETS))
        code[held] = 1
        exposed &= ~held
    arm = np.searchsorted(arm_edges(design.arms), buckets(ids[exposed], f"{design.salt}:arm"), side="right")
    code[exposed] = 2 + arm
    return names[code]


def in_holdback(user_ids: Iterable[Any], holdback: Holdback) -> np.ndarray:
    """Boolean mask: the users a global holdback keeps out of every treatment."""
    return buckets(user_ids, holdback.salt) < int(round(holdback.share * N_BUCKETS))
