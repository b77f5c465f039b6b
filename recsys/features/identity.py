"""Identity resolution: devices, sessions and anonymous ids linked to accounts
through login events, before any feature is computed.

Accounts are the ``user_id`` values of ``login`` events. Every other id on an
event (an anonymous ``user_id``, its ``device_id``, its ``session_id``) is a node;
each event joins its nodes, and a union-find (vectorised: hooking to the smaller
root plus pointer jumping, deterministic) gives the components. Accounts are
labels, never nodes, so two accounts are never merged.

Resolution of an event's user, first rule that applies:

1. its ``user_id`` is an account -> unchanged;
2. its session has logins -> the account with the most logins in that session;
3. its component has logins -> the account with the most logins in the component;
4. otherwise the anonymous id stays.

Ties go to the smallest account id. A component (e.g. a shared device) whose
logins name more than one account is a *conflict*: rule 3 still picks one
account, and the report counts conflicting components, devices and the events
resolved through them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (the smallest node id) of nodes ``0..n-1`` joined by edges ``a-b``."""
    parent = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        if not (lo != hi).any():
            break
        np.minimum.at(parent, hi, lo)  # hook the larger root under the smaller
        while True:  # pointer jumping (path compression)
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


def _pick(owner: pl.DataFrame, key: str) -> pl.DataFrame:
    """Per ``key``: the account with most logins (ties: smallest id), and how many accounts."""
    c = owner.group_by(key, "account").agg(n=pl.len())
    best = c.sort([key, "n", "account"], descending=[False, True, False]).group_by(key, maintain_order=True).first()
    n_acc = c.group_by(key).agg(n_accounts=pl.len())
    return best.join(n_acc, on=key).select(key, "account", "n_accounts")


def resolve_identities(events: pl.DataFrame, keep_rule: bool = False) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Events with ``user_id`` resolved (and the original in ``raw_user_id``);
    ``keep_rule`` adds ``identity_rule`` (1-4, the rule that resolved the event) and
    ``identity_conflict`` (resolved through a component naming several accounts)."""
    ev = events.with_row_index("__i")
    is_login = pl.col("event_type") == "login"
    accounts = set(ev.filter(is_login)["user_id"].unique().to_list())
    ids = pl.concat([
        ev.filter(~pl.col("user_id").is_in(list(accounts))).select(pl.concat_str(pl.lit("u:"), "user_id").alias("n")),
        ev.filter(pl.col("device_id").is_not_null()).select(pl.concat_str(pl.lit("d:"), "device_id").alias("n")),
        ev.filter(pl.col("session_id").is_not_null()).select(pl.concat_str(pl.lit("s:"), "session_id").alias("n")),
    ]).unique().sort("n")["n"]
    node = {k: i for i, k in enumerate(ids.to_list())}
    cols = {"u": [None if u in accounts else node.get("u:" + u) for u in ev["user_id"].to_list()],
            "d": [None if d is None else node["d:" + d] for d in ev["device_id"].to_list()],
            "s": [None if s is None else node["s:" + s] for s in ev["session_id"].to_list()]}
    arr = {k: np.array([-1 if x is None else x for x in v], dtype=np.int64) for k, v in cols.items()}
    edges = []
    for x, y in (("u", "d"), ("u", "s"), ("d", "s")):
        m = (arr[x] >= 0) & (arr[y] >= 0)
        edges.append((arr[x][m], arr[y][m]))
    a = np.concatenate([e[0] for e in edges]) if edges else np.zeros(0, np.int64)
    b = np.concatenate([e[1] for e in edges]) if edges else np.zeros(0, np.int64)
    comp = union_find(len(node), a, b)
    anyn = np.where(arr["s"] >= 0, arr["s"], np.where(arr["d"] >= 0, arr["d"], arr["u"]))
    ev = ev.with_columns(__comp=pl.Series(np.where(anyn >= 0, comp[np.maximum(anyn, 0)], -1)))
    logins = ev.filter(is_login).select("__comp", "session_id", account=pl.col("user_id"))
    by_sess = _pick(logins.filter(pl.col("session_id").is_not_null()), "session_id").rename(
        {"account": "__sess_acc", "n_accounts": "__sess_n"})
    by_comp = _pick(logins.filter(pl.col("__comp") >= 0), "__comp").rename(
        {"account": "__comp_acc", "n_accounts": "__comp_n"})
    ev = ev.join(by_sess, on="session_id", how="left").join(by_comp, on="__comp", how="left")
    is_acc = pl.col("user_id").is_in(list(accounts))
    rule = (pl.when(is_acc).then(pl.lit(1)).when(pl.col("__sess_acc").is_not_null()).then(pl.lit(2))
            .when(pl.col("__comp_acc").is_not_null()).then(pl.lit(3)).otherwise(pl.lit(4)))
    ev = ev.with_columns(__rule=rule).with_columns(
        raw_user_id=pl.col("user_id"),
        user_id=pl.when(pl.col("__rule") == 1).then(pl.col("user_id")).when(pl.col("__rule") == 2)
        .then(pl.col("__sess_acc")).when(pl.col("__rule") == 3).then(pl.col("__comp_acc"))
        .otherwise(pl.col("user_id")))
    dev_acc = logins.join(ev.select("__comp", "device_id").unique(), on="__comp").filter(
        pl.col("device_id").is_not_null()).group_by("device_id").agg(pl.col("account").n_unique().alias("k"))
    rules = ev["__rule"].value_counts()
    counts = dict(zip(rules["__rule"].to_list(), rules["count"].to_list()))
    report = {
        "n_events": ev.height, "n_accounts": len(accounts), "n_nodes": len(node),
        "n_components": int(len(np.unique(comp))) if len(node) else 0,
        "events_kept": int(counts.get(1, 0)), "events_by_session_login": int(counts.get(2, 0)),
        "events_by_component": int(counts.get(3, 0)), "events_anonymous": int(counts.get(4, 0)),
        "conflict_components": int(by_comp.filter(pl.col("__comp_n") > 1).height),
        "conflict_devices": int(dev_acc.filter(pl.col("k") > 1).height),
        "events_resolved_through_conflicts": int(ev.filter((pl.col("__rule") == 3) & (pl.col("__comp_n") > 1)).height),
        "rule": "account id > session's top login account > component's top login account (ties: smallest id)",
    }
    if keep_rule:
        ev = ev.with_columns(identity_rule=pl.col("__rule"),
                             identity_conflict=((pl.col("__rule") == 3) & (pl.col("__comp_n") > 1)).fill_null(False))
    out = ev.sort("__i").drop([c for c in ev.columns if c.startswith("__")])
    return out, report


def identity_links(events: pl.DataFrame, user_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The events of ``user_id`` once identities are resolved, and the ids linked to it.

    An event belongs to the user when its raw ``user_id`` (or ``raw_user_id``, in
    an already resolved log) is ``user_id``, or when :func:`resolve_identities`
    attributes it to ``user_id`` (its anonymous pre-login events, its devices'
    events). Resolution runs whenever the log has ``login`` events (a missing
    ``device_id`` / ``session_id`` column counts as all null).

    Returns ``(mask, links)``: ``mask`` (n,) bool marks the user's events;
    ``links`` holds ``user_ids`` / ``device_ids`` - the raw ids *all* of whose
    events are the user's (the user's own id included), i.e. ids that would
    identify the user if they survived anywhere -, ``affected_ids`` (every raw or
    resolved user id of a marked event: the entities whose features the marked
    events feed), and ``shared_user_ids`` / ``shared_device_ids``: counts of ids
    with events of the user *and* of other accounts (a shared device); those ids
    stay with the other accounts' events.
    """
    user_id = str(user_id)
    raw = events["user_id"].cast(pl.String)
    hit = (raw == user_id).fill_null(False)
    if "raw_user_id" in events.columns:
        hit = hit | (events["raw_user_id"].cast(pl.String) == user_id).fill_null(False)
    resolved_through_logins = False
    resolved = raw
    conflict = pl.Series([False] * events.height)
    if events.height and (events["event_type"].cast(pl.String) == "login").any():
        cols = [pl.col("user_id").cast(pl.String), pl.col("event_type").cast(pl.String)]
        for c in ("device_id", "session_id"):
            cols.append(pl.col(c).cast(pl.String) if c in events.columns else pl.lit(None, pl.String).alias(c))
        out = resolve_identities(events.select(cols), keep_rule=True)[0]
        resolved, conflict = out["user_id"], out["identity_conflict"]
        hit = hit | (resolved == user_id).fill_null(False)
        resolved_through_logins = True
    frame = pl.DataFrame({"raw": raw, "resolved": resolved, "hit": hit})
    if "device_id" in events.columns:
        frame = frame.with_columns(device=events["device_id"].cast(pl.String))

    def split(col: str) -> tuple[list[str], int]:
        g = frame.filter(pl.col(col).is_not_null()).group_by(col).agg(all=pl.col("hit").all(), any=pl.col("hit").any())
        exclusive = sorted(g.filter(pl.col("all"))[col].to_list())
        return exclusive, int(g.filter(pl.col("any") & ~pl.col("all")).height)

    user_ids, shared_users = split("raw")
    device_ids, shared_devices = split("device") if "device" in frame.columns else ([], 0)
    if "raw_user_id" in events.columns:
        more = frame.with_columns(raw2=events["raw_user_id"].cast(pl.String))
        g = more.filter(pl.col("raw2").is_not_null()).group_by("raw2").agg(all=pl.col("hit").all())
        user_ids = sorted(set(user_ids) | set(g.filter(pl.col("all"))["raw2"].to_list()))
    mask = hit.to_numpy().astype(bool)
    marked = frame.filter(pl.col("hit"))
    affected = set(marked["raw"].to_list()) | set(marked["resolved"].to_list())
    links = {"user_ids": sorted(set(user_ids) | {user_id}), "device_ids": device_ids,
             "affected_ids": sorted(a for a in affected if a is not None),
             "shared_user_ids": shared_users, "shared_device_ids": shared_devices,
             "n_events": int(mask.sum()), "n_events_through_links": int((mask & (raw != user_id).fill_null(True)
                                                                          .to_numpy().astype(bool)).sum()),
             "n_events_through_shared_devices": int((mask & conflict.to_numpy().astype(bool)).sum()),
             "resolved_through_logins": resolved_through_logins}
    return mask, links


# --- the identity graph as a link file (``recsys data erase identity=<file>``) -------------------

#: node types of a link file; ``account`` ids are login user ids (labels, never merged)
LINK_TYPES = ("account", "user", "device", "session")
LINK_COLUMNS = ("id", "id_type", "linked_id", "linked_type")


def read_link_file(path: str | Any) -> pl.DataFrame:
    """An identity link file (Parquet, or CSV by its ``.csv`` suffix): one row per
    link, columns ``id``, ``id_type``, ``linked_id``, ``linked_type`` (all strings;
    types: ``account`` - a login user id -, ``user`` - an anonymous user id -,
    ``device``, ``session``). Links are undirected. Refused in one line (file,
    column, what was expected)."""
    from pathlib import Path

    from recsys.utils.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "no such file (expected an identity link file: Parquet or .csv with columns "
                           + ", ".join(LINK_COLUMNS) + ")")
    try:
        df = pl.read_csv(p, infer_schema=False) if p.suffix.lower() == ".csv" else pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise DataError(p, f"unreadable identity link file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") \
            from None
    for c in LINK_COLUMNS:
        if c not in df.columns:
            raise DataError(p, f"missing (identity link files have columns {', '.join(LINK_COLUMNS)})", column=c)
    df = df.select([pl.col(c).cast(pl.String) for c in LINK_COLUMNS])
    for c in LINK_COLUMNS:
        nulls = df[c].is_null()
        if nulls.any():
            raise DataError(p, f"empty value (ids and types are required)", line=int(nulls.arg_true()[0]) + 1,
                            column=c)
    for c in ("id_type", "linked_type"):
        bad = ~df[c].is_in(list(LINK_TYPES))
        if bad.any():
            i = int(bad.arg_true()[0])
            raise DataError(p, f"type {df[c][i]!r}, expected one of {', '.join(LINK_TYPES)}", line=i + 1, column=c)
    return df


def link_closure(links: pl.DataFrame, user_id: str) -> dict[str, Any]:
    """The ids linked to account ``user_id`` through a link table (:func:`read_link_file`),
    transitively: a union-find over the non-account nodes (devices, sessions,
    anonymous ids; accounts are labels, so two accounts are never merged) gives the
    components; a component whose links name only ``user_id`` is the user's, one
    that also names another account is *shared* (kept, counted).

    Returns ``{"user_ids", "device_ids", "session_ids"}`` (sets; ``user_ids`` holds
    ``user_id`` itself and its anonymous ids), ``shared`` (how many linked
    components also belong to another account) and ``rows`` ((n,) bool: the link
    rows that name one of the user's ids - what erasure removes from the file)."""
    user_id = str(user_id)
    a = list(zip(links["id_type"].to_list(), links["id"].to_list()))
    b = list(zip(links["linked_type"].to_list(), links["linked_id"].to_list()))
    nodes = sorted({n for n in a + b if n[0] != "account"})
    index = {n: i for i, n in enumerate(nodes)}
    ea = [index[x] for x, y in zip(a, b) if x[0] != "account" and y[0] != "account"]
    eb = [index[y] for x, y in zip(a, b) if x[0] != "account" and y[0] != "account"]
    comp = union_find(len(nodes), np.array(ea, np.int64), np.array(eb, np.int64)) if nodes else np.zeros(0, np.int64)
    owners: dict[int, set[str]] = {}
    for x, y in zip(a, b):
        for acc, other in ((x, y), (y, x)):
            if acc[0] == "account" and other[0] != "account":
                owners.setdefault(int(comp[index[other]]), set()).add(acc[1])
    mine = {c for c, accs in owners.items() if accs == {user_id}}
    shared = sum(1 for accs in owners.values() if user_id in accs and len(accs) > 1)
    out: dict[str, Any] = {"user_ids": {user_id}, "device_ids": set(), "session_ids": set(), "shared": shared}
    key = {"user": "user_ids", "device": "device_ids", "session": "session_ids"}
    for n, i in index.items():
        if int(comp[i]) in mine:
            out[key[n[0]]].add(n[1])
    ids = {("account", user_id)} | {(t, v) for t, k in key.items() for v in out[k]}
    out["rows"] = np.array([x in ids or y in ids for x, y in zip(a, b)], dtype=bool)
    return out
