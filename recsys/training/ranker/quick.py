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
    """Train and save; ``behavioural`` adds the world's behavioural features as of each
    request. ``summary`` is written as the run's ``summary.json``."""
    import torch

    from recsys.data.synthetic import generate_world
    from recsys.features.ranker import add_behavioural_features, build_ranker_features
    from recsys.models.rankers import DCNv2
    from recsys.training.ranker.data import time_split, to_tensors
    from recsys.training.ranker.fit import save_ranker_model
    from recsys.utils.io import write_json_atomic

    run = Path(run_dir)
    torch.manual_seed(seed)
    w = generate_world(world)
    table = build_ranker_features(w)
    if behavioural:
        table = add_behavioural_features(table, w)
    splits = time_split(table, 0.1, 0.3)
    args: dict[str, Any] = {"embedding_dim": 8, "n_cross": 2, "deep": list(deep), "structure": "stacked"}
    net = DCNv2(table.vocab_sizes, table.dense, **args)
    cols = to_tensors(table.take(splits["train"]))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(train_steps):
        idx = torch.randint(0, len(cols["label"]), (256,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net(**{k: cols[k][idx] for k in net.input_names}), cols["label"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    save_ranker_model(net, args, table, table.take(splits["test"]), run / "model", n_parity_rows)
    write_json_atomic(run / "summary.json", summary or {})
    return run
