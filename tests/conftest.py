"""Fixtures the test files share: tiny models built once per session, smoke params in the test's run
directory, and the builders of a throwaway project that ``artsim`` runs on.

The repository's root ``conftest.py`` sets the environment for every test (offline, one thread, a
temporary run directory) and holds the ``run_dir`` fixture. Test files take what they share from
here, never from each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


# -- models and params --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Callable[[str], Path]:
    """``tiny_models(kind)``: the folder of the seeded tiny ``kind`` checkpoint (``models.KINDS``:
    clip, blip2, sdxl_refiner, resnet), built once per session on first use, as the smoke profile
    builds it (``ensure_tiny_checkpoints``, seed 0). Shared: read it, never rebuild or change it
    (a test that does builds its own with ``models.build_tiny``)."""
    from artsim_lib import config
    from artsim_lib.models import KINDS, ensure_tiny_checkpoints  # torch: only when a test asks

    root = tmp_path_factory.mktemp("tiny-models")
    P = config.load_params("smoke", [f"models.{kind}={root}/tiny-{kind.replace('_', '-')}" for kind in KINDS])
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            built[kind] = ensure_tiny_checkpoints(P, [kind])[kind]
        return built[kind]

    return get


@pytest.fixture
def smoke_params(run_dir, tiny_models) -> Callable[..., object]:
    """``smoke_params(*overrides, models=())``: the smoke profile's params with ``key=value``
    overrides, in this test's own run directory (``run_dir``); each kind named in ``models`` points
    at the session's shared tiny checkpoint (``tiny_models``) instead of one built in the run."""

    from artsim_lib import config

    def make(*overrides: str, models: tuple[str, ...] | list[str] = ()) -> config.Params:
        shared = [f"models.{kind}={tiny_models(kind)}" for kind in models]
        return config.load_params("smoke", [*shared, *overrides])

    return make


# -- a throwaway project that `artsim` runs on ----------------------------------------------------
def _write_notebook(path, stage, body="", parameters=""):
    """A notebook following the contract: parameters cell, load_params + start_stage, finish."""
    params = nbformat.v4.new_code_cell('profile = "smoke"\noverrides = []\n' + parameters)
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "from artsim_lib import config\n"
            "from artsim_lib.io import provenance\n"
            "P = config.load_params(profile, overrides)\n"
            f"stage = provenance.start_stage({stage!r}, P)"
        ),
        nbformat.v4.new_code_cell(body or "pass"),
        nbformat.v4.new_code_cell("stage.finish(size=P.preprocess.size)"),
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _make_project(root, stages=("01-a", "02-b"), bodies=None, notebooks=None):
    """A minimal project tree: params/smoke.yaml and notebooks/NN-name.ipynb, one per stage (with
    ``notebooks="study"``: a copy of the study's own notebooks instead)."""
    root = Path(root)
    (root / "params").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params" / "smoke.yaml", root / "params" / "smoke.yaml")
    if notebooks == "study":
        shutil.copytree(REPO / "notebooks", root / "notebooks")
        return root
    bodies = bodies or {}
    for stage in stages:
        _write_notebook(root / "notebooks" / f"{stage}.ipynb", stage, bodies.get(stage, ""))
    return root


def _project_env(root):
    """The environment for a subprocess working on the project at ``root``."""
    env = {k: v for k, v in os.environ.items() if k not in ("ARTSIM_RUN_DIR", "ARTSIM_NOTEBOOKS_DIR")}
    env["ARTSIM_ROOT"] = str(root)
    return env


def _artsim(root, *args, check=True):
    """Run ``python -m artsim_lib ARGS`` against the project at ``root``."""
    proc = subprocess.run(
        [sys.executable, "-m", "artsim_lib", *args],
        cwd=root,
        env=_project_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"artsim {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture
def write_notebook():
    """``write_notebook(path, stage, body="", parameters="")``: a notebook that follows the stage
    contract (parameters cell, load_params + start_stage, ``body``, finish)."""
    return _write_notebook


@pytest.fixture
def make_project():
    """``make_project(root, stages=("01-a", "02-b"), bodies=None, notebooks=None)``: a project
    tree with params/smoke.yaml and one small notebook per stage (``notebooks="study"``: the
    study's own notebooks)."""
    return _make_project


@pytest.fixture
def project_env():
    """``project_env(root)``: the environment of a subprocess working on the project at ``root``."""
    return _project_env


@pytest.fixture
def artsim():
    """``artsim(root, *args, check=True)``: ``python -m artsim_lib ARGS`` on the project at ``root``
    (raises with its output when it fails and ``check``)."""
    return _artsim
