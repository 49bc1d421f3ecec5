"""The rehearsal of the full study (params/rehearsal.yaml) through a real single-node SLURM.

The full profile's code paths -- hub-layout checkpoints at real sizes (random weights), BLIP-2
captions, SDXL-refiner img2img with fp16 weight files and a separate VAE, 1024 px images, 03/05/08
sharded, GPU-node jobs in another dtype (bfloat16) than the CPU jobs (float32) -- run as SLURM
jobs, and must give the artifacts of one unsharded local run. Each job's work log
(artsim_lib.io.worklog) shows that no job recomputes, re-keys or regenerates what an earlier one made.
"""

import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from artsim_lib import config
from artsim_lib.io import worklog
from artsim_lib.workflow import cluster
from helpers import PROFILE, REPO, artifact_hashes, make_study, project_env

pytestmark = pytest.mark.slow
PILOT = 24  # `artsim run --pilot 24`, as the README tells a new user to start: 24 of SynthArt's 40
NAME = f"rehearsal-pilot{PILOT}"  # the pilot's own run directory and reports folder


def rehearsal_project(root: Path) -> Path:
    root = make_study(root, REPO / "notebooks")
    for name in ("full.yaml", "rehearsal.yaml"):
        shutil.copy(REPO / "params" / name, root / "params" / name)
    return root


def run(root: Path, *args: str, timeout: int = 1500) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "artsim_lib",
            "run",
            "--profile",
            "rehearsal",
            "--cores",
            "2",
            "--pilot",
            str(PILOT),
            *args,
        ],
        cwd=root,
        env=project_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    return text


def work(root: Path) -> dict[str, list[dict]]:
    """``{job label: events}`` from every job's work log of the rehearsal."""
    logs = root / "reports" / NAME / "logs"
    return {f.name.removesuffix(".log.work.jsonl"): worklog.read(f) for f in sorted(logs.glob("*.work.jsonl"))}


def made(events, stage=None) -> int:
    return sum(e["items"] for e in events if e["event"] == "made" and stage in (None, e["stage"]))


def loads(events) -> Counter:
    return Counter((e["kind"], e["dtype"]) for e in events if e["event"] == "load_model")


def by_stage(jobs: dict[str, list[dict]]) -> dict[str, dict[str, list[dict]]]:
    out = defaultdict(dict)
    for label, events in jobs.items():
        out[label[:2]][label] = events
    return out


def test_the_rehearsal_profile_is_the_full_profile_with_its_changes():
    full, reh = config.load_params("full"), config.load_params("rehearsal")
    assert (reh.preprocess.size, reh.captioning.backend, reh.generation.backend) == (1024, "blip2", "sdxl")
    assert reh.generation.variant == "fp16" and reh.generation.strength == full.generation.strength
    assert reh.descriptors == full.descriptors.model_copy(update={"workers": 2})
    assert set(reh.workflow.shards) == {"03", "05", "08"} and set(reh.workflow.job_dtype.values()) == {"bfloat16"}
    assert reh.models.build_rehearsal and reh.dtype == "float32"


def test_the_rehearsal_on_slurm_matches_a_local_run(slurm, tmp_path):  # noqa: F811
    root = rehearsal_project(tmp_path / "proj")
    run(root, "--set", "workflow.shards={}")  # the reference: one local job per stage
    run_dir = root / "runs" / NAME
    reference = artifact_hashes(run_dir)
    assert any(k.startswith("generation/") and k.endswith(".png") for k in reference)
    import pandas as pd

    manifest = pd.read_parquet(run_dir / "manifest" / "manifest.parquet")
    assert len(pd.read_parquet(run_dir / "manifest" / "raw.parquet")) == PILOT  # the pilot's sample
    assert set(manifest["split"]) == {"train", "val", "test"}
    local = work(root)
    shutil.rmtree(run_dir / "raw")  # keep the built models (hub-sized), lose every artifact
    for sub in [p for p in run_dir.iterdir() if p.name != "models"]:
        shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
    shutil.rmtree(root / "reports")

    profile = cluster.fit_profile(PROFILE, tmp_path / "profile", mem_mb=3000, status_check_seconds=20)
    text = run(root, "--cluster", str(profile))
    assert "SLURM run ID" in text
    assert artifact_hashes(run_dir) == reference

    jobs = by_stage(work(root))
    n_pairs = made(local["05-generation"], "generation")
    assert n_pairs > 0
    for stage, labels in jobs.items():
        for label, events in labels.items():
            shard = "-of-" in label  # 05-generation.1-of-2; the merge job's log is 05-generation
            kinds = {k for k, _ in loads(events)}
            # what each job makes is its own stage's: nothing later regenerates or re-embeds
            if stage != "03":
                assert made(events, "captioning") == 0 and "blip2" not in kinds, label
            if stage != "05":
                assert made(events, "generation") == 0 and "sdxl_refiner" not in kinds, label
            if stage != "08":
                assert made(events, "embeddings") == 0 and made(events, "clip_measure") == 0, label
            if stage in ("03", "05", "08") and not shard:  # merge jobs only merge
                assert made(events) == 0, (label, events)
            dtypes = {dt for _, dt in loads(events)}
            if shard:  # the GPU-node jobs ran in bfloat16, the CPU jobs in float32
                assert dtypes <= {"bfloat16"}, label
            elif stage not in ("01", "02", "07"):  # 04, 06, 09 and the merge jobs: CPU nodes
                assert dtypes <= {"float32"}, label
    assert sum(made(e, "generation") for e in jobs["05"].values()) == n_pairs  # each derivative once
    assert all(loads(e)[("sdxl_refiner", "bfloat16")] <= 1 for e in jobs["05"].values())
    assert sum(made(e, "captioning") for e in jobs["03"].values()) == made(local["03-captioning"], "captioning")


@pytest.mark.skipif(os.environ.get("ARTSIM_REHEARSAL_LOCAL") != "1", reason="ARTSIM_REHEARSAL_LOCAL=1")
def test_the_rehearsal_runs_locally(tmp_path):
    """The rehearsal without SLURM (for a machine without root): every stage, nothing twice."""
    root = rehearsal_project(tmp_path / "proj")
    run(root, "--set", "workflow.shards={}")
    jobs = work(root)
    assert all(made(jobs[s], "generation") == 0 for s in jobs if not s.startswith("05"))
