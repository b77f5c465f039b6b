"""Id overrides (``user_id=``, ``user=``, ``item=``) reach a command as the exact
string typed: Hydra would turn ``user_id=1_0`` into the int 10 and ``user=007`` into
7, which once erased another user. :func:`quote_ids` rewrites them to quoted strings
before Hydra parses the command line."""
from __future__ import annotations

import re

from recsys.utils.errors import RecsysError

#: keys whose values are identifiers: always passed on as the exact string typed.
#: Top-level keys only.
ID_KEYS = frozenset({"user_id", "user", "item", "item_id"})


class IdQuotingError(RecsysError):
    """An id value that cannot be passed on exactly as typed."""


_SWEEP_FN = re.compile(r"^\s*(choice|range|interval|glob|shuffle|sort|tag)\(")


def _quote(text: str) -> str:
    """``text`` as a Hydra single-quoted string (backslashes before a quote or at the
    end doubled, quotes escaped)."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def _split_top(text: str) -> list[str]:
    """Split on commas outside quotes and brackets."""
    parts, depth, quote, cur = [], 0, "", []
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and i + 1 < len(text):
                cur.append(text[i:i + 2])
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def _quote_element(text: str, strip: bool = True) -> str:
    """Quote one value; list elements lose the spaces around them, a single value
    is kept exactly (spaces included). Already quoted: Hydra keeps it a string."""
    stripped = text.strip()
    if _is_quoted(stripped):
        return stripped
    return _quote(stripped if strip else text)


def _split_override(text: str) -> tuple[str, str, str] | None:
    """``(prefix, key, value text)`` of a ``key=value`` override, else None."""
    m = re.match(r"^(\+\+|\+)?([A-Za-z_][\w.\-/]*)(@[\w.\-/]*)?=(.*)$", text, re.S)
    if not m:
        return None
    return m.group(1) or "", m.group(2), m.group(4)


def quote_ids(overrides: list[str], multirun: bool) -> list[str]:
    """Rewrite the value of every id override (:data:`ID_KEYS`) to quoted strings so
    that Hydra passes exactly what was typed: ``user_id=1_0`` -> ``user_id='1_0'``,
    ``user=[1_0,007]`` -> ``user=['1_0','007']``; with ``-m`` each comma-separated
    value is quoted. Sweep functions, interpolations and values the user quoted are
    left alone. Each rewrite is parsed back with Hydra's parser and must give the
    typed text, else :class:`IdQuotingError`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = None
    out = []
    for text in overrides:
        parts = _split_override(text)
        if parts is None or parts[1] not in ID_KEYS:
            out.append(text)
            continue
        key, value = parts[1], parts[2]
        head = text[: len(text) - len(value)]
        stripped = value.strip()
        if _SWEEP_FN.match(stripped) or stripped.startswith("${") or _is_quoted(stripped):
            out.append(text)
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            elems = _split_top(stripped[1:-1]) if stripped[1:-1].strip() else []
            new, want = head + "[" + ",".join(_quote_element(e) for e in elems) + "]", [e.strip() for e in elems]
        elif multirun and len(_split_top(value)) > 1:
            elems = _split_top(value)
            new, want = head + ",".join(_quote_element(e) for e in elems), [e.strip() for e in elems]
        else:
            new, want = head + _quote_element(value, strip=False), [value]
        parser = parser or OverridesParser.create()
        try:
            o = parser.parse_override(new)
            got = [o._convert_value(x) for x in o.sweep_iterator()] if o.is_sweep_override() else o.value()
        except Exception:  # noqa: BLE001 - reported below
            got = None
        got = got if isinstance(got, list) else [got]
        if len(got) != len(want) or any(g != w for g, w in zip(got, want) if not _is_quoted(w)):
            raise IdQuotingError(f"{key}: cannot pass the id {value!r} on exactly as typed; quote it yourself "
                              f"(e.g. '{key}=\"...\"')")
        out.append(new)
    return out
