"""Check ``recsys <command> key=value ...`` before the Hydra app runs.

A config mistake (a typo'd key, an unknown preset, a value of the wrong type or
out of range, a missing mandatory value) becomes one :class:`ConfigError` line,
raised before anything is created or imported beyond Hydra and OmegaConf: no
run directory, no torch. The rules are the three small tables below; everything
else is generic (the type of a value is checked against the default it replaces).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Iterator

from recsys.cli.ids import ID_KEYS
from recsys.cli.rules import ANY_TYPE, ConfigError, Range, range_for  # noqa: F401  (ConfigError re-exported)
from recsys.utils.errors import RecsysError

# --- config access without resolving -------------------------------------------------

def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, node)`` for every entry of a DictConfig, depth first; dict nodes
    are yielded too (before their children); lists are leaves."""
    from omegaconf import DictConfig

    for key in node.keys():
        child = node._get_node(key)
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, child
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none() \
                and not child._is_interpolation():
            yield from _leaves(child, path)


def _value(cfg: Any, key: str) -> Any:
    """The resolved value at ``key``, or None when absent or unresolvable."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, throw_on_resolution_failure=False, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - a value we cannot see is not checked
        return None


def _exists(cfg: Any, key: str) -> bool:
    from omegaconf import OmegaConf

    marker = object()
    try:
        return OmegaConf.select(cfg, key, default=marker, throw_on_resolution_failure=False,
                                throw_on_missing=False) is not marker
    except Exception:  # noqa: BLE001
        return False


# --- checks ---------------------------------------------------------------------------

def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expected_type(default: Any, value: Any) -> str | None:
    """None when ``value`` may replace ``default``, else what was expected."""
    from omegaconf import DictConfig, ListConfig

    if value is None or default is None:
        return None
    if isinstance(value, str) and "${" in value:
        return None  # an interpolation: resolved (and checked) by the command
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if _is_int(default):
        return None if _is_int(value) else "an integer"
    if isinstance(default, float):
        return None if _is_num(value) else "a number"
    if isinstance(default, str):
        return None if not isinstance(value, (list, dict)) else "a single value"
    if isinstance(default, (list, ListConfig)):
        if not isinstance(value, list):
            return f"a list like {_list_text(default)}"
        kinds = {type(x) for x in default}
        if len(default) and len(kinds) == 1:
            for x in value:
                if _expected_type(default[0], x) is not None:
                    return f"a list of {_expected_type(default[0], x).removeprefix('a ').removeprefix('an ')}s " \
                           f"like {_list_text(default)}"
        return None
    if isinstance(default, (dict, DictConfig)):
        return None if isinstance(value, dict) else "a mapping {key: value, ...}"
    return None


def _list_text(value: Any) -> str:
    return "[" + ",".join(_show(x).strip("'") for x in value) + "]"


def _check_range(key: str, value: Any, typed: str | None = None) -> None:
    rule = range_for(key)
    if rule is None:
        return
    is_list = isinstance(value, (list, tuple))
    for x in (value if is_list else [value]):
        if _is_num(x) and not rule.ok(float(x)):
            got = typed if typed is not None else (_list_text(value) if is_list else _show(x))
            noun = "an integer" if _is_int(x) else "a number"
            what = f"a list of {noun.split()[-1]}s, each" if is_list else noun
            raise ConfigError(f"{key}: expected {what} {rule.describe()}, got {got}")


def _best(word: str, candidates: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in set(candidates)), reverse=True)
    return [c for r, c in scored[:n] if r >= cutoff and r >= scored[0][0] - 0.08] if scored else []


def _close(word: str, candidates: list[str], n: int = 3) -> list[str]:
    """The nearest valid keys: siblings when the parent exists, else whole keys,
    else keys whose last part is near (a nested key given at top level)."""
    parent, _, leaf = word.rpartition(".")
    if parent and parent in candidates:
        siblings = {c[len(parent) + 1:]: c for c in candidates
                    if c.startswith(parent + ".") and "." not in c[len(parent) + 1:]}
        return [siblings[s] for s in _best(leaf, list(siblings), n)]
    found = _best(word, candidates, n)
    if not found and not parent:
        leaves: dict[str, list[str]] = {}
        for c in candidates:
            leaves.setdefault(c.rsplit(".", 1)[-1], []).append(c)
        found = [c for near in _best(word, list(leaves), n, cutoff=0.8) for c in leaves[near]][:n]
    return found


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()


@dataclass
class Checker:
    """Compose ``config_name`` with ``overrides`` through Hydra's compose API and
    check the result; :meth:`run` raises :class:`ConfigError` on the first problem."""

    config_dir: Path
    config_name: str
    command: str                 # "index query" (for messages)
    overrides: list[str]
    multirun: bool = False
    require_values: bool = True  # False for --cfg / --info: show what is there
    examples: dict | None = None  # key -> example text (``bundle=<name|path>``)

    def run(self) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException, OverrideParseException

        self.parser = OverridesParser.create()
        parsed = []
        for text in self.overrides:
            try:
                parsed.append(self.parser.parse_override(text))
            except (OverrideParseException, HydraException) as e:
                raise ConfigError(f"cannot read override {text!r}: {_first_line(getattr(e, 'message', e))} "
                                  "(form: key=value, +key=value to add, ~key to delete)") from None
        group_args: list[str] = []
        value_overrides = []
        self._later: list[tuple[Any, list[str]]] = []  # sweeps: the values after the first
        for o in parsed:
            text = o.input_line
            if o.is_sweep_override():
                if not self.multirun:
                    key = o.get_key_element()
                    value = o.get_value_string() if "=" in text else ""
                    raise ConfigError(
                        f"{key}={value}: a comma list or sweep runs one job per value: add -m, "
                        f"or write {key}=[{value}] for a list or {key}='{value}' for a string")
                try:
                    values = list(o.sweep_string_iterator())
                except HydraException:  # glob(), interval(): the sweeper's business
                    continue
                if not values:
                    continue
                text = f"{o.get_key_element()}={values[0]}"
                self._later.append((o, values[1:]))
            if self._is_group(o.key_or_group):
                group_args.append(text)
            else:
                value_overrides.append(o if text == o.input_line else self.parser.parse_override(text))
        self._parsed = parsed
        self._base = None
        # Hydra's own two steps, the same code: the defaults list with the group
        # choices, then the value overrides applied on top (checked in between
        # against the defaults they replace). One composition, no run directory.
        cfg = self._compose(group_args)
        self._base = cfg
        self._check_sweep_groups()
        self._check_types(parsed)
        self._apply(value_overrides, cfg)
        self._check_ids(parsed, cfg)
        self._check_ranges(cfg)
        if self.require_values:
            self._check_missing(cfg)
        return cfg

    # -- composition ------------------------------------------------------------
    def _is_group(self, key: str) -> bool:
        return key.startswith("hydra/") or ("." not in key and (self.config_dir / key).is_dir())

    def _compose_raw(self, overrides: list[str]) -> Any:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(self.config_dir), version_base="1.3"):
            return compose(config_name=self.config_name, overrides=overrides, return_hydra_config=True)

    def base(self) -> Any:
        """The config with the group choices applied (the defaults a value override
        replaces); the plain root config when the group choices do not compose."""
        if self._base is None:
            try:
                self._base = self._compose_raw([])
            except Exception:  # noqa: BLE001 - the error reported is the user's
                self._base = False
        return self._base or None

    def _apply(self, overrides: list[Any], cfg: Any) -> None:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)
        except (HydraException, OmegaConfBaseException) as e:
            raise self._explain(e, [o.input_line for o in overrides]) from None

    def _compose(self, overrides: list[str]) -> Any:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        try:
            return self._compose_raw(overrides)
        except (HydraException, OmegaConfBaseException) as e:
            raise self._explain(e, overrides) from None

    def _explain(self, e: BaseException, overrides: list[str]) -> ConfigError:
        from hydra.errors import MissingConfigException

        chain, c = [], e
        while c is not None and len(chain) < 10:
            chain.append(c)
            c = c.__cause__ or c.__context__
        for c in chain:
            if isinstance(c, MissingConfigException) and c.missing_cfg_file:
                return self._unknown_option(c)
        msg = str(e)
        for c in chain:  # a value the schema rejects (hydra.* keys are typed)
            if type(c).__name__ == "ValidationError" and getattr(c, "full_key", None):
                return ConfigError(f"{c.full_key}: {_first_line(getattr(c, 'msg', c))}")
        m = re.match(r"Could not (?:override|delete from config\.) '([^']+)'", msg)
        if m is not None:
            key = m.group(1)
            typed = next((o for o in overrides if o.lstrip("+~").split("=")[0].split("@")[0] == key), key)
            return self._unknown_key(key, typed)
        m = re.match(r"Could not append to config\. An item is already at '([^']+)'", msg)
        if m is not None:
            key = m.group(1)
            return ConfigError(f"+{key}: {key} already exists: change it with {key}=<value> (++{key}= adds or changes)")
        m = re.match(r"Ambiguous value for argument '([^']+)'", msg)
        if m is not None:
            return ConfigError(f"{m.group(1)}: a comma list runs one job per value: add -m, or use [a,b] for a "
                               "list or 'a,b' for a string")
        return ConfigError(f"{_first_line(msg)} (overrides: {' '.join(self.overrides) or 'none'})")

    def _unknown_option(self, e: Any) -> ConfigError:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        options = list(e.options or [])
        if not group:  # a root config (cannot happen from the CLI)
            return ConfigError(f"no config named {name!r}")
        near = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        return ConfigError(f"{group}={name}: no such option in group '{group}': {hint}"
                           f"expected one of: {', '.join(options) or '(none)'}")

    def _candidates(self, key: str) -> list[str]:
        base = self.base()
        keys: list[str] = []
        if base is not None:
            hydra_key = key.startswith("hydra")
            keys = [k for k, _ in _leaves(base) if k.startswith("hydra") == hydra_key]
            try:  # the config groups this command has (model, data, ...)
                keys += [g for g in base.hydra.runtime.choices if not g.startswith("hydra")]
            except Exception:  # noqa: BLE001
                pass
        return sorted(set(keys))

    def _unknown_key(self, key: str, typed: str) -> ConfigError:
        near = _close(key, self._candidates(key))
        hint = f"did you mean {' or '.join(near)}?" if near else \
            f"`recsys {self.command} --cfg job` lists the keys; +{key}=<value> adds a new one"
        return ConfigError(f"{key}: no such key in recsys {self.command} (got {typed}); {hint}")

    def _check_sweep_groups(self) -> None:
        for o, values in self._later:
            if not self._is_group(o.key_or_group) or o.key_or_group.startswith("hydra/"):
                continue
            group = o.key_or_group
            options = sorted(p.stem for p in (self.config_dir / group).glob("*.yaml"))
            for v in values:
                if v not in options and v != "null":
                    near = difflib.get_close_matches(v, options, n=3, cutoff=0.5)
                    hint = f"did you mean {' or '.join(near)}? " if near else ""
                    raise ConfigError(f"{group}={v}: no such option in group '{group}': {hint}"
                                      f"expected one of: {', '.join(options)}")

    # -- values ---------------------------------------------------------------
    def _check_ids(self, parsed: list[Any], cfg: Any) -> None:
        """Ids (quoted by :func:`quote_ids`) must reach the command as strings."""
        from omegaconf import OmegaConf

        for o in parsed:
            if o.key_or_group not in ID_KEYS or o.is_delete() or o.is_sweep_override():
                continue
            if o.key_or_group not in cfg:
                continue
            node = cfg._get_node(o.key_or_group)
            got = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node._value()
            if isinstance(got, str) and "${" in got:
                continue  # an interpolation, resolved by the command
            items = got if isinstance(got, list) else [got]
            if not all(type(x) is str for x in items):
                raise ConfigError(f"{o.key_or_group}: expected an id (a string or a list of strings), "
                                  f"got {got!r}; quote it: {o.key_or_group}='...'")

    def _typed(self, o: Any) -> str:
        return o.get_value_string() if o.input_line and "=" in o.input_line else ""

    def _check_types(self, parsed: list[Any]) -> None:
        todo = []
        for o in parsed:
            key = o.key_or_group
            if (o.is_delete() or o.is_add() or o.is_hydra_override() or self._is_group(key)
                    or key in ID_KEYS or any(fnmatchcase(key, p) for p in ANY_TYPE)):
                continue
            if o.is_sweep_override():
                later = dict((id(a), v) for a, v in self._later)
                try:
                    texts = [next(o.sweep_string_iterator()), *later.get(id(o), [])]
                except Exception:  # noqa: BLE001
                    continue
                for t in texts:
                    todo.append((key, self.parser.parse_override(f"{key}={t}").value(), t))
            else:
                todo.append((key, o.value(), self._typed(o)))
        if not todo:
            return
        base = self.base()
        if base is None:
            return
        for key, value, typed in todo:
            if not _exists(base, key):
                continue
            default = _value(base, key)
            expected = _expected_type(default, value)
            if expected is not None:
                raise ConfigError(f"{key}: expected {expected} (default {_show_default(default)}), got {typed}")
            _check_range(key, value, typed)

    def _check_ranges(self, cfg: Any) -> None:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        typed = {o.key_or_group: self._typed(o) for o in self._parsed if not o.is_sweep_override()}
        leaves = [(k, n) for k, n in _leaves(cfg) if not k.startswith("hydra") and not isinstance(n, DictConfig)]
        leaves.sort(key=lambda kn: kn[0] not in typed)  # what was typed is named first (seed=-1, not datamodule.seed)
        for key, node in leaves:
            if range_for(key) is None:
                continue
            value = _value(cfg, key)
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            _check_range(key, value, typed.get(key))
        for o, values in self._later:  # the other values of value sweeps
            if self._is_group(o.key_or_group):
                continue
            for t in values:
                v = self.parser.parse_override(f"{o.key_or_group}={t}").value()
                _check_range(o.key_or_group, v, t)

    def _check_missing(self, cfg: Any) -> None:
        missing = [k for k, node in _leaves(cfg) if not k.startswith("hydra") and node._is_missing()]
        if not missing:
            return
        examples = self.examples or {}
        shown = " ".join(examples.get(k) or f"{k}=<value>" for k in missing)
        names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{names} {verb} required, e.g. recsys {self.command} {shown}")


def _show_default(value: Any) -> str:
    from omegaconf import ListConfig

    if isinstance(value, (list, ListConfig)):
        return _list_text(value)
    return _show(value).strip("'") if isinstance(value, str) else _show(value)


def examples_from(header: list[str]) -> dict[str, str]:
    """``key -> key=<hint>`` for every ``key=<hint>`` in a config's header comment."""
    out: dict[str, str] = {}
    for line in header:
        for m in re.finditer(r"(?<![\w.+])([A-Za-z_][\w.]*)=(<[^>]*>|[^\s\[\]()|]+)", line):
            out.setdefault(m.group(1), f"{m.group(1)}={m.group(2)}")
    return out
