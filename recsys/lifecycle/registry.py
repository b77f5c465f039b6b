"""The model registry, on MLflow's model registry.

Embedded default (nothing to run): an MLflow SQLite store ``<dir>/mlflow.db`` and a
local artifact store ``<dir>/store/``; ``uri=`` points at a real MLflow server
(``http://host:5000``) or any MLflow registry URI instead, the artifacts still being
copied under ``<dir>/store`` (use a shared path there).

Layout of ``<dir>``::

    mlflow.db                        MLflow registry (registered models, versions, tags, aliases)
    audit.jsonl                      append-only audit trail with a hash chain (lifecycle/audit.py)
    store/<name>/<id>/artifact/      an immutable copy of the registered run or bundle
    store/<name>/<id>/lineage.json   its lineage (lifecycle/lineage.py)
    store/<name>/<id>/gates/*.json   the evidence of every promotion attempt
    serving/<name>@champion          symlink to the champion's artifact (moved on promote / rollback)

A *named model* holds versions of one kind (``run``, ``ranker``, ``query_encoder``,
``index``). Aliases ``champion`` and ``challenger`` are MLflow aliases; the champion
history (for :meth:`Registry.rollback`) is the registered model's tag
``recsys.champion_history``. Every action (register, promote, refused promotion,
approve, rollback, retire) is a record of the audit trail and the version's tag
``recsys.last_action``; the trail's head hash is the model's tag ``recsys.audit_head``.

MLflow's telemetry is switched off before it is imported (:func:`offline_env`); the
embedded store makes no network call.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from recsys.artifacts.bundle import bundle_name
from recsys.lifecycle.audit import AuditTrail, default_actor
from recsys.lifecycle.gates import Candidate, GateContext, GateRefused, GateResult, PerUserFn, refusal_line, run_gates
from recsys.lifecycle.lineage import read_lineage
from recsys.lifecycle.resolve import _require_mlflow, offline_env
from recsys.utils.errors import RecsysError
from recsys.utils.io import write_json_atomic

__all__ = ["Registry", "RegistryError", "Version", "offline_env", "resolve_champion"]

CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES = (CHAMPION, CHALLENGER)
#: version statuses (tag recsys.status)
STATUSES = ("registered", "champion", "superseded", "rolled_back", "retired")


class RegistryError(RecsysError):
    """A registry action that cannot be done (unknown model or version, wrong kind, retired...)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _ignore_run_clutter(directory: str, names: list[str]) -> list[str]:
    """A run's checkpoints and logger folders are not part of the registered artifact."""
    return [n for n in names if n in ("checkpoints", "wandb", "tensorboard", "lightning_logs", ".hydra")
            or n.endswith(".ckpt")]


@dataclass
class Version:
    name: str
    version: str
    kind: str
    status: str
    aliases: list[str]
    tags: dict[str, str]
    path: str
    lineage: dict[str, Any]
    created: str

    def candidate(self) -> Candidate:
        return Candidate(self.name, self.version, self.kind, self.lineage, self.tags, self.path)

    def summary(self) -> dict[str, Any]:
        lin = self.lineage
        return {"name": self.name, "version": self.version, "kind": self.kind, "status": self.status,
                "aliases": self.aliases, "created": self.created, "path": self.path,
                "model_class": lin.get("model_class"), "data_fingerprint": lin.get("data_fingerprint"),
                "git_commit": lin.get("git_commit"), "weights_sha256": lin.get("weights_sha256"),
                "embedding_version": lin.get("embedding_version"),
                "feature_set_version": lin.get("feature_set_version"), "config_sha256": lin.get("config_sha256"),
                "sensitive": self.tags.get("recsys.sensitive") == "true", "source": lin.get("source")}


class Registry:
    """The registry at ``directory`` (the embedded SQLite store unless ``uri`` is given).

    Example::

        reg = Registry("registry")
        v = reg.register("runs/train/2026-12-05_10-00-00", "sasrec", why="weekly retrain")
        reg.promote("sasrec", v.version, gates=cfg_gates, per_user=evaluator, why="beats v3")
        reg.resolve("sasrec")          # -> the champion's artifact folder
    """

    def __init__(self, directory: str | Path, uri: str | None = None):
        self.dir = Path(directory).resolve()
        self.uri = uri or f"sqlite:///{self.dir / 'mlflow.db'}"
        self.audit = AuditTrail(self.dir / "audit.jsonl")
        self._client: Any = None

    # --- MLflow ------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            offline_env()
            if self.uri.startswith("sqlite:"):
                self.dir.mkdir(parents=True, exist_ok=True)
            import logging

            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables"
            logging.getLogger("alembic").setLevel(logging.WARNING)
            _require_mlflow()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def _model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            raise RegistryError(f"no registered model {name!r} in {self.uri} "
                                f"(registered: {', '.join(self.names()) or 'none'})") from None

    def names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def _mv(self, name: str, ref: str | int) -> Any:
        from mlflow.exceptions import MlflowException

        self._model(name)
        s = str(ref)
        try:
            if s.isdigit():
                return self.client.get_model_version(name, s)
            return self.client.get_model_version_by_alias(name, s)
        except MlflowException:
            raise RegistryError(f"{name}: no version {s!r} (versions: "
                                f"{', '.join(v.version for v in self.versions(name)) or 'none'})") from None

    def _version(self, mv: Any) -> Version:
        tags = dict(mv.tags or {})
        lineage_path = tags.get("recsys.lineage")
        lineage = json.loads(Path(lineage_path).read_text()) if lineage_path and Path(lineage_path).is_file() else {}
        return Version(mv.name, str(mv.version), tags.get("recsys.kind", "?"), tags.get("recsys.status", "registered"),
                       sorted(mv.aliases or []), tags, str(mv.source), lineage,
                       datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat())

    def get(self, name: str, ref: str | int = CHAMPION) -> Version:
        """A version by number or alias."""
        return self._version(self._mv(name, ref))

    def versions(self, name: str) -> list[Version]:
        mvs = self.client.search_model_versions(f"name='{name}'")
        aliases = dict(self._model(name).aliases or {})  # the search does not fill versions' aliases
        out = sorted((self._version(m) for m in mvs), key=lambda v: int(v.version))
        for v in out:
            v.aliases = sorted(a for a, n in aliases.items() if str(n) == v.version)
        return out

    def champion(self, name: str) -> Version | None:
        try:
            return self.get(name, CHAMPION)
        except RegistryError:
            return None

    def _history(self, name: str) -> list[str]:
        raw = (self._model(name).tags or {}).get("recsys.champion_history", "[]")
        return [str(v) for v in json.loads(raw)]

    def _record(self, action: str, name: str, version: str | None, who: str | None, why: str,
                outcome: str = "ok", details: dict[str, Any] | None = None) -> dict[str, Any]:
        rec = self.audit.append(action, name, version, who=who, why=why, outcome=outcome, details=details)
        self.client.set_registered_model_tag(name, "recsys.audit_head", rec["hash"])
        if version is not None:
            short = {k: rec[k] for k in ("seq", "time", "who", "action", "outcome", "why", "hash")}
            self.client.set_model_version_tag(name, version, "recsys.last_action", json.dumps(short)[:4900])
        return rec

    def _status(self, name: str, version: str, status: str) -> None:
        self.client.set_model_version_tag(name, version, "recsys.status", status)

    # --- actions -------------------------------------------------------------------------
    def register(self, source: str | Path, name: str, *, who: str | None = None, why: str = "",
                 sensitive: bool = False, alias: str | None = CHALLENGER, description: str = "",
                 intended_use: str = "", limits: str = "", assumptions: str = "") -> Version:
        """Copy a run directory or bundle into the store and register it as a new version
        of ``name`` with its lineage; ``alias`` (default ``challenger``) points at it."""
        from mlflow.exceptions import MlflowException

        bundle_name(name, key="name")
        lineage = read_lineage(source)
        kind = lineage["kind"]
        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            model = self.client.create_registered_model(name, tags={"recsys.kind": kind,
                                                                    "recsys.champion_history": "[]"},
                                                        description=description)
        have = (model.tags or {}).get("recsys.kind", kind)
        if have != kind:
            raise RegistryError(f"{name}: holds {have} versions; {source} is a {kind} (register it under another name)")
        slot = self.dir / "store" / name / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        tmp = slot.with_name("." + slot.name + ".tmp")
        shutil.copytree(lineage["source"], tmp / "artifact", symlinks=False,
                        ignore=_ignore_run_clutter if kind == "run" else None)
        card = {"intended_use": intended_use, "limits": limits, "assumptions": assumptions}
        write_json_atomic(tmp / "lineage.json", {**lineage, "card": card, "registered_at": _now()})
        os.replace(tmp, slot)
        metrics = {k: round(v, 6) for k, v in sorted((lineage.get("metrics") or {}).items())}
        tags = {"recsys.kind": kind, "recsys.status": "registered", "recsys.lineage": str(slot / "lineage.json"),
                "recsys.source": str(lineage["source"]), "recsys.sensitive": "true" if sensitive else "false",
                "recsys.metrics": json.dumps(metrics)[:4900]}
        for key in ("data_fingerprint", "git_commit", "weights_sha256", "model_class", "embedding_version",
                    "feature_set_version", "config_sha256"):
            if lineage.get(key):
                tags[f"recsys.{key}"] = str(lineage[key])
        mv = self.client.create_model_version(name, source=str(slot / "artifact"), tags=tags,
                                              description=description or f"{kind} from {lineage['source']}")
        version = str(mv.version)
        if alias:
            self._check_alias(alias)
            if alias == CHAMPION:
                raise RegistryError("register: alias=champion is set by `promote` (through the gates), not here")
            self.client.set_registered_model_alias(name, alias, version)
        self._record("register", name, version, who, why,
                     details={"source": lineage["source"], "kind": kind, "alias": alias, "sensitive": sensitive,
                              "data_fingerprint": lineage.get("data_fingerprint"),
                              "weights_sha256": lineage.get("weights_sha256"), "git_commit": lineage.get("git_commit")})
        return self.get(name, version)

    @staticmethod
    def _check_alias(alias: str) -> None:
        if alias not in ALIASES:
            raise RegistryError(f"alias={alias!r}: expected one of {', '.join(ALIASES)}")

    def approve(self, name: str, ref: str | int, *, who: str | None = None, why: str = "") -> dict[str, Any]:
        """Record a reviewer's approval of a (sensitive) version."""
        v = self.get(name, ref)
        if not why:
            raise RegistryError("approve: why= is required (what was reviewed)")
        approval = {"who": who or default_actor(), "time": _now(), "why": why}
        self.client.set_model_version_tag(name, v.version, "recsys.approval", json.dumps(approval))
        self._record("approve", name, v.version, who, why, details=approval)
        return approval

    def promote(self, name: str, ref: str | int, *, gates: Mapping[str, Mapping[str, Any]],
                per_user: PerUserFn | None = None, who: str | None = None, why: str = "") -> list[GateResult]:
        """Run the gates on a version against the current champion; on success make it the
        champion, else raise :class:`GateRefused` naming the gate(s). Both are audited, and
        the evidence is written to the version's ``gates/`` folder."""
        v = self.get(name, ref)
        if v.status == "retired":
            raise RegistryError(f"{name} v{v.version} is retired; register it again to promote it")
        champ = self.champion(name)
        approval = json.loads(v.tags["recsys.approval"]) if "recsys.approval" in v.tags else None
        ctx = GateContext(champion=champ.candidate() if champ else None, per_user=per_user, approval=approval)
        results = run_gates(gates, v.candidate(), ctx)
        refused = any(r.blocks for r in results)
        evidence = {"time": _now(), "name": name, "version": v.version,
                    "champion": champ.version if champ else None, "outcome": "refused" if refused else "promoted",
                    "gates": [r.as_dict() for r in results]}
        slot = Path(v.tags["recsys.lineage"]).parent
        ev_path = slot / "gates" / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.json"
        write_json_atomic(ev_path, evidence)
        compact = {r.gate: r.status for r in results}
        self.client.set_model_version_tag(name, v.version, "recsys.gates", json.dumps(compact))
        self.client.set_model_version_tag(name, v.version, "recsys.gates_evidence", str(ev_path))
        details = {"champion": evidence["champion"], "evidence": str(ev_path), "gates": evidence["gates"]}
        if refused:
            line = refusal_line(name, v.version, results)
            self._record("promote", name, v.version, who, why, outcome="refused", details={**details, "refusal": line})
            raise GateRefused(line)
        self._set_champion(name, v.version, previous=champ)
        hist = [h for h in self._history(name) if h != v.version] + [v.version]
        self.client.set_registered_model_tag(name, "recsys.champion_history", json.dumps(hist))
        self._record("promote", name, v.version, who, why, details=details)
        return results

    def _set_champion(self, name: str, version: str, previous: Version | None) -> None:
        self.client.set_registered_model_alias(name, CHAMPION, version)
        if previous is not None and previous.version != version:
            self._status(name, previous.version, "superseded")
        self._status(name, version, "champion")
        try:
            if self.client.get_model_version_by_alias(name, CHALLENGER).version == version:
                self.client.delete_registered_model_alias(name, CHALLENGER)
        except Exception:  # noqa: BLE001 - no challenger alias
            pass
        self._link(name, version)

    def serving_link(self, name: str) -> Path:
        """A stable path that always points at the champion's artifact: give it to
        ``recsys serve`` (``serve.bundles.<kind>=<link>``) and ``POST /v1/admin/reload``
        after a promotion or rollback picks up the new champion."""
        return self.dir / "serving" / f"{name}@{CHAMPION}"

    def _link(self, name: str, version: str) -> None:
        target = Path(self.client.get_model_version(name, version).source)
        link = self.serving_link(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)

    def rollback(self, name: str, *, who: str | None = None, why: str = "") -> Version:
        """Make the previous champion (still registered, not retired) the champion again."""
        hist = self._history(name)
        champ = self.champion(name)
        if champ is None or not hist:
            raise RegistryError(f"{name}: no champion to roll back")
        current = hist.pop() if hist[-1] == champ.version else champ.version
        while hist and self.get(name, hist[-1]).status == "retired":
            hist.pop()
        if not hist:
            raise RegistryError(f"{name}: v{current} is the only champion it has had; nothing to roll back to")
        prev = hist[-1]
        self.client.set_registered_model_alias(name, CHAMPION, prev)
        self._status(name, current, "rolled_back")
        self._status(name, prev, "champion")
        self._link(name, prev)
        self.client.set_registered_model_tag(name, "recsys.champion_history", json.dumps(hist))
        self._record("rollback", name, prev, who, why, details={"from": current, "to": prev})
        return self.get(name, prev)

    def retire(self, name: str, ref: str | int, *, who: str | None = None, why: str = "") -> Version:
        """Archive a version: aliases removed, artifact moved to ``archived/`` (unloadable
        through the registry). The champion cannot be retired (promote or roll back first)."""
        v = self.get(name, ref)
        if CHAMPION in v.aliases:
            raise RegistryError(f"{name} v{v.version} is the champion; promote another version or roll back first")
        if v.status == "retired":
            raise RegistryError(f"{name} v{v.version} is already retired (archived at {v.tags.get('recsys.archived')})")
        for a in v.aliases:
            self.client.delete_registered_model_alias(name, a)
        art = Path(v.path)
        archived = art.parent / "archived"
        if art.is_dir():
            os.replace(art, archived)
        self._status(name, v.version, "retired")
        self.client.set_model_version_tag(name, v.version, "recsys.archived", str(archived))
        stage = _archive_stage(self.client, name, v.version)
        self._record("retire", name, v.version, who, why, details={"archived": str(archived), "mlflow_stage": stage,
                                                                    "previous_status": v.status})
        return self.get(name, v.version)

    def retire_superseded(self, name: str, *, keep: int = 1, who: str | None = None,
                          why: str = "past its replacement") -> list[str]:
        """Retire (archive) the versions past their replacement: former champions
        (``superseded`` / ``rolled_back``) except the ``keep`` most recent ones in the
        champion history, which stay loadable as rollback targets. Returns the versions retired."""
        if keep < 0:
            raise RegistryError(f"retire_superseded: keep={keep}: expected >= 0")
        champ = self.champion(name)
        hist = [h for h in self._history(name) if champ is None or h != champ.version]
        kept = set(hist[-keep:]) if keep else set()
        out = []
        for v in self.versions(name):
            if v.status in ("superseded", "rolled_back") and v.version not in kept and CHAMPION not in v.aliases:
                self.retire(name, v.version, who=who, why=why)
                out.append(v.version)
        return out

    def resolve(self, name: str, alias: str = CHAMPION) -> Path:
        """The artifact folder of ``name@alias`` (a run directory or bundle in the store)."""
        v = self.get(name, alias)
        if v.status == "retired":
            raise RegistryError(f"{name}@{alias} -> v{v.version} is retired (archived at "
                                f"{v.tags.get('recsys.archived')}): a retired version cannot be loaded")
        p = Path(v.path)
        if not p.is_dir():
            raise RegistryError(f"{name}@{alias} -> v{v.version}: artifact {p} is missing from the store")
        return p


def _archive_stage(client: Any, name: str, version: str) -> str | None:
    """MLflow's own "Archived" stage for a retired version (stages are deprecated in
    MLflow 3 but still shown by its UI); None where the store does not support them."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.transition_model_version_stage(name, version, "Archived")
        return "Archived"
    except Exception:  # noqa: BLE001 - a registry without stages: the recsys.status tag says it
        return None


def resolve_champion(name: str, directory: str | Path | None = None, uri: str | None = None) -> Path:
    """See :func:`recsys.lifecycle.resolve.resolve_champion`."""
    from recsys.lifecycle.resolve import resolve_champion as resolve

    return resolve(name, directory, uri)


# --- erasure (recsys data erase): versions trained on an erased user's data ---------------------

RETRAIN_DUE_TAG = "retrain_due"


def flag_retrain_due(reg: Registry, name: str, version: str, *, why: str, details: dict[str, Any],
                     who: str | None = None) -> dict[str, Any]:
    """Tag version ``name``/``version`` ``retrain_due=true`` and record it in the audit
    trail (``details`` must not name the erased user: the trail is append-only)."""
    reg.client.set_model_version_tag(name, version, RETRAIN_DUE_TAG, "true")
    return reg._record("retrain_due", name, version, who, why, details=details)


def retrain_due(reg: Registry) -> list[str]:
    """``name/version`` of every version tagged ``retrain_due=true``."""
    return [f"{v.name}/{v.version}" for n in reg.names() for v in reg.versions(n)
            if v.tags.get(RETRAIN_DUE_TAG) == "true"]
