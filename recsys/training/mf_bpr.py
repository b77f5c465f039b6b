"""Matrix factorisation trained with BPR (Rendle et al., 2009), behind the
baselines' ``fit`` / ``score`` interface (the floor neural models must beat)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recsys.models.mf import MatrixFactorization
from recsys.utils.sparse import CSR


class BPRMF:
    """Args:
        dim: embedding size.
        epochs: passes over the training interactions (one sampled negative each).
        lr, l2, batch_size, seed: optimisation.
    Negatives are uniform over the catalogue, re-drawn when they hit one of the
    user's training items (the user's future is never looked at).
    """

    def __init__(self, dim: int = 64, epochs: int = 30, lr: float = 0.01, l2: float = 1e-5,
                 batch_size: int = 4096, seed: int = 0):
        self.dim, self.epochs, self.lr, self.l2, self.batch_size, self.seed = dim, epochs, lr, l2, batch_size, seed

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "BPRMF":
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.n_items = n_items
        self.net = MatrixFactorization(n_users, n_items, self.dim)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        pos_keys = np.unique(users.astype(np.int64) * (n_items + 1) + items)
        u_all, i_all = torch.as_tensor(users), torch.as_tensor(items)
        for _ in range(self.epochs):
            order = rng.permutation(len(users))
            neg = rng.integers(1, n_items + 1, size=len(users))
            for _ in range(3):  # re-draw negatives that are training positives
                hit = np.isin(users * (n_items + 1) + neg, pos_keys)
                if not hit.any():
                    break
                neg[hit] = rng.integers(1, n_items + 1, size=int(hit.sum()))
            neg_t = torch.as_tensor(neg)
            for s in range(0, len(order), self.batch_size):
                b = torch.as_tensor(order[s : s + self.batch_size])
                u, i, j = u_all[b], i_all[b], neg_t[b]
                diff = self.net(u, i) - self.net(u, j)
                reg = self.net.user(u).pow(2).sum() + self.net.item(i).pow(2).sum() + self.net.item(j).pow(2).sum()
                loss = -F.logsigmoid(diff).mean() + self.l2 * reg / len(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        return self.net.all_scores(torch.as_tensor(users, dtype=torch.long)).numpy()
