"""Checksummed Lightning checkpoints and the checks a checkpoint passes before a
run resumes from it.

Every checkpoint the training commands write gets a sidecar ``<name>.ckpt.sha256``
in ``sha256sum`` format (``<hex digest>  <name>.ckpt``), written atomically right
after Lightning saves the checkpoint and removed when Lightning deletes it
(:class:`ChecksummedModelCheckpoint`, the ``model_checkpoint`` callback of
``configs/callbacks/default.yaml``). ``sha256sum -c last.ckpt.sha256`` checks one
by hand.

:func:`verify_checkpoint` is what ``resume=`` goes through, before any data is
prepared: a local path only (no URL of any scheme: the project never uses the
network), an existing regular file, a sidecar whose digest matches the file's
bytes (a truncated file or one flipped byte is refused), and a file that
``torch.load(weights_only=True)`` reads as a Lightning training checkpoint.
Checkpoints without a sidecar are refused. :func:`check_compatible` then compares
the checkpoint's weights with the module it is about to be loaded into (names and
shapes), so a checkpoint of another model fails with one line, not a traceback.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from recsys.utils.errors import RecsysError
from recsys.utils.io import sha256_file, write_text_atomic

#: appended to a checkpoint's file name for its checksum sidecar
SIDECAR_SUFFIX = ".sha256"
#: a URL or fsspec protocol (``http://``, ``s3://``, ``file://``, ``simplecache::``, ``data:``);
#: one-letter schemes are Windows drive letters
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:|::|://")
_DIGEST_RE = re.compile(r"^[0-9a-fA-F]{64}$")
#: keys Lightning needs to continue training (``trainer.fit(ckpt_path=...)``)
_TRAINING_KEYS = ("state_dict", "epoch", "global_step", "loops", "optimizer_states")


class CheckpointError(RecsysError):
    """A checkpoint that cannot be used (missing, not local, unverified, corrupt, mismatched)."""


def sidecar_path(checkpoint: str | Path) -> Path:
    """``<checkpoint>.sha256``."""
    p = Path(checkpoint)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def write_sidecar(checkpoint: str | Path) -> Path:
    """Hash ``checkpoint`` and write its ``sha256sum``-format sidecar atomically."""
    p = Path(checkpoint)
    side = sidecar_path(p)
    write_text_atomic(side, f"{sha256_file(p)}  {p.name}\n")
    return side


def remove_sidecar(checkpoint: str | Path) -> None:
    sidecar_path(checkpoint).unlink(missing_ok=True)


class ChecksummedModelCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` whose every saved file
    (top-k and ``last.ckpt``) gets a ``.sha256`` sidecar, written after the save and
    removed with the file. The old sidecar is removed before a file is
    overwritten, so an interrupted save leaves a checkpoint without a sidecar
    (refused by :func:`verify_checkpoint`), never one that verifies wrongly."""

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        if trainer.is_global_zero:
            remove_sidecar(filepath)
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and os.path.isfile(filepath):
            write_sidecar(filepath)
        trainer.strategy.barrier()

    def _link_checkpoint(self, trainer: Any, filepath: str, linkpath: str) -> None:  # save_last="link"
        if trainer.is_global_zero:
            remove_sidecar(linkpath)
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
        if trainer.is_global_zero and os.path.isfile(linkpath):
            write_sidecar(linkpath)
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer: Any, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            remove_sidecar(filepath)


@dataclass(frozen=True)
class CheckpointInfo:
    """A verified checkpoint: resolved path, digest, where training stood, weight shapes."""

    path: Path
    sha256: str
    epoch: int
    global_step: int
    shapes: dict[str, tuple[int, ...]] = field(repr=False)


def is_url(value: str) -> bool:
    """True for anything fsspec / Lightning would open as a URL or remote protocol."""
    return bool(_URL_RE.search(value))


def verify_checkpoint(path: Any, what: str = "checkpoint") -> CheckpointInfo:
    """Check a checkpoint before resuming from it; raise :class:`CheckpointError`
    (one line starting with ``what``) unless it is a local regular file whose
    ``.sha256`` sidecar matches and which loads with ``weights_only=True`` as a
    Lightning training checkpoint. Returns the resolved path, digest, epoch and
    global step stored in it."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bool):
        raise CheckpointError(f"{what}={path!r}: expected a path to a checkpoint file")
    text = os.fspath(path)
    if not str(text).strip():
        raise CheckpointError(f"{what} is empty: pass the path of a checkpoint file (e.g. <run>/checkpoints/last.ckpt)")
    if is_url(str(text)):
        raise CheckpointError(f"{what}={text}: URLs are not accepted (the project never uses the network); "
                              f"copy the checkpoint and its .sha256 file to local disk and pass that path")
    p = Path(text).expanduser().absolute()
    if not p.exists():
        raise CheckpointError(f"{what}={text}: no such file ({p})")
    if not p.is_file():
        raise CheckpointError(f"{what}={text}: not a regular file ({p})")
    side = sidecar_path(p)
    if not side.is_file():
        raise CheckpointError(f"{what}={text}: no checksum file {side}; only checkpoints written by recsys train "
                              f"(which writes <name>.ckpt.sha256 beside each) can be resumed")
    try:
        first = side.read_text(encoding="utf-8", errors="strict").split()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what}={text}: unreadable checksum file {side} ({type(e).__name__})") from None
    if not first or not _DIGEST_RE.match(first[0]):
        raise CheckpointError(f"{what}={text}: checksum file {side} is not in sha256sum format")
    try:
        digest = sha256_file(p)
    except OSError as e:
        raise CheckpointError(f"{what}={text}: cannot read {p} ({e.strerror or type(e).__name__})") from None
    if digest != first[0].lower():
        raise CheckpointError(f"{what}={text}: sha256 {digest[:12]}... does not match {side.name} "
                              f"({first[0][:12].lower()}...): the file is corrupt, truncated or was changed "
                              f"after it was written")
    ckpt = _load(p, what, text)
    missing = [k for k in _TRAINING_KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{what}={text}: not a Lightning training checkpoint "
                              f"(missing {', '.join(missing) or 'state_dict'})")
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
    return CheckpointInfo(p, digest, int(ckpt["epoch"]), int(ckpt["global_step"]), shapes)


def _load(p: Path, what: str, text: str) -> dict:
    import zipfile

    import torch

    if not zipfile.is_zipfile(p):  # what torch.save (and so Lightning) has written since torch 1.6
        raise CheckpointError(f"{what}={text}: not a readable checkpoint (not a PyTorch zip archive)")
    try:
        # weights only: no code runs on load; mmap: the tensors are not read into memory
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a readable checkpoint"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {msg[:100]}{'...' if len(msg) > 100 else ''}" if msg else type(e).__name__
        raise CheckpointError(f"{what}={text}: not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what}={text}: not a Lightning checkpoint (holds a {type(ckpt).__name__})")
    return ckpt


def check_compatible(info: CheckpointInfo, module: Any, what: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's weights have exactly
    the names and shapes of ``module.state_dict()`` (another model, catalogue size
    or width is refused in one line before Lightning tries to load it)."""
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(want) - set(info.shapes))
    extra = sorted(set(info.shapes) - set(want))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"] if extra else [])
        raise CheckpointError(f"{what}={info.path}: the checkpoint is for another model ({'; '.join(parts)})")
    for k, s in want.items():
        if info.shapes[k] != s:
            raise CheckpointError(f"{what}={info.path}: the checkpoint is for another model configuration "
                                  f"({k} has shape {list(info.shapes[k])}, this model {list(s)})")
