"""What produced a result: git commit, package versions, seeds, and per-stage wall time."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from artsim_lib.io import paths

PACKAGES = (
    "artsim",
    "torch",
    "transformers",
    "diffusers",
    "datasets",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "scikit-image",
    "imagehash",
    "papermill",
    "snakemake",
    "pydantic",
    "matplotlib",
)


def git_commit(root: Path | None = None) -> str:
    """The commit of the working tree (with ``-dirty`` when it has changes), or ``unknown``."""
    root = root or paths.project_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a run."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (when installed) with one number."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    import numpy as np

    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def shown(value):
    """A path (``Path`` or ``str``) under the project root as relative to it (``runs/smoke``;
    the root itself: ``.``); anything else as it is. What records and reports show, so they do
    not carry the machine's folders."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    text, root = os.fspath(value), str(paths.project_root())
    if text == root:
        return "."
    if text.startswith(root + os.sep):
        return text[len(root) + 1 :]
    return value if isinstance(value, str) else text


def provenance(params) -> dict:
    """A JSON-able record of the run: profile, seed, commit, versions, machine."""
    return {
        "profile": params.profile,
        "seed": params.seed,
        "run_dir": shown(params.run_path),  # relative to the project root
        "git_commit": git_commit(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "argv": sys.argv[:1],
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Stage:
    """One stage of the study in progress; :meth:`finish` records its wall time."""

    name: str
    params: object
    started: str = field(default_factory=_now)
    _t0: float = field(default_factory=time.perf_counter)

    @property
    def dir(self) -> Path:
        """This stage's folder in the run directory."""
        return self.params.run.sub(self.name)

    def finish(self, **summary) -> dict:
        """Write ``stages/<name>.json`` (wall time, commit, any summary numbers) and return it."""
        record = {
            "stage": self.name,
            "profile": self.params.profile,
            "seed": self.params.seed,
            "started": self.started,
            "finished": _now(),
            "wall_s": round(time.perf_counter() - self._t0, 3),
            "git_commit": git_commit(),
            "summary": {k: shown(v) for k, v in summary.items()},
        }
        target = self.params.run.stages_dir / f"{self.name}.json"
        paths.atomic_write_text(target, json.dumps(record, indent=2, default=str))
        return record


def start_stage(name: str, params) -> Stage:
    """Begin a stage: seed everything, create the run directory, save the resolved params
    and the provenance record. Call this in the cell after a notebook's parameters."""
    seed_everything(params.seed)
    run = params.run
    run.root.mkdir(parents=True, exist_ok=True)
    # Unchanged within a run; changed only by a notebook run on its own, which must not
    # overwrite the params of a run that holds the run directory (artsim_lib.io.runlock).
    from artsim_lib.io import runlock

    runlock.write_params(run.params_file, params.to_yaml(), run.root, os.environ.get(runlock.LOCK_ENV))
    prov = provenance(params)
    prov["updated"] = _now()
    paths.atomic_write_text(run.provenance_file, json.dumps(prov, indent=2))
    return Stage(name, params)
