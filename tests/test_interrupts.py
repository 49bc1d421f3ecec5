"""Fault injection: a real smoke run (stages 01-02 of the study's own notebooks, reduced data)
is interrupted at seeded random moments with SIGINT (Ctrl-C) and SIGKILL (a crash: every process
the run started dies at once), rerun each time with no manual step, and must end with the same
artifacts as an uninterrupted run."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artsim_lib.io import runlock

SETS = [
    "--set",
    "data.synthart.num_images=24",
    "--set",
    "preprocess.size=32",
    "--set",
    "num_workers=1",
    "--set",
    "preprocess.workers=1",
]
RUN = ["run", "--until", "02", *SETS]
# Provenance (wall times, pids) differs from run to run by design; everything else must not.
VOLATILE = ("stages/", "provenance.json", runlock.LOCK_NAME)


def _artifacts(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.relative_to(run).as_posix().startswith(VOLATILE)
    }


def _session(sid: int) -> list[int]:
    """Every process of the session ``sid`` (the run and all it started, Snakemake included)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _interrupted_run(root: Path, env: dict, delay: float, how: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "artsim_lib", *RUN],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(delay)
    if proc.poll() is None:
        if how == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        else:
            for pid in _session(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    proc.wait(timeout=300)


@pytest.mark.slow
def test_interrupted_runs_resume_to_the_same_artifacts(tmp_path, make_project, project_env, artsim):
    root = make_project(tmp_path / "proj", notebooks="study")
    run = root / "runs" / "smoke"
    t0 = time.monotonic()
    artsim(root, *RUN)
    total = time.monotonic() - t0
    reference = _artifacts(run)
    assert "manifest/manifest.parquet" in reference and "preprocess/skipped.csv" in reference
    for generated in ("runs", "reports", ".snakemake"):
        shutil.rmtree(root / generated)

    rng = random.Random(13)
    for how in ("SIGKILL", "SIGINT", "SIGKILL", "SIGINT"):
        _interrupted_run(root, project_env(root), rng.uniform(0.1, 0.9) * total, how)
    proc = artsim(root, *RUN)  # no --unlock, no clean-up by hand
    assert "LockException" not in proc.stdout + proc.stderr
    assert _artifacts(run) == reference
    assert not [p for p in root.rglob("*") if runlock.TEMP_RE.match(p.name)]
    assert not list((root / ".snakemake" / "locks").glob("*.lock"))
    assert not (run / runlock.LOCK_NAME).exists()
    for stage in ("01-eda", "02-preprocessing"):
        assert (root / "reports" / "smoke" / f"{stage}.html").is_file()
    artsim(root, *RUN, "--forceall")  # every stage again, on its cached inputs: the same artifacts
    assert _artifacts(run) == reference
