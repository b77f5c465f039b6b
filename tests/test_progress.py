"""recsys.utils.progress: bars on stderr only on a terminal, or when forced; a
pass-through (nothing written) otherwise or with RECSYS_PROGRESS=0."""
import io

from recsys.utils import progress as P


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pass_through_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv(P.ENV, raising=False)
    items = [1, 2, 3]
    assert P.progress(items, "x") is items  # under pytest stderr is captured: no tty
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal_and_off_with_env(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(P.sys, "stderr", tty)
    monkeypatch.delenv(P.ENV, raising=False)
    assert list(P.progress(range(5), "stage one", total=5)) == [0, 1, 2, 3, 4]
    assert "stage one" in tty.getvalue() and "/5" in tty.getvalue()

    tty2 = _Tty()
    monkeypatch.setattr(P.sys, "stderr", tty2)
    monkeypatch.setenv(P.ENV, "0")
    assert list(P.progress(range(5), "stage two")) == [0, 1, 2, 3, 4]
    assert tty2.getvalue() == ""


def test_forced_on_without_a_terminal(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(P.sys, "stderr", buf)
    monkeypatch.setenv(P.ENV, "1")
    assert sum(P.progress(iter(range(4)), "forced", total=4)) == 6
    assert "forced" in buf.getvalue()


def test_evaluator_writes_no_bar_when_disabled(monkeypatch):
    """A wrapped loop (the exact evaluator) gives the same numbers with bars on or off."""
    import numpy as np
    import torch

    from recsys.evaluation.ranking import evaluate_ranking
    from recsys.utils.sparse import CSR

    n_users, n_items = 50, 30
    rng = np.random.default_rng(0)
    hist = CSR.from_sorted_rows(np.arange(n_users), rng.integers(1, n_items + 1, n_users), n_users)
    tgt = CSR.from_sorted_rows(np.arange(n_users), rng.integers(1, n_items + 1, n_users), n_users)
    table = torch.as_tensor(rng.normal(size=(n_users + 1, n_items + 1)))

    def score(users, h):
        return table[torch.as_tensor(users)]

    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv(P.ENV, flag)
        monkeypatch.setattr(P.sys, "stderr", io.StringIO())
        r = evaluate_ranking(score, np.arange(n_users), hist, tgt, n_items, ks=[5], batch_size=8, device="cpu")
        results.append((r.metrics, P.sys.stderr.getvalue()))
    assert results[0][0] == results[1][0]
    assert results[0][1] == "" and "evaluate 50 users" in results[1][1]
