"""Fixtures the test files share: tiny models built once per session, smoke params in the test's run
directory, and the builders of a throwaway project that ``artsim`` runs on.

The repository's root ``conftest.py`` sets the environment for every test (offline, one thread, a
temporary run directory) and holds the ``run_dir`` fixture. Test files take what they share from
here, never from each other.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

import helpers
from artsim_lib.io import synthart


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


# -- a throwaway project that `artsim` runs on (helpers.py has the builders) ---------------------
@pytest.fixture
def write_notebook():
    """``write_notebook(path, stage, body="", parameters="")``: a notebook that follows the stage
    contract (parameters cell, load_params + start_stage, ``body``, finish)."""
    return helpers.write_notebook


@pytest.fixture
def make_project():
    """``make_project(root, stages=("01-a", "02-b"), bodies=None, notebooks=None)``: a project
    tree with params/smoke.yaml and one small notebook per stage (``notebooks="study"``: the
    study's own notebooks)."""
    return helpers.make_project


@pytest.fixture
def project_env():
    """``project_env(root)``: the environment of a subprocess working on the project at ``root``."""
    return helpers.project_env


@pytest.fixture
def artsim():
    """``artsim(root, *args, check=True)``: ``python -m artsim_lib ARGS`` on the project at ``root``
    (raises with its output when it fails and ``check``)."""
    return helpers.artsim


# -- images ----------------------------------------------------------------------------------
SKIP = ("truncated", "grayscale", "phash_duplicate")  # unreadable, colourless, a copy


@pytest.fixture(scope="session")
def paintings(tmp_path_factory) -> list[Path]:
    """Twelve distinct colour SynthArt paintings as 128² PNGs, made once per session (read them,
    never change them)."""
    root = tmp_path_factory.mktemp("synthart")
    synthart.generate(root / "raw", num_images=20, seed=5, max_side=300)
    bad = {f for k in SKIP for f in synthart.defects(root / "raw")[k]}
    files = [p for p in sorted((root / "raw").rglob("*.jpg")) if p.relative_to(root / "raw").as_posix() not in bad]
    out = []
    for i, src in enumerate(files[:12]):
        dst = root / "img" / f"p{i:02d}.png"
        dst.parent.mkdir(exist_ok=True)
        Image.open(src).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS).save(dst)
        out.append(dst)
    assert len(out) == 12
    return out


# -- a single-node SLURM ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm():
    """A single-node SLURM on this machine (started, and stopped again, unless it was up). The
    tests install nothing: `make slurm-up` (or .ci/run) installs Debian's SLURM packages."""
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM needs root")
    with open("/tmp/artsim-slurm.lock", "w") as lock:  # one SLURM test at a time on a machine
        fcntl.flock(lock, fcntl.LOCK_EX)
        was_up = shutil.which("scontrol") is not None and helpers.sh("scontrol", "ping").returncode == 0
        start = helpers.sh(str(helpers.SCRIPTS / "start-slurm.sh"), timeout=300)
        if start.returncode == 3:
            pytest.skip(f"no SLURM here: {start.stderr.strip()}")
        assert start.returncode == 0, start.stdout + start.stderr
        try:
            yield
        finally:
            if not was_up:
                stop = helpers.sh(str(helpers.SCRIPTS / "stop-slurm.sh"))
                assert stop.returncode == 0, stop.stderr
