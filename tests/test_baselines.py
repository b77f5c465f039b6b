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
