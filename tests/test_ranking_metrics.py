"""Full-ranking metrics against hand-computed cases and a brute-force reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.evaluation import ranking
from recsys.evaluation.ranking import evaluate_ranking, top_k_items
from recsys.utils.sparse import CSR

# item ids 1..5; column 0 is padding
SCORES = np.array([[0.0, 0.5, 0.9, 0.1, 0.9, 0.3]], dtype=np.float32)


def _fixed(scores: np.ndarray):
    def score_fn(users, hist):
        return torch.as_tensor(scores[users])

    return score_fn


def _eval(history, targets, ks=(1, 2, 3, 5, 10), scores=SCORES, n_items=None, **kw):
    n_users = len(targets)
    return evaluate_ranking(
        _fixed(scores), np.arange(n_users), CSR.from_lists(history), CSR.from_lists(targets),
        n_items=n_items or scores.shape[1] - 1, ks=ks, device="cpu", **kw,
    ).metrics


def test_single_target_with_tie_broken_by_index():
    # order by (-score, id): 2, 4, 1, 5, 3 -> target 4 has rank 1
    m = _eval([[]], [[4]])
    assert m["hr@1"] == 0 and m["ndcg@1"] == 0
    assert m["hr@2"] == 1
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert m["mrr"] == pytest.approx(0.5)


def test_pessimistic_ties_give_no_credit():
    assert _eval([[]], [[2]])["mrr"] == pytest.approx(1.0)
    assert _eval([[]], [[2]], ties="pessimistic")["mrr"] == pytest.approx(0.5)


def test_history_is_excluded_from_the_ranking():
    m = _eval([[2]], [[4]])
    assert m["hr@1"] == 1 and m["mrr"] == 1.0
    m = _eval([[2]], [[4]], exclude_history=False)
    assert m["mrr"] == pytest.approx(0.5)


def test_cutoff_larger_than_catalogue():
    m = _eval([[2, 4]], [[3]], ks=(10, 100))
    # remaining order: 1, 5, 3 -> rank 2
    assert m["hr@100"] == 1 and m["recall@10"] == 1
    assert m["ndcg@100"] == pytest.approx(1 / math.log2(4))
    assert m["precision@10"] == pytest.approx(0.1)


def test_several_targets():
    m = _eval([[]], [[1, 3]])  # ranks 2 and 4
    idcg2 = 1 + 1 / math.log2(3)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4)) / idcg2)
    assert m["map@3"] == pytest.approx((1 / 3) / 2)
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(4) + 1 / math.log2(6)) / idcg2)
    assert m["map@5"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["hr@3"] == 1 and m["hr@2"] == 0


def test_target_in_history_can_never_be_hit():
    m = _eval([[4]], [[4]], ks=(5,))
    assert m["hr@5"] == 0 and m["mrr"] == 0


def test_users_without_targets_are_skipped():
    scores = np.repeat(SCORES, 2, axis=0)
    res = evaluate_ranking(_fixed(scores), np.arange(2), CSR.from_lists([[], []]),
                           CSR.from_lists([[2], []]), n_items=5, ks=(1,), device="cpu")
    assert res.n_users == 1 and res.metrics["hr@1"] == 1.0


def test_nan_scores_are_rejected():
    bad = SCORES.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _eval([[]], [[1]], scores=bad)


def test_wrong_score_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        _eval([[]], [[1]], scores=SCORES[:, :4], n_items=5)


def _reference(scores, history, targets, k):
    """Brute force: sort every row by (-score, id), skipping excluded items."""
    ndcg, hits = [], []
    for u, (h, t) in enumerate(zip(history, targets)):
        if not t:
            continue
        items = [i for i in range(1, scores.shape[1]) if i not in set(h)]
        items.sort(key=lambda i: (-scores[u, i], i))
        top = items[:k]
        rel = [1.0 if i in set(t) else 0.0 for i in top]
        dcg = sum(r / math.log2(p + 2) for p, r in enumerate(rel))
        idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(t))))
        ndcg.append(dcg / idcg)
        hits.append(float(any(rel)))
    return float(np.mean(ndcg)), float(np.mean(hits))


@pytest.fixture
def random_case():
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 40
    scores = rng.integers(0, 6, size=(n_users, n_items + 1)).astype(np.float32)  # many ties
    history, targets = [], []
    for _ in range(n_users):
        perm = rng.permutation(np.arange(1, n_items + 1))
        nh, nt = rng.integers(0, 10), rng.integers(0, 40 - 10 + 1)
        history.append(perm[:nh].tolist())
        targets.append(perm[nh : nh + nt].tolist())
    return scores, history, targets


def test_matches_brute_force_reference(random_case):
    scores, history, targets = random_case
    m = _eval(history, targets, ks=(3, 10), scores=scores)
    for k in (3, 10):
        ndcg, hr = _reference(scores, history, targets, k)
        assert m[f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-12)
        assert m[f"hr@{k}"] == pytest.approx(hr, abs=1e-12)


def test_identical_at_any_batch_size_and_rank_path(random_case, monkeypatch):
    scores, history, targets = random_case
    base = _eval(history, targets, scores=scores, batch_size=1000)
    for bs in (1, 7, 33):
        assert _eval(history, targets, scores=scores, batch_size=bs) == base
    monkeypatch.setattr(ranking, "_SORT_PATH_MIN_TARGETS", 0)  # force the sort path
    assert _eval(history, targets, scores=scores, batch_size=5) == pytest.approx(base, abs=1e-12)


def test_top_k_lists_agree_with_ranks(random_case):
    scores, history, targets = random_case
    res = evaluate_ranking(_fixed(scores), np.arange(len(targets)), CSR.from_lists(history),
                           CSR.from_lists(targets), n_items=40, ks=(10,), device="cpu", top_k=10,
                           keep_per_user=True)
    top = res.top_items
    assert top.shape == (60, 10)
    with_targets = [u for u, t in enumerate(targets) if t]
    hr_from_lists = [float(bool(set(top[u]) & set(targets[u]))) for u in with_targets]
    assert np.array_equal(res.per_user["hr@10"], np.array(hr_from_lists))
    for u in range(60):
        assert not set(top[u]) & set(history[u])  # history excluded
        assert len(set(top[u].tolist())) == 10


def test_top_k_pads_when_catalogue_is_exhausted():
    s = torch.tensor([[float("-inf"), 1.0, float("-inf"), 3.0, 3.0]])
    assert top_k_items(s, 6).tolist() == [[3, 4, 1, 0, 0, 0]]
