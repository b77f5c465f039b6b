"""Sequence encoders (SASRec, BERT4Rec, GRU4Rec): shapes, padding, causality, learning."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.models.bert4rec import BERT4Rec, mask_sequence
from recsys.models.gru4rec import GRU4Rec
from recsys.models.sequential import SASRec

N_ITEMS, D = 30, 32


def _sasrec_relpos(**kw) -> SASRec:
    """SASRec with the relative-distance attention bias and no absolute positions;
    the bias is drawn large so that a causality or padding leak would show."""
    net = SASRec(n_items=N_ITEMS, max_len=16, hidden=D, rel_pos=True, abs_pos=False, **kw)
    torch.nn.init.normal_(net.rel_bias.weight, std=2.0)
    return net


BUILDERS = {
    "sasrec": lambda **kw: SASRec(n_items=N_ITEMS, max_len=16, hidden=D, **kw),
    "sasrec_relpos": _sasrec_relpos,
    "bert4rec": lambda **kw: BERT4Rec(n_items=N_ITEMS, max_len=16, hidden=D, **kw),
    "gru4rec": lambda **kw: GRU4Rec(n_items=N_ITEMS, hidden=D, **kw),
}
CAUSAL = ["sasrec", "sasrec_relpos", "gru4rec"]


def build(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](**kw).eval()


def left_pad(rows: list[list[int]], extra: int = 0) -> torch.Tensor:
    """``(B, max_len + extra)`` left-padded batch."""
    T = max(map(len, rows)) + extra
    return torch.tensor([[0] * (T - len(r)) + r for r in rows])


ROWS = [[3, 5, 7, 9, 11], [2, 4], [30, 1, 1, 8, 6]]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_shapes_zero_pads_and_empty_rows(name):
    net = build(name)
    seq = left_pad(ROWS + [[]], extra=1)  # last row: padding only
    with torch.no_grad():
        out, state = net(seq), net.next_item_state(seq)
    assert out.shape == (4, 6, D) and state.shape == (4, D)
    assert net.output_embeddings().shape == (N_ITEMS + 1, D)
    assert torch.isfinite(out).all() and torch.isfinite(state).all()
    assert (out[seq == 0] == 0).all()
    assert out[seq > 0].abs().sum(-1).min() > 0


@pytest.mark.parametrize("name", list(BUILDERS))
def test_extra_left_padding_changes_nothing(name):
    net = build(name)
    with torch.no_grad():
        a, b = net(left_pad(ROWS, extra=2)), net(left_pad(ROWS, extra=6))
        sa, sb = net.next_item_state(left_pad(ROWS, extra=2)), net.next_item_state(left_pad(ROWS, extra=6))
    torch.testing.assert_close(a[:, -5:], b[:, -5:], atol=1e-6, rtol=0)
    torch.testing.assert_close(sa, sb, atol=1e-6, rtol=0)


def test_plain_gru_on_left_padding_would_not_be_invariant():
    """Guards the test above: the alignment in GRU4Rec is what makes it pass."""
    net = build("gru4rec")
    runs = [net.gru(net.item_emb(left_pad(ROWS, extra=e)))[0][:, -5:] for e in (2, 6)]
    assert (runs[0] - runs[1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(BUILDERS))
def test_causality(name):
    net = build(name)
    seq, n_bidirectional_checks = left_pad(ROWS, extra=1), 0  # (3, 6)
    for t in range(1, 6):
        real = seq[:, t] > 0
        changed = seq.clone()
        changed[:, t] = torch.where(real, seq[:, t] % N_ITEMS + 1, seq[:, t])  # a different real item
        with torch.no_grad():
            a, b = net(seq), net(changed)
        assert (a[real, t] - b[real, t]).abs().amax() > 1e-4
        if name in CAUSAL:
            assert torch.equal(a[:, :t], b[:, :t])
        else:  # bidirectional: every earlier real position sees the change
            seen = real[:, None] & (seq[:, :t] > 0)  # B, t: earlier real positions
            assert ((a[:, :t] - b[:, :t]).abs().amax(-1)[seen] > 1e-4).all()
            n_bidirectional_checks += int(seen.sum())
    assert name in CAUSAL or n_bidirectional_checks > 0


@pytest.mark.parametrize("name", CAUSAL)
def test_next_item_state_is_the_last_position(name):
    net = build(name)
    seq = left_pad(ROWS + [[]], extra=1)
    with torch.no_grad():
        assert torch.equal(net.next_item_state(seq), net(seq)[:, -1])


def test_bert4rec_next_item_state_is_the_appended_mask():
    net = build("bert4rec")
    assert net.mask_token == N_ITEMS + 1
    seq = left_pad(ROWS, extra=1)  # every row starts with a pad, so dropping it loses nothing
    appended = torch.cat([seq, torch.full((3, 1), net.mask_token)], dim=1)
    with torch.no_grad():
        state, expect = net.next_item_state(seq), net(appended)[:, -1]
        unmasked = net(seq)[:, -1]
    torch.testing.assert_close(state, expect, atol=1e-6, rtol=0)
    assert (state - unmasked).abs().max() > 1e-3
    full = torch.randint(1, N_ITEMS + 1, (2, net.max_len))  # no room to append: the oldest item is dropped
    with torch.no_grad():
        dropped = net(torch.cat([full[:, 1:], torch.full((2, 1), net.mask_token)], dim=1))[:, -1]
        torch.testing.assert_close(net.next_item_state(full), dropped, atol=1e-6, rtol=0)


def test_mask_sequence():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 31, (4000,), generator=g)
    lengths[:3] = torch.tensor([0, 1, 30])
    T, p, mask = 30, 0.2, N_ITEMS + 1
    seq = torch.randint(1, N_ITEMS + 1, (4000, T), generator=g) * (torch.arange(T) >= T - lengths[:, None])
    inputs, labels = mask_sequence(seq, p, mask, generator=torch.Generator().manual_seed(1))
    masked = inputs == mask
    assert torch.equal(labels > 0, masked)
    assert torch.equal(labels[masked], seq[masked]) and torch.equal(inputs[~masked], seq[~masked])
    assert not masked[seq == 0].any()
    assert torch.equal(masked.any(1), lengths > 0)
    assert masked.sum() / (seq > 0).sum() == pytest.approx(p, abs=0.01)
    again = mask_sequence(seq, p, mask, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(inputs, again)
    # nothing drawn: exactly the last real item of each non-empty row
    inputs0, labels0 = mask_sequence(seq, 0.0, mask)
    assert torch.equal((inputs0 == mask).sum(1), (lengths > 0).long())
    assert torch.equal(labels0[:, -1], seq[:, -1])


def planted_sequences(n: int, T: int, g: torch.Generator) -> torch.Tensor:
    """``(n, T)``: runs ``s, s+1, ...`` (wrapping 30 -> 1) of random length 2..T, left-padded."""
    start = torch.randint(0, N_ITEMS, (n, 1), generator=g)
    lengths = torch.randint(2, T + 1, (n, 1), generator=g)
    items = (start + torch.arange(T) - (T - lengths)) % N_ITEMS + 1
    return items * (torch.arange(T) >= T - lengths)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and 2 OpenMP threads on a busy
    2-core machine were measured 20x slower (spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_learns_a_planted_successor(name, one_thread):
    torch.manual_seed(0)
    net = BUILDERS[name](dropout=0.0).train()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g, T = torch.Generator().manual_seed(0), 10
    for _ in range(500):  # BERT4Rec needs the most: it must learn to attend to the previous position
        seq = planted_sequences(128, T, g)
        if name == "bert4rec":
            inputs, labels = mask_sequence(seq, 0.3, net.mask_token, generator=g)
        else:
            inputs, labels = seq[:, :-1], seq[:, 1:] * (seq[:, :-1] > 0)
        logits = net(inputs) @ net.output_embeddings().T  # B, T, n_items + 1
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    test = planted_sequences(500, T, torch.Generator().manual_seed(99))
    with torch.no_grad():
        pred = (net.next_item_state(test[:, :-1]) @ net.output_embeddings().T).argmax(-1)
    accuracy = (pred == test[:, -1]).float().mean().item()
    assert accuracy > 0.8, accuracy  # chance is 1/30
