"""Next-item losses: padding never scored, negatives never the positive, logQ."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.training.losses import FullSoftmaxCE, SampledBCE, SampledSoftmax, _uniform_negatives


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=g)
    items = torch.randn(21, 8, generator=g)  # 20 items + padding row
    labels = torch.tensor([1, 5, 20, 7, 7, 3])
    return hidden, labels, items


def test_full_softmax_ignores_the_padding_row(case):
    hidden, labels, items = case
    expected = F.cross_entropy(hidden @ items[1:].T, labels - 1)
    assert FullSoftmaxCE()(hidden, labels, items) == pytest.approx(expected.item(), abs=1e-6)
    items2 = items.clone()
    items2[0] = 1e3 * hidden.mean(0)  # a huge padding vector changes nothing
    assert FullSoftmaxCE()(hidden, labels, items2) == pytest.approx(expected.item(), abs=1e-6)


def test_uniform_negatives_skip_the_label_and_cover_the_rest():
    torch.manual_seed(0)
    labels = torch.full((20000,), 4)
    neg = _uniform_negatives(labels, 3, 10)
    assert (neg != 4).all() and neg.min() >= 1 and neg.max() <= 10
    counts = torch.bincount(neg.flatten(), minlength=11)[1:].float()
    assert counts[3] == 0
    others = counts[counts > 0]
    assert len(others) == 9 and (others / others.mean() - 1).abs().max() < 0.05


def test_sampled_bce_is_finite_and_decreases_when_positive_scores_rise(case):
    hidden, labels, items = case
    torch.manual_seed(1)
    base = SampledBCE(n_negatives=4)(hidden, labels, items)
    items2 = items.clone()
    items2[labels] += 2 * hidden  # push positives up
    torch.manual_seed(1)
    assert SampledBCE(n_negatives=4)(hidden, labels, items2) < base


def test_sampled_softmax_removes_accidental_hits_and_applies_logq(case):
    hidden, labels, items = case
    loss = SampledSoftmax(n_negatives=50, logq_correction=False)
    counts = np.zeros(21)
    counts[7] = 1e9  # q puts (almost) all mass on item 7
    loss.set_item_counts(counts)
    torch.manual_seed(0)
    value = loss(hidden[3:5], labels[3:5], items)  # both labels are 7: every negative is a hit
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    # logQ: with uniform q the correction is a constant shift and changes nothing
    uni = SampledSoftmax(n_negatives=30, logq_correction=True)
    uni.set_item_counts(np.ones(21))
    plain = SampledSoftmax(n_negatives=30, logq_correction=False)
    plain.set_item_counts(np.ones(21))
    torch.manual_seed(3)
    a = uni(hidden, labels, items)
    torch.manual_seed(3)
    b = plain(hidden, labels, items)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
