"""Model folders: ``model_args.json`` + ``weights.safetensors`` (no pickle), sealed as
a bundle (``recsys.model/1``), and the explicit registry of the model classes an
artifact may name.

A training run's ``model/`` folder::

    model/
      model_args.json          {"model_args": {"_target_": "<registered class>", ...}, "weights_sha256": ...}
      weights.safetensors      state dict
      features.json, parity_rows.safetensors   (rankers, two-tower; optional)
      manifest.json + manifest.sha256          (format recsys.model/1: every file's sha256)

An artifact names its class by ``_target_``; the name is looked up in
:data:`MODEL_CLASSES` **before anything is imported**, so a crafted
``{"_target_": "os.system", ...}`` is refused with a :class:`BundleError` instead of
being called. Model folders written before the manifest existed are refused with a
message saying to re-train (format bump: ``recsys.model/1``).

torch and safetensors are imported inside the functions that need them: this module
is importable by the torch-free serving layer.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from recsys.artifacts.bundle import MODEL_FORMAT, seal, verify_bundle
from recsys.artifacts.errors import BundleError
from recsys.utils.io import atomic_path, sha256_file, write_json_atomic

ARGS_FILE = "model_args.json"
WEIGHTS_FILE = "weights.safetensors"

#: ``_target_`` written in model_args.json -> (module, class). The only classes an
#: artifact can make the project build. Add a model here when it gains save/export.
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "recsys.models.sequential.SASRec": ("recsys.models.sequential", "SASRec"),
    "recsys.models.bert4rec.BERT4Rec": ("recsys.models.bert4rec", "BERT4Rec"),
    "recsys.models.gru4rec.GRU4Rec": ("recsys.models.gru4rec", "GRU4Rec"),
    "recsys.models.two_tower.TwoTower": ("recsys.models.two_tower", "TwoTower"),
    "recsys.models.rankers.DCNv2": ("recsys.models.rankers", "DCNv2"),
    "recsys.models.rankers.MLPRanker": ("recsys.models.rankers", "MLPRanker"),
    "recsys.models.mf.MatrixFactorization": ("recsys.models.mf", "MatrixFactorization"),
}


def class_key(net: Any) -> str:
    """The registry key of a net's class (BundleError when it is not registered)."""
    key = f"{type(net).__module__}.{type(net).__qualname__}"
    if key not in MODEL_CLASSES:
        raise BundleError(f"model class {key!r} is not in recsys.artifacts.models.MODEL_CLASSES; register it to save it")
    return key


def resolve_model_class(target: Any, where: str | Path) -> type:
    """The class registered under ``target``; refused (nothing imported) otherwise."""
    if not isinstance(target, str) or target not in MODEL_CLASSES:
        raise BundleError(f"{where}: refused model class {target!r}: not a registered recsys model "
                          f"(allowed: {', '.join(k.rpartition('.')[2] for k in MODEL_CLASSES)})")
    module, name = MODEL_CLASSES[target]
    return getattr(importlib.import_module(module), name)


def seal_model_dir(directory: str | Path) -> dict[str, Any]:
    """(Re)write the manifest of a model folder after the writer added files to it."""
    d = Path(directory)
    meta = json.loads((d / ARGS_FILE).read_text())
    target = meta["model_args"]["_target_"]
    if target not in MODEL_CLASSES:
        raise BundleError(f"{d / ARGS_FILE}: model class {target!r} is not registered")
    return seal(d, {"format": MODEL_FORMAT, "kind": "model", "model_class": target,
                    "weights_sha256": meta["weights_sha256"]})


def save_model(net: Any, model_args: dict[str, Any], directory: str | Path) -> dict[str, str]:
    """Write ``model_args.json`` (``_target_`` + constructor args), the weights and the
    folder's manifest. Call :func:`seal_model_dir` again after adding other files."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = class_key(net)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(d / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    args = {"_target_": target, **{k: v for k, v in model_args.items() if k != "_target_"}}
    write_json_atomic(d / ARGS_FILE, {"model_args": args, "weights_sha256": sha256_file(d / WEIGHTS_FILE)})
    seal_model_dir(d)
    return {"model_args": str(d / ARGS_FILE), "weights": str(d / WEIGHTS_FILE)}


def verify_model_dir(directory: str | Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The verified ``model_args.json`` content of a model folder (manifest checksum,
    every file's sha256, the class in the registry). Raises :class:`BundleError`."""
    return ModelFolder.open(directory, require).meta


class ModelFolder:
    """A model folder verified once (:meth:`open`): manifest checksum, every listed
    file's sha256, ``model_args.json`` agreeing with the manifest, the class in the
    registry. Its readers only open files the verified manifest lists, so one
    verification serves every read of an operation.

    Example::

        m = ModelFolder.open(run / "model", require=("features.json",))
        net, args = m.rebuild()
        feats = m.json("features.json")
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], meta: dict[str, Any]):
        self.directory, self.manifest, self.meta = directory, manifest, meta

    @classmethod
    def open(cls, directory: str | Path, require: tuple[str, ...] = ()) -> "ModelFolder":
        d = Path(directory)
        if not (d / "manifest.json").is_file() and (d / ARGS_FILE).is_file():
            raise BundleError(f"{d}: model folder without manifest.json (written before {MODEL_FORMAT}, or tampered "
                              f"with); re-train to get a verifiable model")
        manifest = verify_bundle(d, format=MODEL_FORMAT, kind="model", require=(ARGS_FILE, WEIGHTS_FILE, *require))
        try:
            meta = json.loads((d / ARGS_FILE).read_text())
            target = meta["model_args"]["_target_"]
        except (ValueError, KeyError, TypeError):
            raise BundleError(f"{d / ARGS_FILE}: expected {{'model_args': {{'_target_': ...}}, "
                              f"'weights_sha256': ...}}") from None
        if target != manifest.get("model_class") or meta.get("weights_sha256") != manifest["files"][WEIGHTS_FILE]["sha256"]:
            raise BundleError(f"{d / ARGS_FILE}: disagrees with the folder's manifest (class or weights checksum)")
        resolve_model_class(target, d / ARGS_FILE)
        return cls(d, manifest, meta)

    @property
    def model_class(self) -> str:
        return str(self.meta["model_args"]["_target_"])

    @property
    def embedding_version(self) -> str:
        """``"<class name>/<first 16 hex of the weights sha256>"``: query states and item
        vectors from the same weights carry the same version."""
        return f"{self.model_class.rpartition('.')[2]}/{self.meta['weights_sha256'][:16]}"

    def _listed(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.directory}: {name} is not listed in the folder's manifest")
        return self.directory / name

    def json(self, name: str) -> Any:
        """A JSON file of the folder (e.g. ``features.json``)."""
        return json.loads(self._listed(name).read_text())

    def arrays(self, name: str) -> dict[str, Any]:
        """A safetensors file of the folder as numpy arrays."""
        from safetensors.numpy import load_file

        return load_file(str(self._listed(name)))

    def rebuild(self, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
        """The eval-mode net and its ``model_args``."""
        from safetensors.torch import load_file

        args = dict(self.meta["model_args"])
        cls = resolve_model_class(args.pop("_target_"), self.directory / ARGS_FILE)
        try:
            net = cls(**args)
            net.load_state_dict(load_file(str(self.directory / WEIGHTS_FILE), device=device))
        except (TypeError, RuntimeError, ValueError) as e:
            raise BundleError(f"{self.directory}: cannot rebuild {cls.__name__} from {ARGS_FILE} + {WEIGHTS_FILE} "
                              f"({str(e).splitlines()[0][:200]})") from None
        return net.to(device).eval(), self.meta["model_args"]


def model_class(directory: str | Path) -> str:
    """The verified registry key (``_target_``) of a model folder."""
    return ModelFolder.open(directory).model_class


def rebuild_net(directory: str | Path, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """The eval-mode net of a verified model folder and its ``model_args``."""
    return ModelFolder.open(directory).rebuild(device)


def load_model(directory: str | Path, device: str = "cpu") -> Any:
    """Rebuild a net from a verified model folder (see :func:`rebuild_net`)."""
    return rebuild_net(directory, device)[0]


def read_model_arrays(directory: str | Path, name: str) -> dict[str, Any]:
    """A safetensors file of a verified model folder as numpy arrays."""
    return ModelFolder.open(directory, require=(name,)).arrays(name)


def embedding_version(directory: str | Path) -> str:
    """``"<class name>/<first 16 hex of the weights sha256>"`` of a verified model folder."""
    return ModelFolder.open(directory).embedding_version
