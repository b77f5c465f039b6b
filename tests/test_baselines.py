"""Baselines through the exact evaluator."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.ranking import evaluate_ranking
from recsys.models.baselines import MarkovChain, Popularity, RandomScores
from recsys.utils.sparse import CSR


def test_popularity_ranks_by_training_count():
    users = np.array([1, 1, 2, 2, 3])
    items = np.array([3, 2, 3, 1, 3])
    m = Popularity().fit(users, items, 3, 4)
    s = np.asarray(m.score(np.array([1]), CSR.from_lists([[]])))
    assert s.shape == (1, 5)
    assert np.argsort(-s[0, 1:], kind="stable")[:2].tolist() == [2, 0]  # item 3, then 1 (tie with 2, lower id)


def test_random_scores_do_not_depend_on_batch():
    m = RandomScores(seed=3).fit(np.array([1]), np.array([1]), 5, 10)
    a = m.score(np.array([4, 2]), CSR.from_lists([[], []]))
    b = m.score(np.array([2]), CSR.from_lists([[]]))
    assert np.array_equal(a[1], b[0]) and not np.array_equal(a[0], a[1])


def test_markov_chain_predicts_the_observed_successor():
    # every user goes 1 -> 2 -> 3; item 4 is popular but never follows anything
    users = np.array([1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    items = np.array([1, 2, 3, 1, 2, 3, 4, 4, 4, 4])
    m = MarkovChain().fit(users, items, 3, 4)
    hist = CSR.from_lists([[1], [2], []])
    s = m.score(np.array([1, 2, 3]), hist)
    assert s[0].argmax() == 2 and s[1].argmax() == 3
    assert s[2].argmax() == 4  # empty history -> popularity backoff
    res = evaluate_ranking(m.score, np.array([1, 2]), CSR.from_lists([[1], [2]]),
                           CSR.from_lists([[2], [3]]), 4, ks=(1,), device="cpu")
    assert res.metrics["hr@1"] == pytest.approx(1.0)


def test_ease_matches_the_closed_form_and_has_zero_diagonal():
    from recsys.models.baselines import EASE

    users = np.array([1, 1, 2, 2, 2, 3])
    items = np.array([1, 2, 1, 2, 3, 3])
    m = EASE(l2=1.0).fit(users, items, 3, 3)
    x = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=float)
    p = np.linalg.inv(x.T @ x + np.eye(3))
    b = np.eye(3) - p / np.diag(p)
    assert np.allclose(m.weights[1:, 1:], b, atol=1e-5)
    assert np.allclose(np.diag(m.weights), 0)
    s = m.score(np.array([1]), CSR.from_lists([[1]]))
    assert np.allclose(s[0, 1:], b[0], atol=1e-5)


def test_itemknn_cosine_and_neighbour_cut():
    from recsys.models.baselines import ItemKNN

    users = np.array([1, 1, 2, 2, 3, 3, 4])
    items = np.array([1, 2, 1, 2, 1, 3, 4])
    m = ItemKNN(k=1, shrink=0.0).fit(users, items, 4, 4)
    # cos(1,2) = 2 / sqrt(3*2); cos(1,3) = 1 / sqrt(3*1); item 4 co-occurs with nothing
    assert m.weights[1, 2] == pytest.approx(2 / np.sqrt(6), rel=1e-5)
    assert m.weights[2, 1] == pytest.approx(2 / np.sqrt(6), rel=1e-5)
    assert m.weights[1, 3] == pytest.approx(1 / np.sqrt(3), rel=1e-5)  # column 3: neighbours of item 3
    assert (m.weights[:, 1] > 0).sum() == 1  # k=1: only the best neighbour of item 1 kept
    s = m.score(np.array([9]), CSR.from_lists([[2]]))
    assert s[0].argmax() == 1


def test_sequence_recommender_fits_and_scores_like_a_baseline():
    from recsys.training.sequence.recommender import SequenceRecommender

    rng = np.random.default_rng(0)
    # every user walks i -> i+1 -> i+2 ...: the next item is predictable from the last one
    starts = rng.integers(1, 20, size=200)
    users = np.repeat(np.arange(1, 201), 6)
    items = (starts[:, None] + np.arange(6)[None, :]).ravel()
    m = SequenceRecommender(hidden=32, n_layers=1, max_len=8, dropout=0.0, epochs=30, lr=3e-3).fit(users, items, 200, 26)
    hist = CSR.from_lists([[3, 4, 5], [10, 11]])
    s = m.score(np.array([1, 2]), hist)
    assert s.shape == (2, 27)
    assert s[0, 1:].argmax() + 1 == 6 and s[1, 1:].argmax() + 1 == 12


def test_bpr_mf_learns_two_taste_groups():
    from recsys.training.mf_bpr import BPRMF

    rng = np.random.default_rng(0)
    # users 1..50 like items 1..10, users 51..100 like items 11..20
    users = np.repeat(np.arange(1, 101), 5)
    items = np.where(users <= 50, rng.integers(1, 11, size=500), rng.integers(11, 21, size=500))
    m = BPRMF(dim=8, epochs=40, lr=0.05, seed=0).fit(users, items, 100, 20)
    s = m.score(np.array([3, 70]), CSR.from_lists([[], []]))
    assert s.shape == (2, 21)
    top_a, top_b = np.argsort(-s[0, 1:])[:10] + 1, np.argsort(-s[1, 1:])[:10] + 1
    assert (top_a <= 10).mean() >= 0.9 and (top_b > 10).mean() >= 0.9
