"""Beyond-accuracy metrics on hand-computed lists."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.evaluation import beyond as B

TOP = np.array([[1, 2, 3], [1, 2, 0], [4, 1, 2]])  # 0 = no item
N_ITEMS = 5


def test_coverage():
    assert B.catalogue_coverage(TOP, N_ITEMS) == pytest.approx(4 / 5)


def test_novelty_uses_smoothed_self_information():
    counts = np.array([0, 9, 4, 1, 0, 0], dtype=float)
    n_users = 9
    expected = np.mean([-math.log2((counts[i] + 1) / 10) for i in [1, 2, 3, 1, 2, 4, 1, 2]])
    assert B.novelty(TOP, counts, n_users) == pytest.approx(expected)


def test_average_popularity_is_per_user_then_mean():
    counts = np.array([0, 9, 4, 1, 0, 0], dtype=float)
    per_user = [(9 + 4 + 1) / 3, (9 + 4) / 2, (0 + 9 + 4) / 3]
    assert B.average_popularity(TOP, counts) == pytest.approx(np.mean(per_user))


def test_gini_extremes_and_known_value():
    equal = np.array([[1, 2], [3, 4]])
    assert B.gini_index(equal, 4) == pytest.approx(0.0)
    one_item = np.array([[1], [1], [1]])
    # freq sorted [0, 0, 0, 3] over n=4 -> (2*4-4-1)*3 / (4*3) = 0.75
    assert B.gini_index(one_item, 4) == pytest.approx(0.75)


def test_intra_list_diversity_categories():
    cat = np.array([0, 0, 0, 1, 1, 2])  # items 1,2 -> 0; 3,4 -> 1; 5 -> 2
    top = np.array([[1, 2, 3], [3, 4, 0], [1, 5, 0], [1, 0, 0]])
    # row0 pairs: (1,2) same, (1,3),(2,3) differ -> 2/3; row1: 0; row2: 1; row3 skipped
    assert B.intra_list_diversity_categories(top, cat) == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_intra_list_diversity_embeddings():
    emb = np.array([[0, 0], [1, 0], [0, 1], [1, 0]], dtype=float)
    top = np.array([[1, 2], [1, 3]])
    # row0 orthogonal -> distance 1; row1 identical -> 0
    assert B.intra_list_diversity_embeddings(top, emb) == pytest.approx(0.5)


def test_beyond_accuracy_names_carry_k():
    counts = np.ones(N_ITEMS + 1)
    out = B.beyond_accuracy(TOP, N_ITEMS, counts, 3, item_category=np.zeros(N_ITEMS + 1, dtype=int))
    assert set(out) == {"coverage@3", "novelty@3", "arp@3", "gini@3", "ild_category@3"}
    assert out["ild_category@3"] == 0.0
