"""``registry:<name>@<alias>`` -> the registered artifact folder, for the decision service.

Deliberately small and torch-free (only MLflow's client): ``recsys.service`` may import
it (the layer order puts ``lifecycle`` below ``service``) to accept bundle references
such as ``serve.bundles.ranker=registry:ctr@champion``. A reload of the service
re-resolves the reference, so ``POST /v1/admin/reload`` after ``recsys registry
promote`` / ``rollback`` serves the new champion. The stable symlink
``<registry dir>/serving/<name>@champion`` (moved by promote / rollback) works the same
way without any code in the service.
"""
from __future__ import annotations

import os
from pathlib import Path

from recsys.utils.errors import RecsysError

PREFIX = "registry:"

_OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
                "GIT_PYTHON_REFRESH": "quiet"}


def offline_env() -> None:
    """Disable MLflow's telemetry (and anything else that could call out) before it is imported."""
    for k, v in _OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def _require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise RecsysError("the model registry needs MLflow: pip install 'recsys[lifecycle]' "
                          "(mlflow-skinny, sqlalchemy, alembic)") from None


def is_registry_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve_champion(name: str, directory: str | Path | None = None, uri: str | None = None) -> Path:
    """The artifact folder of ``name`` (``<name>``, ``<name>@<alias>`` or
    ``registry:<name>@<alias>``; alias default ``champion``; a version number in place of
    the alias names that version). ``directory``: the registry
    folder (default ``$RECSYS_REGISTRY_DIR``, else ``runs/registry``); ``uri``: an MLflow
    registry URI (default the embedded ``sqlite:///<directory>/mlflow.db``).
    Raises :class:`~recsys.utils.errors.RecsysError` for an unknown name or alias, a
    retired version or a missing artifact."""
    offline_env()
    ref = name[len(PREFIX):] if name.startswith(PREFIX) else name
    model, _, alias = ref.partition("@")
    alias = alias or "champion"
    d = Path(directory or os.environ.get("RECSYS_REGISTRY_DIR") or "runs/registry").resolve()
    uri = uri or f"sqlite:///{d / 'mlflow.db'}"
    if uri.startswith("sqlite:") and not (d / "mlflow.db").is_file():
        raise RecsysError(f"{PREFIX}{model}@{alias}: no registry at {d} (set RECSYS_REGISTRY_DIR)")
    _require_mlflow()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version(model, alias) if alias.isdigit() else client.get_model_version_by_alias(model, alias)
    except MlflowException:
        what = "version" if alias.isdigit() else "alias"
        raise RecsysError(f"{PREFIX}{model}@{alias}: no such registered model or {what} in {uri}") from None
    tags = mv.tags or {}
    if tags.get("recsys.status") == "retired" or "recsys.archived" in tags:
        raise RecsysError(f"{PREFIX}{model}@{alias} -> v{mv.version} is retired (archived at "
                          f"{tags.get('recsys.archived')}): a retired version cannot be loaded")
    p = Path(str(mv.source))
    if not p.is_dir():
        raise RecsysError(f"{PREFIX}{model}@{alias} -> v{mv.version}: artifact {p} missing from the store")
    return p
