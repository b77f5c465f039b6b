"""The promotion gates that read what happened online (issue 15, item 2): the OPE lower
bound on recent served logs and the canary's A/B result. Same signature as the gates of
:mod:`recsys.lifecycle.gates` (``(spec, candidate, context) -> (status, message,
evidence)``); they are registered there under the kinds ``ope_lcb`` and ``canary_ab``.

``ope_lcb``
    ``log``: the joined served log (``recsys logs join`` output: the logged-feedback
    Parquet that ``recsys ope`` reads: request_id, user_id, position, item_id, click,
    propensity, ...), optionally restricted to the rows of one ``arm`` (the champion's:
    the log is the champion's own served traffic). ``target``: the candidate policy on
    the log's users, a Parquet ``user_id, item_id, prob`` (its distribution over items
    per user, the same at every slate position; items the log never showed are the
    unsupported mass). The estimators are those of ``recsys ope``
    (:mod:`recsys.evaluation.ope`): ``estimator`` (``dr`` default, or ``snips``) with a
    per-(item, position) mean-click reward model and a percentile bootstrap over
    requests (``n_bootstrap``, ``alpha`` 0.05: the lower end of the 95% interval).
    Passes when that lower bound >= the champion's value x (1 - ``tolerance``); the
    champion's value is ``champion_value`` when given, else the log's on-policy value
    (mean clicks per slate: the champion served the log).
``canary_ab``
    ``summary``: the ``summary.json`` of ``recsys ab analyze`` on the canary's log (or
    its ``analysis`` dict alone); ``arm``: the challenger's arm (default
    ``<name>_v<version>``, the arm ``recsys lifecycle watch`` writes). Passes when the
    SRM test is clean (p >= ``srm_alpha``, default 0.001), every ``guardrails`` metric
    held (``{metric: {higher_is_better: true, max_relative_harm: 0.0}}``: harm means
    the upper end of the lift interval below ``-max_relative_harm`` for a
    higher-is-better metric, the lower end above ``+max_relative_harm`` otherwise) and,
    when ``experiment_state`` (the JSON of ``GET /v1/admin/experiment``) is given, the
    service did not roll the arm back.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.utils.errors import DataError, RecsysError

PASS, FAIL, NOT_AVAILABLE = "pass", "fail", "not_available"  # = recsys.lifecycle.gates' statuses

GateOut = tuple[str, str, dict[str, Any]]
MAX_DENSE = 50_000_000  # users x items of the candidate's distribution held in memory


def _file(spec: Mapping[str, Any], key: str, gate: str) -> Path | None:
    v = spec.get(key)
    if v in (None, ""):
        return None
    p = Path(str(v))
    if not p.exists():
        raise DataError(p, f"gates.{gate}.{key}: file not found")
    return p


def _target_matrix(path: Path, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(P, unsupported)``: the candidate's per-user distribution over the log's items
    ``(n_users + 1, n_items + 1)`` and its mass on items the log never showed ``(n_users + 1,)``."""
    import polars as pl

    df = pl.read_parquet(path)
    for c in ("user_id", "item_id", "prob"):
        if c not in df.columns:
            raise DataError(path, "missing column (expected user_id, item_id, prob)", column=c)
    prob = df["prob"].cast(pl.Float64).to_numpy()
    if not np.isfinite(prob).all() or (prob < 0).any():
        raise DataError(path, "probabilities must be finite and >= 0", column="prob")
    n_u, n_i = len(user_ids), len(item_ids)
    if n_u * n_i > MAX_DENSE:
        raise RecsysError(f"{path}: {n_u - 1} users x {n_i - 1} items is too large for the gate (max {MAX_DENSE})")
    upos = {str(u): i for i, u in enumerate(user_ids) if i > 0}
    ipos = {str(j): i for i, j in enumerate(item_ids) if i > 0}
    users = df["user_id"].cast(pl.String).to_list()
    items = df["item_id"].cast(pl.String).to_list()
    u = np.fromiter((upos.get(x, 0) for x in users), np.int64, len(users))
    j = np.fromiter((ipos.get(x, 0) for x in items), np.int64, len(items))
    total = np.bincount(u, weights=prob, minlength=n_u)
    covered = np.bincount(u[u > 0], minlength=n_u)
    missing = [str(x) for x in user_ids[1:][covered[1:] == 0][:3]]
    if missing:
        raise DataError(path, f"no distribution for user(s) {', '.join(missing)} of the log")
    if not np.allclose(total[1:], 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(total[1:] - 1.0))) + 1
        raise DataError(path, f"probabilities of user {user_ids[bad]} sum to {total[bad]:.6g}, expected 1",
                        column="prob")
    keep = (u > 0) & (j > 0)
    P = np.zeros((n_u, n_i))
    np.add.at(P, (u[keep], j[keep]), prob[keep])
    unsupported = np.bincount(u[(u > 0) & (j == 0)], weights=prob[(u > 0) & (j == 0)], minlength=n_u)
    return P, unsupported


def ope_lcb(spec: Mapping[str, Any], cand: Any, ctx: Any) -> GateOut:
    from recsys.data.bandit_logs import from_table, read_table
    from recsys.evaluation import ope as O

    log_path, target_path = _file(spec, "log", "ope_lcb"), _file(spec, "target", "ope_lcb")
    if log_path is None:
        return NOT_AVAILABLE, "no served log given (gates.ope_lcb.log: a `recsys logs join` Parquet)", {}
    if target_path is None:
        return NOT_AVAILABLE, ("no candidate policy on the log's users given (gates.ope_lcb.target: "
                               "Parquet user_id, item_id, prob)"), {}
    estimator = str(spec.get("estimator", "dr")).lower()
    if estimator not in ("dr", "snips"):
        raise RecsysError(f"gates.ope_lcb.estimator={estimator!r}: expected dr or snips")
    tol, alpha = float(spec.get("tolerance", 0.05)), float(spec.get("alpha", 0.05))
    n_boot, seed = int(spec.get("n_bootstrap", 500)), int(spec.get("seed", 0))
    table, csv = read_table(log_path)
    arm = spec.get("arm")
    if arm is not None:
        import pyarrow.compute as pc

        if "arm" not in table.column_names:
            raise DataError(log_path, "gates.ope_lcb.arm is set but the log has no arm column", column="arm")
        table = table.filter(pc.equal(table.column("arm"), str(arm)))
        if table.num_rows == 0:
            raise DataError(log_path, f"no rows of arm {arm!r}", column="arm")
    log = from_table(table, str(log_path), csv=csv)
    P, unsup = _target_matrix(target_path, log.user_ids, log.item_ids)
    r, k = log.rewards.shape
    # reward model: smoothed mean click per (item, position), shrunk to the position's mean
    prior = float(spec.get("reward_prior", 10.0))
    pos_mean = log.rewards.mean(axis=0)  # (K,)
    sums, counts = np.zeros((P.shape[1], k)), np.zeros((P.shape[1], k))
    for pos in range(k):
        np.add.at(sums[:, pos], log.actions[:, pos], log.rewards[:, pos])
        np.add.at(counts[:, pos], log.actions[:, pos], 1.0)
    q = (sums + prior * pos_mean[None, :]) / (counts + prior)  # (n_items + 1, K)
    pu = P[log.users]  # (R, n_items + 1): the candidate's distribution for each request's user
    target = np.take_along_axis(pu, log.actions, axis=1)
    data = O.OPEData(rewards=log.rewards, propensities=log.propensities, target_probs=target,
                     q_logged=q[log.actions, np.arange(k)[None, :]], q_target=pu @ q,
                     unsupported=np.repeat(unsup[log.users][:, None], k, axis=1))
    res = O.estimate_all(data, clip=spec.get("clip"), n_bootstrap=n_boot, alpha=alpha, seed=seed)
    e = res.estimates[estimator.upper()]
    logged = float(log.rewards.sum(axis=1).mean())
    champ_value = float(spec["champion_value"]) if spec.get("champion_value") is not None else logged
    need = champ_value * (1.0 - tol)
    ev = {"log": str(log_path), "target": str(target_path), "arm": arm, "n_requests": r, "slate_size": k,
          "estimator": estimator, "estimate": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
          "interval": f"percentile bootstrap over requests, {n_boot} resamples, {1 - alpha:.0%}",
          "estimates": {n: {"estimate": x.value, "ci_low": x.ci_low, "ci_high": x.ci_high}
                        for n, x in res.estimates.items() if n in ("DR", "SNIPS", "IPS", "DM")},
          "champion_value": champ_value, "champion_value_source": "given" if spec.get("champion_value") is not None
          else "on-policy value of the log", "tolerance": tol, "threshold": need,
          "diagnostics": {"ess": res.diagnostics.ess, "max_weight": res.diagnostics.max_weight,
                          "unsupported_mass": res.diagnostics.unsupported_mass,
                          "warnings": list(res.diagnostics.warnings)}}
    if not math.isfinite(e.ci_low):
        return NOT_AVAILABLE, f"{estimator.upper()} interval is not finite ({r} requests)", ev
    msg = (f"{estimator.upper()} {e.value:.4g} clicks/slate, {1 - alpha:.0%} lower bound {e.ci_low:.4g} vs champion "
           f"{champ_value:.4g} x (1 - {tol:g}) = {need:.4g} over {r} served requests")
    if res.diagnostics.warnings:
        msg += f" (warning: {res.diagnostics.warnings[0]})"
    return (PASS if e.ci_low >= need else FAIL), msg, ev


def _analysis(spec: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    p = _file(spec, "summary", "canary_ab")
    if p is None:
        raise KeyError("summary")
    try:
        s = json.loads(p.read_text())
    except ValueError as e:
        raise DataError(p, f"not JSON ({e})") from None
    a = s.get("analysis", s) if isinstance(s, dict) else None
    if not isinstance(a, dict) or "srm" not in a or "metrics" not in a:
        raise DataError(p, "not a `recsys ab analyze` summary (expected analysis.srm and analysis.metrics)")
    return a, str(p)


def canary_ab(spec: Mapping[str, Any], cand: Any, ctx: Any) -> GateOut:
    try:
        a, where = _analysis(spec)
    except KeyError:
        return NOT_AVAILABLE, "no canary result given (gates.canary_ab.summary: `recsys ab analyze` summary.json)", {}
    arm = str(spec.get("arm") or f"{cand.name}_v{cand.version}")
    if arm not in (a.get("arms") or {}):
        raise DataError(where, f"arm {arm!r} is not in the experiment (arms: {', '.join(a.get('arms') or {})})")
    srm_alpha = float(spec.get("srm_alpha", 0.001))
    srm_p = float(a["srm"]["p_value"])
    ev: dict[str, Any] = {"summary": where, "arm": arm, "control": a.get("control"), "arms": a.get("arms"),
                          "srm_p_value": srm_p, "srm_alpha": srm_alpha, "guardrails": {}}
    problems = []
    if srm_p < srm_alpha:
        problems.append(f"SRM p={srm_p:.2g} < {srm_alpha:g} (arm counts {a.get('arms')})")
    guards = dict(spec.get("guardrails") or {})
    if not guards:
        raise RecsysError("gates.canary_ab.guardrails: name at least one metric "
                          "({metric: {higher_is_better: true, max_relative_harm: 0}})")
    for metric, g in guards.items():
        g = dict(g or {})
        entry = (a["metrics"].get(metric) or {}).get("comparisons", {}).get(arm)
        if entry is None:
            raise DataError(where, f"no comparison of metric {metric!r} for arm {arm!r} "
                                   f"(metrics: {', '.join(a['metrics'])})")
        lift = entry["lift"]
        higher, harm = bool(g.get("higher_is_better", True)), float(g.get("max_relative_harm", 0.0))
        harmed = lift["ci_high"] < -harm if higher else lift["ci_low"] > harm
        ev["guardrails"][metric] = {"lift": lift["lift"], "ci_low": lift["ci_low"], "ci_high": lift["ci_high"],
                                    "p_value": entry.get("p_value"), "higher_is_better": higher,
                                    "max_relative_harm": harm, "held": not harmed}
        if harmed:
            problems.append(f"guardrail {metric} broken: lift {lift['lift']:+.2%} "
                            f"[{lift['ci_low']:+.2%}, {lift['ci_high']:+.2%}]")
    state_path = _file(spec, "experiment_state", "canary_ab")
    if state_path is not None:
        try:
            state = json.loads(state_path.read_text())
            rb = (state.get("arms") or {}).get(arm, {}).get("rolled_back")
        except (ValueError, AttributeError):
            raise DataError(state_path, "not the JSON of GET /v1/admin/experiment") from None
        ev["rolled_back"] = rb
        if rb:
            problems.append(f"the service rolled the arm back ({', '.join(rb.get('reasons') or []) or 'guardrail'})")
    held = ", ".join(f"{m} {v['lift']:+.2%} [{v['ci_low']:+.2%}, {v['ci_high']:+.2%}]"
                     for m, v in ev["guardrails"].items())
    if problems:
        return FAIL, f"canary arm {arm}: " + "; ".join(problems), ev
    return PASS, (f"canary arm {arm}: SRM clean (p={srm_p:.2g}), guardrails held ({held})"
                  + (", no rollback" if state_path is not None else "")), ev
