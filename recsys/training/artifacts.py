"""Model artifacts: ``model_args.json`` + ``weights.safetensors`` (no pickle),
so a net can be rebuilt without the training code."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsys.utils.io import atomic_path, sha256_file, write_json_atomic


def save_model(net: nn.Module, model_args: dict[str, Any], directory: str | Path) -> dict[str, str]:
    """Write ``model_args.json`` (``_target_`` + constructor args) and the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(directory / "weights.safetensors") as tmp:
        save_file(state, str(tmp))
    args = {"_target_": f"{type(net).__module__}.{type(net).__qualname__}", **model_args}
    write_json_atomic(directory / "model_args.json",
                      {"model_args": args, "weights_sha256": sha256_file(directory / "weights.safetensors")})
    return {"model_args": str(directory / "model_args.json"), "weights": str(directory / "weights.safetensors")}


def load_model(directory: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild a net from ``model_args.json`` and check the weights' checksum."""
    directory = Path(directory)
    meta = json.loads((directory / "model_args.json").read_text())
    weights = directory / "weights.safetensors"
    if sha256_file(weights) != meta["weights_sha256"]:
        raise ValueError(f"{weights}: checksum mismatch (truncated or modified file)")
    args = dict(meta["model_args"])
    module, _, cls = args.pop("_target_").rpartition(".")
    net = getattr(importlib.import_module(module), cls)(**args)
    net.load_state_dict(load_file(str(weights), device=device))
    return net.to(device).eval()


def load_weights_only(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
