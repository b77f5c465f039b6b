"""Off-policy evaluation of recommendation policies on logged impressions.

How one estimate is made (``recsys ope policy=<name>``), top to bottom:

1. :func:`build_setup` joins a log (the synthetic world's impressions, or a file
   read by :func:`read_log`) to the prepared catalogue: id maps, user histories;
   :func:`build_log_setup` takes a log file alone (:func:`read_log_only`): its own
   items (or a catalogue file's) are the action set.
2. A policy builder from ``configs/policy/<name>.yaml`` (``_target_`` in
   :mod:`recsys.ope.policies`, ``_partial_``) goes to :func:`build_policy`, which
   builds it on the setup (fitting a model where it has one) and warms up a bandit.
3. :func:`evaluate_policy` runs every estimator of :mod:`recsys.evaluation.ope`
   (reward model cross-fitted, bootstrap intervals, diagnostics) and, on the
   synthetic world, the exact true value; it returns a JSON-ready dict.

The studies build on the same pieces: :func:`run_bench` (estimators over re-sampled
logs), :func:`run_align` (offline metric vs OPE vs truth), :func:`run_regret`
(bandits online). Nothing here prints or reads configs; the text reports are in
:mod:`recsys.evaluation.ope_report`.
"""
from __future__ import annotations

from recsys.ope.align import run_align
from recsys.ope.bench import run_bench
from recsys.ope.evaluate import EstimatorOptions, crossfit, evaluate_policy
from recsys.ope.policies import PolicyFactory, build_policy
from recsys.ope.regret import run_regret
from recsys.ope.setup import (Setup, build_log_setup, build_setup, model_scores, read_catalogue, read_log,
                              read_log_only, support_fn, true_value)

__all__ = ["EstimatorOptions", "PolicyFactory", "Setup", "build_log_setup", "build_policy", "build_setup", "crossfit",
           "read_catalogue", "read_log_only",
           "evaluate_policy", "model_scores", "read_log", "run_align", "run_bench", "run_regret", "support_fn",
           "true_value"]
