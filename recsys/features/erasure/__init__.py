"""Erasure of one user from every artifact this project writes, and the check
that nothing of the user is left (``recsys data erase``).

What belongs to the user: every event whose raw ``user_id`` is the user, and
every event that identity resolution (:mod:`recsys.features.identity`) attributes
to the user - the anonymous pre-login events, the events of the user's devices.
Ids *all* of whose events are the user's (the user id, its anonymous ids, its
devices) are the user's *trace*: none of them may survive anywhere. Ids shared
with other accounts (a shared device) stay with the other accounts' events.

Artifacts (:class:`Targets`), each erased when given:

* ``events`` - the Parquet event store: rewritten without the user's events.
* ``features_dir`` - a ``recsys features build`` output: rebuilt with the build's
  own settings, read from its ``manifest.json`` (as_of, TTL, identity resolution,
  items, fitted params - not refitted), from the original events resolved as the
  build resolved them minus the user's events. Every other user's row is then
  identical to the build's; this is checked before anything is written (a rebuild
  that would change another user's row is refused: the manifest does not say how
  the features were built).
* ``online_state`` - an online store snapshot (default: ``<features_dir>/online_state``):
  replayed from the same events with its own params.
* ``runs`` - training runs: ``embeddings/users.parquet`` and ``seen.parquet`` lose
  the user's rows; index bundles inside the run are rewritten; any other file
  holding the user, and model weights trained on the user's events, are reported
  as *not erased*.
* ``indexes`` - index bundles: ``user_ids.npy`` / ``user_vectors.npy`` / the seen
  CSR lose the user's rows; the bundle is verified first (a modified bundle is
  refused, never re-sealed) and its manifest checksums are rewritten.
* ``cache_dir`` - the prepared-data cache (:mod:`recsys.data.prepare`): every cached
  dataset folder that holds the user is deleted (it is rebuilt on next use).

Everything new is written beside its target first; then every target is swapped
in (the old versions kept aside), the result is scanned for the user's trace, and
only then are the old versions deleted. A failure at any step leaves every
artifact as it was.

The report never claims more than it checked: artifact types not given are
listed (``not_given``), so are files that hold the user but cannot be rewritten
(``not_erased``), and ``complete`` is true only when every artifact type was
given and nothing is left. Copies this command is not told about (other runs,
backups, logs) are outside what it can prove.

Modules: :mod:`~recsys.features.erasure.targets` (what is given, the user's ids,
scanning), :mod:`~recsys.features.erasure.transaction` (all or nothing),
:mod:`~recsys.features.erasure.rebuild` (features and online state),
:mod:`~recsys.features.erasure.runs` (runs, index bundles, cache),
:mod:`~recsys.features.erasure.erase` (erase / verify),
:mod:`~recsys.features.erasure.report` (what is printed).
"""
from recsys.features.erasure.erase import add_external, add_traces, erase_user, user_trace, verify_erased
from recsys.features.erasure.report import report_lines
from recsys.features.erasure.targets import Targets, Trace, find_user, scan

__all__ = ["Targets", "Trace", "add_external", "add_traces", "erase_user", "find_user", "report_lines", "scan", "user_trace",
           "verify_erased"]
