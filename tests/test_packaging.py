"""Install sets: the CPU and GPU builds of FAISS and ONNX Runtime install the same
modules and shadow each other, so they are alternative extras (``cpu`` / ``gpu``)
and no install set lists both; the conda files list what pyproject.toml lists."""
from __future__ import annotations

import importlib.metadata
import re

import pytest
import yaml

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# (CPU build, GPU build(s)) of one module: never both in one install set
PAIRS = [("faiss-cpu", ("faiss-gpu",)), ("onnxruntime", ("onnxruntime-gpu",))]
SETS = {"base+cpu": ("cpu",), "base+gpu": ("gpu",), "base+dev+cpu": ("dev", "cpu"), "base+dev+gpu": ("dev", "gpu")}
ENV_FILES = {"environment.yml": ("cpu", "dev"), "environment-gpu.yml": ("gpu", "dev")}


def _name(req: str) -> str:
    return re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1).lower().replace("_", "-")


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req.split(";")[0]).lower().replace("_", "-")


def _pyproject() -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]), {k: list(v) for k, v in project["optional-dependencies"].items()}


def _installed() -> tuple[list[str], dict[str, list[str]]]:
    base, extras = [], {}
    for req in importlib.metadata.requires("recsys") or []:
        m = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", req)
        (extras.setdefault(m.group(1), []) if m else base).append(req.split(";")[0].strip())
    return base, extras


def _clashes(names: set[str]) -> list[str]:
    out = []
    for cpu, gpus in PAIRS:
        gpu = sorted(n for n in names if n.startswith(gpus))
        if cpu in names and gpu:
            out.append(f"{cpu} with {', '.join(gpu)}")
    return out


@pytest.mark.parametrize("source", ["pyproject.toml", "installed metadata"])
def test_no_install_set_lists_a_cpu_and_a_gpu_build(source):
    base, extras = _pyproject() if source == "pyproject.toml" else _installed()
    assert {"cpu", "gpu", "dev"} <= set(extras), f"{source}: extras {sorted(extras)}"
    base_names = {_name(r) for r in base}
    for cpu, gpus in PAIRS:  # the builds live only in the alternative extras
        assert cpu not in base_names and not any(n.startswith(gpus) for n in base_names), (source, sorted(base_names))
        assert cpu in {_name(r) for r in extras["cpu"]}, (source, extras["cpu"])
        assert any(_name(r).startswith(gpus) for r in extras["gpu"]), (source, extras["gpu"])
    for label, chosen in SETS.items():
        names = base_names | {_name(r) for e in chosen for r in extras[e]}
        assert not _clashes(names), f"{source}: install set {label} lists {_clashes(names)}"


def test_installed_metadata_matches_pyproject():
    """A stale editable install (``make`` rebuilds it when pyproject.toml changes)."""
    (b1, e1), (b2, e2) = _pyproject(), _installed()
    stale = "the installed recsys metadata differs from pyproject.toml: reinstall (`make venv`)"
    assert sorted(map(_norm, b1)) == sorted(map(_norm, b2)), stale
    assert {k: sorted(map(_norm, v)) for k, v in e1.items()} == {k: sorted(map(_norm, v)) for k, v in e2.items()}, stale


@pytest.mark.parametrize("path", sorted(ENV_FILES))
def test_conda_environment_lists_pyproject_base_and_its_extras(path):
    env = yaml.safe_load((ROOT / path).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = [r for r in pip if not r.startswith("-")]
    assert "-e ." in pip, f"{path}: installs the package itself"
    base, extras = _pyproject()
    want = base + [r for e in ENV_FILES[path] for r in extras[e]]
    assert sorted(map(_norm, listed)) == sorted(set(map(_norm, want))), \
        f"{path}: its pip list must be pyproject.toml's dependencies + extras {ENV_FILES[path]}"
    assert not _clashes({_name(r) for r in listed}), path
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert not _clashes({_name(d) for d in conda}) and {_name(d) for d in conda} <= {"python", "pip"}, conda
