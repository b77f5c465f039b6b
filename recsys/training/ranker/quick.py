"""A small ranker run without Lightning: a DCN-v2 after a few Adam steps on a synthetic
world's impressions, saved as ``recsys rank train`` saves it (``<run>/model`` +
``summary.json``). The serving benchmark's fixture and the tests' rankers are built
with it; it is not a training recipe (no validation, no early stopping)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.data.synthetic import SyntheticConfig


def quick_ranker_run(run_dir: str | Path, world: SyntheticConfig, *, deep: tuple[int, ...] = (64, 32),
                     train_steps: int = 30, seed: int = 0, n_parity_rows: int = 1000, behavioural: bool = False,
                     summary: dict[str, Any] | None = None) -> Path:
    """Generate the world of ``world``, train and save (:func:`fit_quick_ranker`);
    ``summary`` is written as the run's ``summary.json``."""
    import torch

    from recsys.data.synthetic import generate_world
    from recsys.utils.io import write_json_atomic

    torch.manual_seed(seed)
    run = fit_quick_ranker(run_dir, generate_world(world), deep=deep, train_steps=train_steps, seed=None,
                           n_parity_rows=n_parity_rows, behavioural=behavioural)
    write_json_atomic(run / "summary.json", summary or {})
    return run


def fit_quick_ranker(run_dir: str | Path, world: Any, *, deep: tuple[int, ...] = (64, 32), train_steps: int = 30,
                     seed: int | None = 0, n_parity_rows: int = 1000, behavioural: bool = False,
                     test_fraction: float = 0.3, batch_size: int = 256) -> Path:
    """``<run_dir>/model``: a DCN-v2 after ``train_steps`` Adam steps on a generated
    world's impressions (``behavioural``: plus its behavioural features as of each
    request). ``seed`` None: the torch seed is left as the caller set it."""
    import torch

    from recsys.features.ranker import add_behavioural_features, build_ranker_features
    from recsys.models.rankers import DCNv2
    from recsys.training.ranker.data import time_split, to_tensors
    from recsys.training.ranker.fit import save_ranker_model

    run = Path(run_dir)
    if seed is not None:
        torch.manual_seed(seed)
    table = build_ranker_features(world)
    if behavioural:
        table = add_behavioural_features(table, world)
    splits = time_split(table, 0.1, test_fraction)
    args: dict[str, Any] = {"embedding_dim": 8, "n_cross": 2, "deep": list(deep), "structure": "stacked"}
    net = DCNv2(table.vocab_sizes, table.dense, **args)
    cols = to_tensors(table.take(splits["train"]))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(train_steps):
        idx = torch.randint(0, len(cols["label"]), (batch_size,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net(**{k: cols[k][idx] for k in net.input_names}), cols["label"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    save_ranker_model(net, args, table, table.take(splits["test"]), run / "model", n_parity_rows)
    return run
