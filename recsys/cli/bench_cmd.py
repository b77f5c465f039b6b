"""``recsys bench gpu``: compose -> data, split, data module and factories from the
config -> :func:`recsys.bench.gpu.run_bench` -> table -> summary.json.

``size=full`` reads the data preset (Beauty) and refuses to start when its file is
missing; ``size=tiny`` swaps in the small synthetic world of ``sizes.tiny.data``
(the same code in seconds on a CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from recsys.cli.common import load_data, write_summary
from recsys.utils.errors import RecsysError


def _choose_size(cfg: DictConfig) -> DictConfig:
    """``cfg.sizes[cfg.size]``; with a ``data`` node it replaces the data preset, and
    without one the preset's file must exist (checked before anything is imported)."""
    size = str(cfg.size)
    if size not in cfg.sizes:
        raise RecsysError(f"size={size}: expected one of {', '.join(cfg.sizes)}")
    chosen = cfg.sizes[size]
    if chosen.get("data") is not None:
        with open_dict(cfg):
            cfg.data = chosen.data
    else:
        path = OmegaConf.select(cfg, "data.loader.path", default=None)
        if path is not None and not Path(path).is_file():
            raise RecsysError(f"data set {cfg.data.name!r} not found: expected {path} (set paths.data_root=<dir> or "
                              f"RECSYS_DATA_ROOT, or run size=tiny on synthetic data)")
    return chosen


def gpu(cfg: DictConfig) -> dict:
    chosen = _choose_size(cfg)
    from recsys.bench.gpu import Sizes, report_lines, resolve_device, run_bench

    device = resolve_device(str(cfg.device))
    import pytorch_lightning as L

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data, _ = load_data(cfg)
    split = instantiate(cfg.split).split(data)
    dm = instantiate(cfg.datamodule, _partial_=True)(split=split, n_items=data.n_items)
    module = instantiate(cfg.module, _partial_=True)
    sizes = Sizes(**{k: v for k, v in OmegaConf.to_container(chosen, resolve=True).items() if k != "data"})
    precision = str(cfg.precision) if cfg.precision != "auto" else \
        ("bf16-mixed" if device.type == "cuda" else "32-true")
    res = run_bench(data, split, dm, make_net=lambda: instantiate(cfg.net, n_items=data.n_items),
                    make_module=lambda net, loss, **kw: module(net=net, loss=loss, **kw),
                    make_loss=lambda: instantiate(cfg.loss), optimizer=module.keywords["optimizer"],
                    make_ranker=instantiate(cfg.ranker, _partial_=True),
                    ranker_vocab=OmegaConf.to_container(cfg.ort.vocab_sizes, resolve=True),
                    ranker_dense=list(cfg.ort.dense_features), sizes=sizes, size=str(cfg.size), device=device,
                    precision=precision, gradient_clip_val=cfg.gradient_clip_val, ks=list(cfg.module.ks),
                    workdir=Path(cfg.paths.output_dir) / "ort", seed=int(cfg.seed))
    print("\n".join(report_lines(res)))
    argv = " ".join(["recsys", "bench", "gpu", *sys.argv[1:]])
    path = write_summary(cfg, {"command": "bench gpu", "argv": argv, **res})
    print(f"summary: {path}")
    return res
