"""Promotion gates: each declared in config (``configs/registry.yaml``, ``gates:``),
each returning a :class:`GateResult` with its evidence, so that a promotion's
decision can be re-read later (the evidence goes to the version's ``gates/`` folder,
the audit trail and an MLflow tag).

A gate's status is one of:

- ``pass`` / ``fail``: the gate ran and its rule held / did not;
- ``not_applicable``: the gate's ``applies_to`` excludes the version's kind (e.g. the
  offline ranking gate for an index bundle); listed, not blocking;
- ``not_available``: the gate could not be evaluated (its inputs do not exist yet: a
  train run has no ONNX parity, it has no fairness report, no served log or canary
  summary was named). It never counts as a pass: the gate's
  ``on_unavailable`` says whether it refuses the promotion (``refuse``) or lets it
  through with a warning printed and recorded (``warn``).

Gate kinds (``kind:`` of each entry):

``offline_metrics``
    The candidate and the champion are scored on the same users (the candidate's
    test split, exact full ranking, :mod:`recsys.evaluation.ranking`) and compared
    with a paired t-test over users on ``metric``. ``mode: non_inferior`` (default)
    refuses when the candidate is worse than the champion by more than ``margin``
    with one-sided p < ``alpha``; ``mode: superior`` also requires the candidate to
    be better (one-sided p < ``alpha``). No champion yet: passes, saying so.
``onnx_parity``
    An export bundle's parity report (manifest ``parity``): max |torch - onnx| within
    ``max_abs_diff`` and (encoders) top-k agreement at least ``min_topk_agreement``.
``latency_budget``
    p99 latency of one call of the bundle's ONNX runtime (batch ``batch``) measured
    now, single thread, against ``p99_ms``.
``sensitive_approval``
    A version tagged sensitive needs a recorded approval (``recsys registry approve``).
``fairness_gaps``
    The candidate's user-group gaps (its evaluation's fairness report, with bootstrap
    intervals) against ``max_gap`` / ``min_ratio``: :mod:`recsys.lifecycle.fairness_gate`.
``ope_lcb`` / ``canary_ab``
    What happened online: the lower bound of the candidate's OPE value on the
    champion's recent served log, and the canary's A/B result (SRM, guardrails,
    rollback): :mod:`recsys.lifecycle.online_gates`.

Each is ``not_available`` (with the reason) when its evidence file is not given or
does not exist.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from recsys.lifecycle.fairness_gate import fairness_gaps
from recsys.lifecycle.online_gates import canary_ab, ope_lcb
from recsys.utils.errors import RecsysError

PASS, FAIL, NOT_AVAILABLE, NOT_APPLICABLE = "pass", "fail", "not_available", "not_applicable"

#: exit code of a refused promotion (config mistakes are 2)
REFUSED_EXIT = 3


class GateRefused(RecsysError):
    """A promotion refused by a gate; the message names the gate and its numbers."""

    exit_code = REFUSED_EXIT


@dataclass
class GateResult:
    gate: str
    kind: str
    status: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    on_unavailable: str = "refuse"

    @property
    def blocks(self) -> bool:
        return self.status == FAIL or (self.status == NOT_AVAILABLE and self.on_unavailable == "refuse")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "blocks": self.blocks}


@dataclass
class Candidate:
    """What a gate sees of a version: its registry entry and lineage."""

    name: str
    version: str
    kind: str
    lineage: dict[str, Any]
    tags: dict[str, str]
    path: str  # the artifact in the registry's store


#: ``per_user(candidate_or_champion, on=candidate, metric) -> (n_users,) values``; supplied by the
#: caller (the CLI rebuilds the candidate's data split from its resolved config)
PerUserFn = Callable[[Candidate, Candidate, str], Any]


@dataclass
class GateContext:
    champion: Candidate | None
    per_user: PerUserFn | None = None
    approval: dict[str, Any] | None = None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def offline_metrics(spec: Mapping[str, Any], cand: Candidate, ctx: GateContext) -> tuple[str, str, dict[str, Any]]:
    metric = str(spec.get("metric", "ndcg@10"))
    alpha, margin = float(spec.get("alpha", 0.05)), float(spec.get("margin", 0.0))
    mode = str(spec.get("mode", "non_inferior"))
    champ = ctx.champion
    if champ is None:
        return PASS, "no champion yet: first promotion, nothing to compare with", {"metric": metric}
    if champ.version == cand.version:
        return PASS, "already the champion", {"metric": metric}
    fa, fb = champ.lineage.get("data_fingerprint"), cand.lineage.get("data_fingerprint")
    if not fa or fa != fb:
        return NOT_AVAILABLE, (f"champion v{champ.version} was trained on other data (fingerprint {str(fa)[:12]} vs "
                               f"{str(fb)[:12]}): no paired comparison over the same users"), \
            {"metric": metric, "champion_fingerprint": fa, "candidate_fingerprint": fb}
    if ctx.per_user is None:
        return NOT_AVAILABLE, "no per-user evaluator given", {"metric": metric}
    import numpy as np
    from scipy import stats

    try:
        a = np.asarray(ctx.per_user(champ, cand, metric), dtype=np.float64)
        b = np.asarray(ctx.per_user(cand, cand, metric), dtype=np.float64)
    except RecsysError as e:
        return NOT_AVAILABLE, f"per-user metrics unavailable: {e}", {"metric": metric}
    if a.shape != b.shape or a.size < 2:
        return NOT_AVAILABLE, f"per-user arrays differ ({a.shape} vs {b.shape})", {"metric": metric}
    d = b - a
    n = int(d.size)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n) if sd > 0 else 0.0
    tcrit = float(stats.t.ppf(0.975, n - 1))
    # one-sided tests: worse than the champion by more than the margin / better than it
    if se > 0:
        t_worse = (mean + margin) / se
        p_worse = float(stats.t.cdf(t_worse, n - 1))
        p_better = float(stats.t.sf(mean / se, n - 1))
    else:
        p_worse = 0.0 if mean + margin < 0 else 1.0
        p_better = 0.0 if mean > 0 else 1.0
    ev = {"metric": metric, "split": "test", "n_users": n, "champion_version": champ.version,
          "champion_mean": float(a.mean()), "candidate_mean": float(b.mean()), "mean_diff": mean,
          "ci95": [mean - tcrit * se, mean + tcrit * se], "p_worse": p_worse, "p_better": p_better,
          "alpha": alpha, "margin": margin, "mode": mode, "test": "paired t-test over users (one-sided)",
          "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
          "diff_histogram": np.histogram(d, bins=20)[0].tolist(),
          "diff_range": [float(d.min()), float(d.max())]}
    nums = (f"{metric} {_fmt(ev['candidate_mean'])} vs champion v{champ.version} {_fmt(ev['champion_mean'])} "
            f"(diff {mean:+.4g}, 95% CI [{ev['ci95'][0]:+.4g}, {ev['ci95'][1]:+.4g}], paired t-test over {n} users")
    if p_worse < alpha:
        return FAIL, f"{nums}, worse by more than margin {margin:g}: p={p_worse:.2g} < {alpha:g})", ev
    if mode == "superior" and not p_better < alpha:
        return FAIL, f"{nums}, not better: p={p_better:.2g} >= {alpha:g})", ev
    return PASS, f"{nums}, p_worse={p_worse:.2g}, p_better={p_better:.2g})", ev


def onnx_parity(spec: Mapping[str, Any], cand: Candidate, ctx: GateContext) -> tuple[str, str, dict[str, Any]]:
    parity = cand.lineage.get("parity")
    if cand.kind not in ("ranker", "query_encoder") or not isinstance(parity, dict):
        return NOT_AVAILABLE, f"a {cand.kind} has no ONNX parity report (register its `recsys export` bundle)", {}
    tol = float(spec.get("max_abs_diff", 1e-5))
    got = float(parity.get("max_abs_diff", math.inf))
    ev: dict[str, Any] = {"max_abs_diff": got, "tolerance": tol}
    ok = got <= tol
    msg = f"max |torch - onnx| {got:.3g} (tolerance {tol:g})"
    if "min_topk_agreement" in parity:
        need = float(spec.get("min_topk_agreement", 0.999))
        agree = float(parity["min_topk_agreement"])
        ev.update(min_topk_agreement=agree, required_topk_agreement=need)
        ok = ok and agree >= need
        msg += f", top-k agreement {agree:.4f} (need {need:g})"
    return (PASS if ok else FAIL), msg, ev


def _ranker_feeds(manifest: dict[str, Any], batch: int) -> dict[str, Any]:
    import numpy as np

    feeds = {}
    for inp in manifest.get("inputs", []):
        dtype = np.dtype(str(inp.get("dtype", "float32")))
        feeds[inp["name"]] = np.zeros(batch, dtype=dtype)
    return feeds


def latency_budget(spec: Mapping[str, Any], cand: Candidate, ctx: GateContext) -> tuple[str, str, dict[str, Any]]:
    import numpy as np

    budget, n, batch = float(spec.get("p99_ms", 10.0)), int(spec.get("n_calls", 300)), int(spec.get("batch", 1))
    if cand.kind == "query_encoder":
        from recsys.serving.encoder import QueryEncoderRuntime

        rt = QueryEncoderRuntime(cand.path, intra_op_threads=1)
        max_len = int(rt.manifest["inputs"][0].get("max_len") or 50)
        x = np.random.default_rng(0).integers(1, rt.n_items + 1, (batch, max_len))

        def call() -> Any:
            return rt.encode(x)
    elif cand.kind == "ranker":
        from recsys.serving.ranker import RankerRuntime

        rr = RankerRuntime(cand.path, intra_op_threads=1)
        feeds = _ranker_feeds(rr.manifest, batch)

        def call() -> Any:
            return rr.score(feeds)
    else:
        return NOT_AVAILABLE, f"no latency measurement for a {cand.kind} (measured on export bundles)", \
            {"p99_ms_budget": budget}
    for _ in range(20):
        call()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    ev = {"p50_ms": p50, "p99_ms": p99, "p99_ms_budget": budget, "batch": batch, "n_calls": n,
          "threads": 1, "method": "onnxruntime, one thread, after 20 warm-up calls, measured at promotion time"}
    msg = f"p99 {p99:.3g} ms at batch {batch} (budget {budget:g} ms; p50 {p50:.3g} ms, {n} calls)"
    return (PASS if p99 <= budget else FAIL), msg, ev


def sensitive_approval(spec: Mapping[str, Any], cand: Candidate, ctx: GateContext) -> tuple[str, str, dict[str, Any]]:
    sensitive = cand.tags.get("recsys.sensitive", "false") == "true"
    if not sensitive:
        return PASS, "not tagged sensitive: no review needed", {"sensitive": False}
    if ctx.approval:
        return PASS, f"sensitive; approved by {ctx.approval.get('who')} at {ctx.approval.get('time')}", \
            {"sensitive": True, "approval": ctx.approval}
    return FAIL, (f"tagged sensitive and no recorded approval (recsys registry approve name={cand.name} "
                  f"version={cand.version} why=...)"), {"sensitive": True, "approval": None}


GATES: dict[str, Callable[..., tuple[str, str, dict[str, Any]]]] = {
    "offline_metrics": offline_metrics,
    "onnx_parity": onnx_parity,
    "latency_budget": latency_budget,
    "sensitive_approval": sensitive_approval,
    "fairness_gaps": fairness_gaps,
    "ope_lcb": ope_lcb,
    "canary_ab": canary_ab,
}


def run_gates(specs: Mapping[str, Mapping[str, Any]], cand: Candidate, ctx: GateContext) -> list[GateResult]:
    """Every declared gate, in declaration order. ``applies_to: [kinds]`` limits a gate to
    those kinds of version (others get ``not_applicable``, listed, never blocking); a gate
    with ``enabled: false`` is not run at all."""
    out = []
    for name, spec in specs.items():
        if spec is None or not spec.get("enabled", True):
            continue
        kind = str(spec.get("kind", name))
        if kind not in GATES:
            raise RecsysError(f"gates.{name}: unknown kind {kind!r}; expected one of {', '.join(GATES)}")
        on_unavailable = str(spec.get("on_unavailable", "refuse"))
        if on_unavailable not in ("refuse", "warn"):
            raise RecsysError(f"gates.{name}.on_unavailable={on_unavailable!r}: expected refuse or warn")
        applies = spec.get("applies_to")
        if applies and cand.kind not in applies:
            out.append(GateResult(name, kind, NOT_APPLICABLE, f"does not apply to a {cand.kind} (applies to: "
                                  f"{', '.join(applies)})", {}, on_unavailable))
            continue
        try:
            status, msg, ev = GATES[kind](spec, cand, ctx)
        except RecsysError as e:
            status, msg, ev = NOT_AVAILABLE, f"could not be evaluated: {e}", {}
        out.append(GateResult(name, kind, status, msg, ev, on_unavailable))
    return out


def refusal_line(name: str, version: str, results: list[GateResult]) -> str:
    """One line naming the blocking gate(s) and their numbers."""
    blocking = [r for r in results if r.blocks]
    parts = [f"gate {r.gate} {'failed' if r.status == FAIL else 'not available'}: {r.message}" for r in blocking]
    return f"promotion of {name} v{version} refused by " + "; ".join(parts)
