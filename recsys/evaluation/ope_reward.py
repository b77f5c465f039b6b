"""Cross-fitted reward model for the direct method and doubly robust estimators.

:class:`CTRRewardModel` is a small logistic regression (numpy Newton steps, L2)
on four log-derived features of a (context ``u``, action ``j``, position ``k``):

* one intercept per position (the position/examination effect),
* logit of the action's smoothed CTR, ``(clicks_j + s m) / (shows_j + s)``,
* logit of the context's smoothed CTR (how clicky this user is),
* logit of the smoothed CTR of (context, action group), shrunk towards the
  action's CTR: a user-item affinity computable from logs alone (the group is
  e.g. the item category; without groups this feature is left out),
* when given, one smoothed-CTR logit per categorical context feature
  (``context_codes``, e.g. a hashed user feature or the position of a
  one-impression-per-row log) and per categorical action feature
  (``action_codes``, e.g. an item feature column of the log), and one per pair
  (context feature, action feature), shrunk towards the action feature's CTR.

``m`` is the global CTR, ``s`` the prior strength. On the training rows the
counts are leave-one-out (the row's own reward removed), so the regression
weights are not fitted on features that already contain the label. Ids or
embeddings per user/item would overfit the logs; these features stay sound on
small logs and are cheap to evaluate for every action (``predict`` is one
broadcast over ``(b, K, M)``).

:func:`crossfit_ope_data` splits requests into folds, fits one model per fold on
the other folds, and builds :class:`recsys.evaluation.ope.OPEData` with every
request's reward-model terms coming from the model that did not see it.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from recsys.evaluation.ope import OPEData, policy_terms

PolicyFn = Callable[[np.ndarray], np.ndarray]  # contexts (b,) -> (b, K, M) or (b, M)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function without overflow warnings at large ``|z|``."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class CTRRewardModel:
    """Logistic regression on smoothed-CTR features (see the module docstring).

    Args:
        n_contexts: contexts are ``0..n_contexts-1`` (e.g. user indices).
        n_actions: actions are ``0..n_actions-1`` (column 0 may be padding).
        slate_size: K.
        action_group: ``(n_actions,)`` int group per action (e.g. category), or None.
        prior_strength: pseudo-shows of the Beta prior for every smoothed CTR.
        l2: ridge penalty of the regression (not on the intercepts).
    """

    def __init__(self, n_contexts: int, n_actions: int, slate_size: int, action_group: np.ndarray | None = None,
                 prior_strength: float = 20.0, l2: float = 1.0, context_codes: np.ndarray | None = None,
                 action_codes: np.ndarray | None = None):
        self.n_contexts, self.n_actions, self.k = n_contexts, n_actions, slate_size
        self.group = None if action_group is None else np.asarray(action_group, dtype=np.int64)
        self.s, self.l2 = prior_strength, l2
        self.ctx_codes = (np.zeros((n_contexts, 0), dtype=np.int64) if context_codes is None
                          else np.asarray(context_codes, dtype=np.int64).reshape(n_contexts, -1))
        self.act_codes = (np.zeros((n_actions, 0), dtype=np.int64) if action_codes is None
                          else np.asarray(action_codes, dtype=np.int64).reshape(n_actions, -1))

    # features -------------------------------------------------------------------
    def _smooth(self, clicks: np.ndarray, shows: np.ndarray, prior: np.ndarray | float) -> np.ndarray:
        return (clicks + self.s * prior) / (shows + self.s)

    def _features(self, u: np.ndarray, j: np.ndarray, loo_r: np.ndarray | None) -> np.ndarray:
        """Feature columns (without position one-hots) for broadcastable ``u``, ``j``: (..., F)."""
        sub_c = 0.0 if loo_r is None else loo_r
        sub_n = 0.0 if loo_r is None else 1.0
        item = self._smooth(self.item_c[j] - sub_c, self.item_n[j] - sub_n, self.m)
        user = self._smooth(self.user_c[u] - sub_c, self.user_n[u] - sub_n, self.m)
        shape = np.broadcast_shapes(np.shape(u), np.shape(j))
        cols = [np.broadcast_to(_logit(item), shape), np.broadcast_to(_logit(user), shape)]
        if self.group is not None:
            g = self.group[j]
            ug = self._smooth(self.ug_c[u, g] - sub_c, self.ug_n[u, g] - sub_n, item)
            cols.append(np.broadcast_to(_logit(ug), shape))
        for t, (cn, cc) in enumerate(self.ctx_stats):
            code = self.ctx_codes[u, t]
            cols.append(np.broadcast_to(_logit(self._smooth(cc[code] - sub_c, cn[code] - sub_n, self.m)), shape))
        for t, (cn, cc) in enumerate(self.act_stats):
            code = self.act_codes[j, t]
            act_ctr = self._smooth(cc[code] - sub_c, cn[code] - sub_n, self.m)
            cols.append(np.broadcast_to(_logit(act_ctr), shape))
            for t2, (pn, pc_) in enumerate(self.pair_stats[t]):  # context feature x action feature
                key = self.ctx_codes[u, t2] * self.n_act_codes[t] + code
                cols.append(np.broadcast_to(_logit(self._smooth(pc_[key] - sub_c, pn[key] - sub_n, act_ctr)), shape))
        return np.stack(cols, axis=-1)

    @staticmethod
    def _counts(codes: np.ndarray, r: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.bincount(codes, minlength=n_codes).astype(np.float64),
                np.bincount(codes, weights=r, minlength=n_codes))

    # fit / predict ----------------------------------------------------------------
    def fit(self, contexts: np.ndarray, actions: np.ndarray, positions: np.ndarray,
            rewards: np.ndarray, n_newton: int = 25, init: np.ndarray | None = None) -> "CTRRewardModel":
        """Fit on flat rows: contexts, actions, positions, rewards all ``(N,)``; ``init``: starting
        coefficients (e.g. a fit on similar data: a bootstrap refit converges in a few steps)."""
        u, j, k = (np.asarray(x, dtype=np.int64) for x in (contexts, actions, positions))
        r = np.asarray(rewards, dtype=np.float64)
        self.m = float(np.clip(r.mean() if len(r) else 0.1, 1e-4, 1 - 1e-4))
        self.item_n = np.bincount(j, minlength=self.n_actions).astype(np.float64)
        self.item_c = np.bincount(j, weights=r, minlength=self.n_actions)
        self.user_n = np.bincount(u, minlength=self.n_contexts).astype(np.float64)
        self.user_c = np.bincount(u, weights=r, minlength=self.n_contexts)
        if self.group is not None:
            n_g = int(self.group.max()) + 1
            key = u * n_g + self.group[j]
            self.ug_n = np.bincount(key, minlength=self.n_contexts * n_g).reshape(-1, n_g).astype(np.float64)
            self.ug_c = np.bincount(key, weights=r, minlength=self.n_contexts * n_g).reshape(-1, n_g)
        self.ctx_stats = [self._counts(self.ctx_codes[u, t], r, int(self.ctx_codes[:, t].max()) + 1)
                          for t in range(self.ctx_codes.shape[1])]
        self.act_stats = [self._counts(self.act_codes[j, t], r, int(self.act_codes[:, t].max()) + 1)
                          for t in range(self.act_codes.shape[1])]
        self.n_act_codes = [int(self.act_codes[:, t].max()) + 1 for t in range(self.act_codes.shape[1])]
        self.pair_stats = [[self._counts(self.ctx_codes[u, t2] * self.n_act_codes[t] + self.act_codes[j, t], r,
                                         (int(self.ctx_codes[:, t2].max()) + 1) * self.n_act_codes[t])
                            for t2 in range(self.ctx_codes.shape[1])] for t in range(self.act_codes.shape[1])]
        wt = np.ones(len(r))
        if len(r) and np.all((r == 0) | (r == 1)):  # identical (u, j, k, r) rows have identical features
            key = ((u * self.n_actions + j) * self.k + k) * 2 + r.astype(np.int64)
            _, first, counts = np.unique(key, return_index=True, return_counts=True)
            u, j, k, r, wt = u[first], j[first], k[first], r[first], counts.astype(np.float64)
        x = np.concatenate([np.eye(self.k)[k], self._features(u, j, r)], axis=1)  # (N, K + F)
        beta = np.zeros(x.shape[1])
        beta[: self.k] = _logit(np.full(self.k, self.m))
        if init is not None and len(init) == len(beta):
            beta = np.array(init, dtype=np.float64)
        pen = np.r_[np.zeros(self.k), np.full(x.shape[1] - self.k, self.l2)]
        for _ in range(n_newton):
            p = _sigmoid(x @ beta)
            grad = x.T @ (wt * (p - r)) + pen * beta
            hess = (x * (wt * p * (1 - p))[:, None]).T @ x + np.diag(pen + 1e-8)
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.abs(step).max() < 1e-8:
                break
        self.beta = beta
        return self

    def predict_pairs(self, contexts: np.ndarray, actions: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Click probability for broadcastable index arrays -> broadcast shape."""
        u, j, k = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (contexts, actions, positions)))
        z = self.beta[k] + self._features(u, j, None) @ self.beta[self.k:]
        return _sigmoid(z)

    def predict(self, contexts: np.ndarray) -> np.ndarray:
        """Every action at every position for each context: ``(b, K, M)``."""
        u = np.asarray(contexts, dtype=np.int64)
        z = self._features(u[:, None], np.arange(self.n_actions)[None, :], None) @ self.beta[self.k:]  # (b, M)
        out = _sigmoid(z[:, None, :] + self.beta[: self.k][None, :, None])
        return out


class CrossFit:
    """Reward models cross-fitted over request folds; reusable for many policies.

    Args:
        contexts: ``(R,)`` context index of each request (the policy's input).
        actions, rewards, propensities: ``(R, K)`` logged slates.
        n_folds: folds over requests (< 2: no reward model, q = 0, so DM = 0).
        action_group: ``(n_actions,)`` group per action for the affinity feature, or None.
        context_codes, action_codes: ``(n_contexts, C)`` / ``(n_actions, C)`` categorical
            features of the reward model (see :class:`CTRRewardModel`), or None.
        folds: ``(R,)`` fold of every request (default: a seeded random split).
    """

    def __init__(self, contexts: np.ndarray, actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray,
                 n_contexts: int, n_actions: int, *, n_folds: int = 5, seed: int = 0,
                 action_group: np.ndarray | None = None, prior_strength: float = 20.0,
                 context_codes: np.ndarray | None = None, action_codes: np.ndarray | None = None,
                 folds: np.ndarray | None = None, init: list[np.ndarray] | None = None):
        self.c = np.asarray(contexts, dtype=np.int64)
        self.a = np.asarray(actions, dtype=np.int64)
        self.r = np.asarray(rewards, dtype=np.float64)
        self.p = np.asarray(propensities, dtype=np.float64)
        n, k = self.a.shape
        self.n_contexts, self.n_actions, self.n_folds, self.seed = n_contexts, n_actions, n_folds, seed
        self.model_args: dict[str, Any] = dict(action_group=action_group, prior_strength=prior_strength,
                               context_codes=context_codes, action_codes=action_codes)
        self.folds = (np.random.default_rng(seed).permutation(n) % max(n_folds, 1) if folds is None
                      else np.asarray(folds, dtype=np.int64))
        self.models: list[CTRRewardModel] = []
        self.q_logged = np.zeros((n, k))
        pos = np.broadcast_to(np.arange(k), (n, k))
        for f in range(n_folds if n_folds >= 2 else 0):
            tr = self.folds != f
            mdl = CTRRewardModel(n_contexts, n_actions, k, action_group, prior_strength,
                                 context_codes=context_codes, action_codes=action_codes)
            mdl.fit(np.repeat(self.c[tr], k), self.a[tr].ravel(), pos[tr].ravel(), self.r[tr].ravel(),
                    init=None if init is None else init[f])
            self.models.append(mdl)
            self.q_logged[~tr] = mdl.predict_pairs(self.c[~tr, None], self.a[~tr], pos[~tr])

    def ope_data(self, policy_fn: PolicyFn, support_fn: PolicyFn | None = None, block: int = 256) -> OPEData:
        """Terms of ``policy_fn`` (contexts ``(b,)`` -> ``(b, K, M)`` or ``(b, M)``, called
        once per block of distinct contexts); ``support_fn`` gives a bool mask of the
        same shape, True where the logger has no support (diagnostics only)."""
        c, a = self.c, self.a
        n, k = a.shape
        target, q_target, unsupported = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
        uniq, inv = np.unique(c, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[order], np.arange(0, len(uniq) + block, block))
        for bi, s in enumerate(range(0, len(uniq), block)):
            ub = uniq[s:s + block]
            rows = order[bounds[bi]:bounds[bi + 1]]
            loc = inv[rows] - s
            probs = policy_fn(ub)  # (b, K, M) or (b, M)
            p3 = probs if probs.ndim == 3 else probs[:, None, :]
            kk = np.arange(k)[None, :] if p3.shape[1] == k else np.zeros((1, k), dtype=np.int64)
            target[rows] = p3[loc[:, None], kk, a[rows]]
            zeros = np.zeros((len(ub), k), dtype=np.int64)
            if support_fn is not None:
                unsupported[rows] = policy_terms(probs, zeros, None, support_fn(ub))[2][loc]
            for f, mdl in enumerate(self.models):
                sel = self.folds[rows] == f
                if sel.any():  # only the contexts with requests in this fold
                    need, at = np.unique(loc[sel], return_inverse=True)
                    p_need = probs[need]
                    qt = policy_terms(p_need, zeros[need], mdl.predict(ub[need]))[1]  # (n_need, K)
                    q_target[rows[sel]] = qt[np.ravel(at)]
        return OPEData(self.r, self.p, target, self.q_logged, q_target, unsupported)

    def ope_data_requests(self, request_fn: PolicyFn, block: int = 256) -> OPEData:
        """Terms of a policy that differs per request, not per context (a stateful
        service replayed request by request): ``request_fn(rows (b,))`` -> ``(b, K, M)``
        distributions of those log rows; the reward model still acts on the rows'
        contexts."""
        c, a = self.c, self.a
        n, k = a.shape
        target, q_target = np.zeros((n, k)), np.zeros((n, k))
        zeros = np.zeros((min(block, n), k), dtype=np.int64)
        for s in range(0, n, block):
            rows = np.arange(s, min(s + block, n))
            probs = request_fn(rows)
            target[rows] = policy_terms(probs, a[rows])[0]
            for f, mdl in enumerate(self.models):
                sel = self.folds[rows] == f
                if sel.any():
                    ctx, at = np.unique(c[rows[sel]], return_inverse=True)
                    q = mdl.predict(ctx)[np.ravel(at)]
                    q_target[rows[sel]] = policy_terms(probs[sel], zeros[:int(sel.sum())], q)[1]
        return OPEData(self.r, self.p, target, self.q_logged, q_target, np.zeros((n, k)))

    def refit_bootstrap(self, policy_fn: PolicyFn, n_bootstrap: int, clip: float | None = None,
                        switch_tau: float = np.inf, seed: int = 0, block: int = 256,
                        max_cache_bytes: float = 2e8) -> dict[str, np.ndarray]:
        """Every estimator on ``n_bootstrap`` resamples of the requests, the reward
        models **refitted on each resample** (cross-fitted again, a request keeping its
        fold so a duplicated request never trains the model that predicts it): name ->
        ``(n_bootstrap,)`` values. The policy's distributions are computed once per
        context (cached when they fit in ``max_cache_bytes``)."""
        from recsys.evaluation.ope import point_estimates

        n, k = self.a.shape
        uniq = np.unique(self.c)
        fn = policy_fn
        first = policy_fn(uniq[:1])
        if first.size * len(uniq) * 8 <= max_cache_bytes:
            cache = np.concatenate([policy_fn(uniq[s:s + block]) for s in range(0, len(uniq), block)])

            def fn(ctx: np.ndarray) -> np.ndarray:  # noqa: F811 - the cached policy
                return cache[np.searchsorted(uniq, ctx)]

        rng = np.random.default_rng([seed, 17])
        out: dict[str, list[float]] = {}
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            cf = CrossFit(self.c[idx], self.a[idx], self.r[idx], self.p[idx], self.n_contexts, self.n_actions,
                          n_folds=self.n_folds, seed=self.seed, folds=self.folds[idx],
                          init=[m.beta for m in self.models], **self.model_args)
            for name, e in point_estimates(cf.ope_data(fn, None, block), clip, switch_tau).items():
                out.setdefault(name, []).append(e.value)
        return {name: np.asarray(v) for name, v in out.items()}


def crossfit_ope_data(contexts: np.ndarray, actions: np.ndarray, rewards: np.ndarray, propensities: np.ndarray,
                      policy_fn: PolicyFn, n_contexts: int, n_actions: int, *, n_folds: int = 5, seed: int = 0,
                      action_group: np.ndarray | None = None, support_fn: PolicyFn | None = None,
                      block: int = 256, prior_strength: float = 20.0) -> OPEData:
    """One-shot :class:`CrossFit` + :meth:`CrossFit.ope_data` (see both)."""
    cf = CrossFit(contexts, actions, rewards, propensities, n_contexts, n_actions, n_folds=n_folds, seed=seed,
                  action_group=action_group, prior_strength=prior_strength)
    return cf.ope_data(policy_fn, support_fn, block)
