"""The consent list: which users may be personalised, honoured the same way by feature
building (``recsys features build consent=<file>``: an opted-out user's events never
reach a snapshot or the online state) and by serving (``serve.consent_list=<file>``:
applied to the state store at start; see :mod:`recsys.service.app`).

The file is Parquet or CSV with two columns: ``user_id`` (any type, compared as a
string) and ``granted`` (boolean, 0/1 or the strings true/false). A user listed twice
with different values is refused. Users not listed get ``default`` (the service's
``serve.consent_default``; ``true`` unless configured otherwise). With identity
resolution, an event is dropped when its resolved account or its raw id (device,
anonymous id) is not allowed, so the devices linked to an opted-out account go too.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.utils.errors import DataError

_TRUE, _FALSE = {"true", "1", "yes", "granted"}, {"false", "0", "no", "revoked"}


@dataclass(frozen=True)
class ConsentList:
    granted: frozenset[str]
    revoked: frozenset[str]
    default: bool
    source: str
    sha256: str

    def allows(self, user: str) -> bool:
        if user in self.revoked:
            return False
        return True if user in self.granted else self.default

    def describe(self) -> dict[str, Any]:
        """What a manifest records (enough to apply the same list again and notice a change)."""
        return {"path": self.source, "sha256": self.sha256, "default": self.default,
                "granted": len(self.granted), "revoked": len(self.revoked)}


def read_consent_list(path: str | Path, default: bool = True) -> ConsentList:
    """Read and check a consent list; one-line :class:`DataError` naming the file and
    what is wrong (missing file, missing column, a value that is not a boolean, a user
    listed with both values)."""
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "no such file (the consent list: user_id, granted)")
    try:
        df = pl.read_csv(p, infer_schema_length=0) if p.suffix.lower() == ".csv" else pl.read_parquet(p)
    except Exception as e:  # polars raises its own exception types
        raise DataError(p, f"not a readable {'CSV' if p.suffix.lower() == '.csv' else 'Parquet'} file "
                           f"({type(e).__name__})") from None
    missing = [c for c in ("user_id", "granted") if c not in df.columns]
    if missing:
        raise DataError(p, f"missing column {missing[0]!r} (a consent list has user_id, granted; "
                           f"found: {', '.join(df.columns) or 'none'})")
    raw = df["user_id"].to_list()
    if any(u is None or str(u) == "" for u in raw):
        raise DataError(p, "column 'user_id' has empty values")
    users = [str(u) for u in raw]
    values = []
    for i, v in enumerate(df["granted"].to_list()):
        s = str(v).strip().lower() if v is not None else ""
        if isinstance(v, bool):
            values.append(v)
        elif s in _TRUE or s in _FALSE:
            values.append(s in _TRUE)
        else:
            raise DataError(p, f"row {i}: granted={v!r}; expected a boolean (true/false or 1/0)")
    granted = {u for u, g in zip(users, values) if g}
    revoked = {u for u, g in zip(users, values) if not g}
    both = granted & revoked
    if both:
        raise DataError(p, f"user {sorted(both)[0]!r} is listed as both granted and revoked "
                           f"({len(both)} such users)")
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return ConsentList(frozenset(granted), frozenset(revoked), bool(default), str(p.resolve()), digest)


def drop_without_consent(events: Any, consent: ConsentList) -> tuple[Any, dict[str, int]]:
    """The events (a polars DataFrame) of allowed users only: a row goes when its
    ``user_id`` (the resolved account after identity resolution) or its
    ``raw_user_id`` (when present) is not allowed. Returns the frame and counts."""
    import polars as pl

    def allowed(col: str) -> pl.Expr:
        c = pl.col(col).cast(pl.Utf8)
        if consent.default:
            return ~c.is_in(list(consent.revoked))
        return c.is_in(list(consent.granted))

    keep = allowed("user_id")
    if "raw_user_id" in events.columns:
        keep = keep & (pl.col("raw_user_id").is_null() | allowed("raw_user_id"))
    kept = events.filter(keep)
    dropped = events.filter(~keep)
    return kept, {"rows_dropped": dropped.height, "users_dropped": dropped["user_id"].n_unique()}
