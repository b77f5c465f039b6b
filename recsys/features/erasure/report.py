"""What ``recsys data erase`` prints: the erasure report, or the traces ``verify`` found."""
from __future__ import annotations

import json
from typing import Any

from recsys.features.erasure.targets import ARTIFACT_TYPES


def report_lines(res: dict[str, Any], verify: bool = False) -> list[str]:
    """What ``recsys data erase`` prints."""
    user = res["user_id"]
    idn = res["identity"]
    linked = f"{idn['linked_user_ids']} linked user ids, {idn['linked_device_ids']} linked devices"
    if verify:
        lines = [f"verify user {user!r} ({linked}): checked {', '.join(res['checked'])}"]
        lines += [f"  TRACE {h['path']}:{h['column']}" + (f" ({h['rows']} rows)" if h["rows"] else "")
                  for h in res["traces"]]
        lines.append(f"{len(res['traces'])} traces of the user remain" if res["traces"] else
                     "no trace of the user in the artifacts checked")
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
                                       "index_bundles", "removed", "datasets_deleted") if a.get(k)}
            detail = json.dumps(extra, default=str) if extra else ""
            lines.append(f"  {kind}: {a['status']} {a['path']} {detail}".rstrip())
    lines.append(f"changed: {', '.join(res['changed']) or 'nothing'}")
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
