"""The arguments of ``recsys data erase`` as the user typed them (not a command).

A user id must reach the erasure exactly as typed: Hydra reads ``user_id=1_0`` as
the int 10 and ``user_id=1e3`` as 1000.0, and erasing user ``10`` instead of
``1_0`` would erase someone else. :func:`erase_user_id` refuses any id the parser
changed (one line, exit 2)."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from recsys.utils.errors import DataError


def as_paths(value: Any) -> list[str]:
    """A path or a list of paths from a config value (``run=a`` or ``run=[a,b]``)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [str(v) for v in value]
    return [str(value)]


def override_text(key: str) -> str | None:
    """The text of ``key=...`` as typed on the command line (None outside Hydra or when not given)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not running under Hydra (library call, tests)
        return None
    for o in overrides:
        if o.lstrip("+~").startswith(key + "="):
            return o.split("=", 1)[1]
    return None


def erase_user_id(cfg: DictConfig) -> str:
    """The user id exactly as typed: a string, never a number; an id that the
    parser changed is refused instead of erasing someone else."""
    value = cfg.get("user_id")
    if value is None or value == "":
        raise DataError(None, "user_id= is required (the id as it appears in the events' user_id column)")
    text = override_text("user_id")
    if text is not None:
        typed = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
        if typed != str(value) or not isinstance(value, str):
            raise DataError(None, f"user_id={text} was read as {value!r} ({type(value).__name__}), not the id "
                                  f"as typed: quote it, e.g. user_id=\"'{typed}'\" (nothing erased)")
    if not isinstance(value, str):  # from a config file: ids are strings, refuse a parsed number
        raise DataError(None, f"user_id {value!r} is a {type(value).__name__}: user ids are strings, quote it")
    return value
