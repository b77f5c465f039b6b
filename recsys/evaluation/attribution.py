"""Cross-channel attribution: who gets the credit for a conversion.

Every method takes :class:`~recsys.data.journeys.Journeys` (paths of channel
touches and outcomes) and returns the credit per channel ``(C,)``; :func:`shares`
turns credit into shares that sum to 1, the unit they are compared in.

Rule-based (credit of each *converting* journey, one conversion split over its touches):

* :func:`last_touch`, :func:`first_touch`: all to the last / first touch;
* :func:`linear`: equally over the touches;
* :func:`position_based`: 40% first, 40% last, 20% split over the middle touches
  (one touch: 100%; two: 50/50).

Data-driven (use non-converting journeys too):

* :func:`markov_removal`: a first-order Markov chain over ``start -> channels ->
  conversion | null``; a channel's removal effect is the relative drop of the
  conversion probability from ``start`` when every transition into it goes to null.
* :func:`shapley`: the value of a channel set ``S`` is the conversion rate of the
  journeys that touched exactly ``S`` (order and repeats ignored), minus the rate of
  journeys without touches (0 when there are none); each journey's incremental
  conversion ``v(S) - v(empty)`` is split by exact Shapley values over the subsets of
  ``S``, and a channel's credit is the sum over all journeys. A subset no journey
  touched exactly gets the value of a least-squares additive fit (intercept + one
  effect per channel, weighted by journey counts) over the observed sets.
"""
from __future__ import annotations

from math import factorial
from typing import Callable

import numpy as np

from recsys.data.journeys import Journeys

Method = Callable[[Journeys], np.ndarray]


def shares(credit: np.ndarray) -> np.ndarray:
    """Credit -> shares summing to 1 (negative credit, from a harmful estimated effect, counts as 0)."""
    c = np.clip(np.asarray(credit, dtype=np.float64), 0.0, None)
    total = c.sum()
    return c / total if total > 0 else np.full(len(c), 1.0 / len(c))


def _converting(j: Journeys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Converting journeys with at least one touch: their starts, ends (exclusive) and lengths."""
    lens = j.lengths()
    keep = j.converted & (lens > 0)
    return j.offsets[:-1][keep], j.offsets[1:][keep], lens[keep]


def last_touch(j: Journeys) -> np.ndarray:
    _, end, _ = _converting(j)
    return np.bincount(j.touches[end - 1], minlength=j.n_channels).astype(np.float64)


def first_touch(j: Journeys) -> np.ndarray:
    start, _, _ = _converting(j)
    return np.bincount(j.touches[start], minlength=j.n_channels).astype(np.float64)


def _touch_weights(j: Journeys, weight: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Credit from a per-touch weight ``weight(index in journey, journey length)`` over converting journeys."""
    start, _, lens = _converting(j)
    idx = np.repeat(start, lens) + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    pos = idx - np.repeat(start, lens)
    n = np.repeat(lens, lens)
    return np.bincount(j.touches[idx], weights=weight(pos, n), minlength=j.n_channels)


def linear(j: Journeys) -> np.ndarray:
    return _touch_weights(j, lambda pos, n: 1.0 / n)


def position_based(j: Journeys, first: float = 0.4, last: float = 0.4) -> np.ndarray:
    """``first`` / ``last`` to the end touches, the rest split over the middle ones."""
    def w(pos: np.ndarray, n: np.ndarray) -> np.ndarray:
        mid = (1.0 - first - last) / np.maximum(n - 2, 1)
        out = np.where(pos == 0, first, np.where(pos == n - 1, last, mid))
        out = np.where(n == 2, 0.5, out)
        return np.where(n == 1, 1.0, out)

    return _touch_weights(j, w)


def _absorb(t: np.ndarray, c: int) -> float:
    """P(reach conversion from start) of a transition-count matrix over
    ``[start, channels..., conversion, null]`` (``c`` channels)."""
    q = t[: c + 1, : c + 1]
    r = t[: c + 1, c + 1:]
    tot = t[: c + 1].sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    q, r = q / tot, r / tot
    b = np.linalg.solve(np.eye(c + 1) - q, r)
    return float(b[0, 0])


def markov_transitions(j: Journeys) -> np.ndarray:
    """Counts ``(C + 3, C + 3)`` over states ``[start, channels..., conversion, null]``."""
    c = j.n_channels
    conv_state, null_state = c + 1, c + 2
    lens = j.lengths()
    end_state = np.where(j.converted, conv_state, null_state)
    # per journey: start, its touches (+1), its end state
    seq_len = lens + 2
    seq = np.empty(int(seq_len.sum()), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(seq_len)[:-1]])
    seq[starts] = 0
    seq[starts + seq_len - 1] = end_state
    inner = np.ones(len(seq), dtype=bool)
    inner[starts] = False
    inner[starts + seq_len - 1] = False
    seq[inner] = j.touches + 1
    frm = np.delete(seq, starts + seq_len - 1)
    to = np.delete(seq, starts)
    t = np.zeros((c + 3, c + 3))
    np.add.at(t, (frm, to), 1.0)
    return t


def markov_removal(j: Journeys) -> np.ndarray:
    """Removal effects ``1 - P(conv | channel removed) / P(conv)`` per channel."""
    c = j.n_channels
    t = markov_transitions(j)
    base = _absorb(t, c)
    out = np.zeros(c)
    if base <= 0:
        return out
    for k in range(c):
        tk = t.copy()
        tk[:, c + 2] += tk[:, k + 1]  # every transition into channel k goes to null
        tk[:, k + 1] = 0.0
        tk[k + 1, :] = 0.0
        out[k] = 1.0 - _absorb(tk, c) / base
    return out


def coalition_values(j: Journeys) -> tuple[np.ndarray, np.ndarray]:
    """``(v, counts)`` over the ``2^C`` channel-set bit masks: the conversion rate of the
    journeys that touched exactly that set (missing sets: the additive fit), and how many did."""
    c = j.n_channels
    masks = j.channel_sets()
    counts = np.bincount(masks, minlength=1 << c).astype(np.float64)
    conv = np.bincount(masks, weights=j.converted.astype(np.float64), minlength=1 << c)
    v = np.divide(conv, counts, out=np.zeros_like(conv), where=counts > 0)
    if (counts == 0).any():
        x = np.column_stack([np.ones(1 << c), (np.arange(1 << c)[:, None] >> np.arange(c)) & 1]).astype(np.float64)
        w = np.sqrt(counts)
        coef, *_ = np.linalg.lstsq(x * w[:, None], v * w, rcond=None)
        v = np.where(counts > 0, v, x @ coef)
    return v, counts


def shapley_of_sets(v: np.ndarray, n_channels: int) -> np.ndarray:
    """Exact Shapley values ``(2^C, C)`` of the game ``v(T) - v(empty)`` restricted to each set ``S``."""
    c = n_channels
    size = np.array([bin(m).count("1") for m in range(1 << c)])
    phi = np.zeros((1 << c, c))
    for s in range(1, 1 << c):
        n = size[s]
        for k in range(c):
            if not s >> k & 1:
                continue
            rest = s & ~(1 << k)
            sub = rest
            total = 0.0
            while True:  # every subset T of S \ {k}
                t = size[sub]
                total += factorial(t) * factorial(n - t - 1) / factorial(n) * (v[sub | 1 << k] - v[sub])
                if sub == 0:
                    break
                sub = (sub - 1) & rest
            phi[s, k] = total
    return phi


def shapley(j: Journeys) -> np.ndarray:
    """Estimated incremental conversions per channel (see the module docstring)."""
    v, counts = coalition_values(j)
    if counts[0] == 0:
        v = v.copy()
        v[0] = 0.0
    return counts @ shapley_of_sets(v, j.n_channels)


METHODS: dict[str, Method] = {
    "last_touch": last_touch, "first_touch": first_touch, "linear": linear, "position_based": position_based,
    "markov": markov_removal, "shapley": shapley,
}


def attribute(j: Journeys, methods: dict[str, Method] | None = None) -> dict[str, np.ndarray]:
    """Shares per channel of every method (name -> ``(C,)``)."""
    return {name: shares(fn(j)) for name, fn in (methods or METHODS).items()}


def score(estimated: dict[str, np.ndarray], truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Per method: ``max_abs_error`` and ``mean_abs_error`` of the shares against the truth."""
    return {name: {"max_abs_error": float(np.abs(s - truth).max()), "mean_abs_error": float(np.abs(s - truth).mean())}
            for name, s in estimated.items()}


def study(samples: list[Journeys], methods: dict[str, Method] | None = None) -> dict:
    """Every method on every sample (e.g. seeds of the generator, or one file). JSON-ready:
    ``channels``, ``n_samples``, ``n_journeys`` and ``conversion_rate`` per sample,
    ``shares`` (method -> channel -> mean share over the samples, ``truth`` included when
    known), and with truth ``errors`` (method -> ``max_abs_error`` over channels and
    samples, ``mean_abs_error``, ``per_sample_max`` list, ``abs_error`` channel -> mean)."""
    if not samples:
        raise ValueError("no journeys to attribute")
    channels = samples[0].channels
    per = [attribute(j, methods) for j in samples]
    names = list(per[0])
    mean = {m: np.mean([p[m] for p in per], axis=0) for m in names}
    out: dict = {"channels": list(channels), "n_samples": len(samples),
                 "n_journeys": [j.n_journeys for j in samples],
                 "conversion_rate": [float(j.converted.mean()) for j in samples], "sources": [j.source for j in samples]}
    truths = [j.truth_shares for j in samples]
    if all(t is not None for t in truths):
        truth = np.array(truths)  # (S, C)
        mean["truth"] = truth.mean(axis=0)
        out["errors"] = {}
        for m in names:
            err = np.abs(np.array([p[m] for p in per]) - truth)  # (S, C)
            out["errors"][m] = {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                                "per_sample_max": [float(e) for e in err.max(axis=1)],
                                "abs_error": dict(zip(channels, map(float, err.mean(axis=0))))}
    out["shares"] = {m: dict(zip(channels, map(float, v))) for m, v in mean.items()}
    return out


def report(out: dict) -> str:
    """The study as text: one row per channel (truth, each method's share, its abs error), then
    each method's worst error."""
    ch = out["channels"]
    methods = [m for m in out["shares"] if m != "truth"]
    has_truth = "truth" in out["shares"]
    lines = [f"attribution shares over {out['n_samples']} sample(s) of {out['n_journeys'][0]} journeys "
             f"(conversion rate {np.mean(out['conversion_rate']):.4f})"]
    head = f"{'channel':10s}" + (f"{'truth':>8s}" if has_truth else "")
    for m in methods:
        head += f"{m:>16s}" + (f"{'|err|':>7s}" if has_truth else "")
    lines += [head, "-" * len(head)]
    for c in ch:
        row = f"{c:10s}" + (f"{out['shares']['truth'][c]:8.3f}" if has_truth else "")
        for m in methods:
            row += f"{out['shares'][m][c]:16.3f}"
            if has_truth:
                row += f"{out['errors'][m]['abs_error'][c]:7.3f}"
        lines.append(row)
    if has_truth:
        lines.append("max abs error (over channels and samples): " + ", ".join(
            f"{m} {out['errors'][m]['max_abs_error']:.3f}" for m in methods))
    return "\n".join(lines)
