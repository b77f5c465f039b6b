"""What ``recsys data erase`` prints: the erasure report, or the traces ``verify`` found."""
from __future__ import annotations

import json
from typing import Any

from recsys.features.erasure.targets import ARTIFACT_TYPES


def report_lines(res: dict[str, Any], verify: bool = False) -> list[str]:
    """What ``recsys data erase`` prints."""
    user = res["user_id"]
    idn = res["identity"]
    linked = (f"{idn['linked_user_ids']} linked user ids, {idn['linked_device_ids']} linked devices, "
              f"{idn.get('linked_session_ids', 0)} linked sessions")
    if verify:
        lines = [f"verify user {user!r} ({linked}; linked ids from {', '.join(res.get('linked_ids_from', ['events']))})"
                 f": checked {', '.join(res['checked'])}"]
        lines += [f"  TRACE ({h.get('artifact', '?')}) {h['path']}:{h['column']}"
                  + (f" ({h['rows']} rows)" if h["rows"] else "") + (f": {h['why']}" if h.get("why") else "")
                  for h in res["traces"]]
        if "receipt" not in res.get("linked_ids_from", []):
            lines.append("  note: without receipt= the ids an erasure removed from the identity file and the "
                         "events are not known here; give the erase's erasure_receipt.json to check them too")
        lines += [f"  CANNOT CHANGE ({h.get('artifact', '?')}) {h['path']}:{h['column']}: {h['why']}"
                  for h in res.get("cannot_change", [])]
        if "retrain_due" in res:
            lines.append(f"models to retrain (tagged retrain_due=true): {', '.join(res['retrain_due']) or 'none'}")
        lines.append(f"{len(res['traces'])} traces of the user remain" if res["traces"] else
                     "no trace of the user in the artifacts checked" + (
                         f", except {len(res['cannot_change'])} copies this command cannot change (listed above)"
                         if res.get("cannot_change") else ""))
        if res["not_given"]:
            lines.append(f"not checked (not given): {', '.join(res['not_given'])}")
        return lines
    ev = res["artifacts"]["events"]
    lines = [f"erased user {user!r}: {ev['events_removed']} events removed "
             f"({ev.get('events_removed_through_identity_links', 0)} through identity links, "
             f"{idn['events_through_shared_devices']} of them through a device shared with other accounts; {linked}; "
             f"shared ids kept with other accounts: {idn['shared_user_ids_kept']} user ids, "
             f"{idn['shared_device_ids_kept']} devices)"]
    for kind in ARTIFACT_TYPES[1:]:
        v = res["artifacts"].get(kind)
        for a in (v if isinstance(v, list) else [v] if v else []):
            extra = {k: a[k] for k in ("user_rows_removed", "rebuilt_with", "replayed_events", "embeddings",
                                       "index_bundles", "removed", "datasets_deleted", "links_removed",
                                       "keys_removed", "retrain_due") if a.get(k)}
            detail = json.dumps(extra, default=str) if extra else ""
            lines.append(f"  {kind}: {a['status']} {a['path']} {detail}".rstrip())
    lines.append(f"changed: {', '.join(res['changed']) or 'nothing'}")
    reg = res["artifacts"].get("registry")
    if reg is not None:
        due = reg.get("retrain_due") or []
        lines.append(f"models to retrain (tagged retrain_due=true): {', '.join(due) if due else 'none'}")
    if res.get("receipt"):
        lines.append(f"receipt (salted digests of the erased ids, for verify): {res['receipt']}")
    for h in res["not_erased"]:
        lines.append(f"  NOT ERASED ({h['artifact']}) {h['path']}" + (f":{h['column']}" if h["column"] else "")
                     + f": {h['why']}")
    if res["complete"]:
        lines.append("erasure complete for every artifact type: no trace of the user in the artifacts given "
                     "(copies this command was not given are not covered)")
    else:
        why = []
        if res["not_given"]:
            why.append(f"not given: {', '.join(res['not_given'])}")
        if res["not_erased"]:
            why.append(f"{len(res['not_erased'])} files not erased")
        lines.append(f"erasure NOT complete ({'; '.join(why)}); no trace of the user is left in what was erased")
    return lines
