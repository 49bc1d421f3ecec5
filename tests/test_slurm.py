"""Cluster execution: the SLURM workflow profile (its rules and resources, checked on the full
study's plan) and a smoke study through a real single-node SLURM started on this machine by
scripts/slurm/start-slurm.sh: sharded stages as separate sbatch jobs, a failed shard with its
logs kept, a rerun of only what failed, and the artifacts of the local run."""

import os
import re
import shutil

import pytest

from artsim_lib import config
from artsim_lib.workflow import cluster, runner
from helpers import (
    PROFILE,
    REPO,
    SHARD_PARAMETERS,
    artifact_hashes,
    artsim,
    job_counts,
    make_project,
    make_study,
    output,
    sh,
    shard_sets,
    write_notebook,
    write_toy_notebooks,
)

STUDY = (
    "01-eda",
    "02-preprocessing",
    "03-captioning",
    "04-prompting",
    "05-generation",
    "06-descriptors",
    "07-finetune",
    "08-siamese",
    "09-evaluation",
)
SHARDABLE = ("03", "05", "08")
GPU_RULES = {
    "stage_03_captioning",
    "stage_03_captioning_shard",
    "stage_05_generation",
    "stage_05_generation_shard",
    "stage_07_finetune",
    "stage_08_siamese",
    "stage_08_siamese_shard",
    "stage_08_siamese_merge",  # 08's merge job trains the heads
    "stage_09_evaluation",
}  # ResNet-50 over every test image for four measures


@pytest.fixture
def study_notebooks(tmp_path):
    """The notebooks the SLURM test runs: by default a toy study with the real sharding
    contract (03 and 05 sharded; ~2.5 min); with ARTSIM_SLURM_REAL_STUDY=1 the real smoke
    study, 03/05/08 sharded (~7 min: `make test-slurm-study`)."""
    if os.environ.get("ARTSIM_SLURM_REAL_STUDY") == "1":
        return REPO / "notebooks"
    return write_toy_notebooks(tmp_path / "toy-notebooks")


# -- the profile ---------------------------------------------------------------------------
def full_study(root, shardable=SHARDABLE):
    """A project with the study's nine stages (empty notebooks) and both profiles."""
    root = make_project(root, stages=())
    shutil.copy(REPO / "params" / "full.yaml", root / "params" / "full.yaml")
    for stage in STUDY:
        shard = stage[:2] in shardable
        write_notebook(root / "notebooks" / f"{stage}.ipynb", stage, parameters=SHARD_PARAMETERS if shard else "")
    return root


def plan_resources(text):
    """``{rule: resources}`` from a dry run's job blocks (one entry per rule)."""
    found = {}
    for block in re.split(r"\n(?:local)?rule ", text)[1:]:
        name = block.split(":", 1)[0]
        line = next((x for x in block.splitlines() if x.strip().startswith("resources:")), "")
        pairs = (kv.split("=", 1) for kv in line.split(":", 1)[-1].split(", ") if "=" in kv)
        found[name] = {k.strip(): v.strip() for k, v in pairs}
    return found


def test_full_plan_through_the_slurm_profile(tmp_path):
    """The full profile's plan: every shard job is a job, GPUs only where the study needs them."""
    root = full_study(tmp_path / "proj")
    proc = artsim(root, "run", "--profile", "full", "--cluster", "slurm", "-n")
    text = output(proc)
    assert f"Using workflow specific profile {PROFILE}" in text
    counts = job_counts(text)
    shards = config.load_params(root / "params" / "full.yaml").workflow.shards
    assert all(shards.get(n, 1) > 1 for n in SHARDABLE)  # the full study shards all three
    for stage in STUDY:
        rule = "stage_" + stage.replace("-", "_")
        if stage[:2] in SHARDABLE:
            assert counts[rule + "_shard"] == shards[stage[:2]] and counts[rule + "_merge"] == 1
        else:
            assert counts[rule] == 1
    assert sum(counts.values()) == len(STUDY) + sum(shards.values()) + 2  # + report, all

    check_resources(plan_resources(text), counts)
    # unsharded, the stages' own rules take the GPUs
    text = output(artsim(root, "run", "--profile", "full", "--cluster", "slurm", "-n", "--set", "workflow.shards={}"))
    counts = job_counts(text)
    assert sum(counts.values()) == len(STUDY) + 2
    check_resources(plan_resources(text), counts)


def check_resources(resources, counts):
    """What every submitted job asks for; a GPU exactly for the rules that need one."""
    assert set(resources) == set(counts)
    for rule, res in resources.items():
        if rule in ("report", "all"):  # local rules: run where Snakemake runs, never submitted
            continue
        assert int(res["runtime"]) > 0 and int(res["mem_mb"]) >= 8000 and int(res["cpus_per_task"]) >= 2
        gpu = res.get("gres") == "gpu:1" and res.get("slurm_partition") == "gpu"
        assert gpu == (rule in GPU_RULES), rule


def test_profile_rules_exist_for_the_real_notebooks():
    """A renamed notebook would silently lose its GPU: the profile must name its real rules."""
    profile = cluster.load_profile(PROFILE)
    assert profile["executor"] == "slurm"
    assert cluster.check_profile(profile, runner.discover_notebooks(REPO / "notebooks")) == []


def test_renamed_notebook_is_a_one_line_error(tmp_path):
    root = full_study(tmp_path / "proj")
    (root / "notebooks" / "03-captioning.ipynb").rename(root / "notebooks" / "03-captions.ipynb")
    problems = cluster.check_profile(cluster.load_profile(PROFILE), runner.discover_notebooks(root / "notebooks"))
    assert len(problems) == 3  # stage_03_captioning, its _shard and its _merge
    assert "stage_03_captions_shard" in problems[0]
    proc = artsim(root, "run", "--cluster", "slurm", "-n", check=False)
    assert proc.returncode == 2 and "no rule 'stage_03_captioning'" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    proc = artsim(root, "run", "--cluster", "nosuch", "-n", check=False)
    assert proc.returncode == 2 and "--cluster nosuch: no such profile (known: slurm)" in proc.stderr


def test_status_command_follows_accounting(tmp_path):
    none = {"AccountingStorageType": "accounting_storage/none"}
    dbd = {"AccountingStorageType": "accounting_storage/slurmdbd"}
    assert cluster.status_command(none) == "squeue" and cluster.status_command(dbd) is None
    assert cluster.status_command({}) is None  # no SLURM here: the executor decides
    nbs = []
    assert cluster.snakemake_args("slurm", nbs, none)[-2:] == ["--slurm-status-command", "squeue"]
    assert cluster.snakemake_args("slurm", nbs, dbd) == ["--workflow-profile", str(PROFILE)]
    own = tmp_path / "mine"
    own.mkdir()
    (own / "config.yaml").write_text("executor: slurm\nslurm-status-command: sacct\n")
    assert cluster.snakemake_args(own, nbs, none) == ["--workflow-profile", str(own)]


def test_fit_profile_cuts_requests_and_keeps_placement(tmp_path):
    fitted = cluster.load_profile(
        cluster.fit_profile("slurm", tmp_path / "p", cpus_per_task=1, mem_mb=700, status_check_seconds=5)
    )
    real = cluster.load_profile(PROFILE)
    assert fitted["slurm-init-seconds-before-status-checks"] == 5
    assert set(fitted["set-resources"]) == set(real["set-resources"])
    for rule, res in fitted["set-resources"].items():
        assert res["mem_mb"] == 700 and res["cpus_per_task"] == 1
        kept = {k: v for k, v in real["set-resources"][rule].items() if k not in ("mem_mb", "cpus_per_task")}
        assert kept.items() <= res.items(), rule  # partition, gres, runtime as in the profile


def slurm_jobs(run_ids):
    """``[(comment, partition, gres, state)]`` of these runs' jobs (squeue keeps them 300 s)."""
    out = sh("squeue", "--states=all", "-h", "-o", "%j|%k|%P|%b|%T").stdout
    rows = [line.split("|") for line in out.splitlines()]
    return [tuple(row[1:]) for row in rows if row[0] in run_ids]


@pytest.mark.slow
def test_study_on_slurm_matches_local_run(slurm, study_notebooks, tmp_path):
    root = make_study(tmp_path / "proj", study_notebooks)
    reports = root / "reports" / "smoke"
    artsim(root, "run", "--cores", "2")  # the reference: locally, one job per stage
    reference = artifact_hashes(root / "runs" / "smoke")
    assert reference
    shutil.rmtree(root / "runs")
    shutil.rmtree(root / "reports")

    shardable = [nb for nb in runner.discover_notebooks(root / "notebooks") if cluster.is_shardable(nb)]
    assert len(shardable) >= 2
    sets = shard_sets({cluster.stage_number(nb): 2 for nb in shardable})
    first = shardable[0]
    # The profile cut to this machine's node. Snakemake checks a job after N s, then N+10,
    # N+20 ... until it ends: N above a toy job's 10-16 s.
    profile = cluster.fit_profile(PROFILE, tmp_path / "profile", mem_mb=600, status_check_seconds=20)
    fitted = cluster.load_profile(profile)
    assert fitted["set-resources"]["stage_05_generation_shard"]["gres"] == "gpu:1"
    run = ["run", "--cores", "2", "--cluster", str(profile), *sets]

    marker = root / f"fail-{cluster.stage_number(first)}.1"
    marker.touch()
    proc = artsim(root, *run, check=False)
    text = output(proc)
    assert proc.returncode != 0, text[-3000:]
    label = cluster.shard_label(first.stem, 1, 2)
    log = reports / "logs" / f"{label}.log"
    assert "fails on purpose" in log.read_text()
    assert "fails on purpose" in (reports / "logs" / label / f"{first.stem}.failed.ipynb").read_text()
    slurm_logs = list((root / ".snakemake" / "slurm_logs" / f"rule_{cluster.shard_rule(first)}" / "1").glob("*.log"))
    assert len(slurm_logs) == 1 and "fails on purpose" in slurm_logs[0].read_text()
    assert str(log.relative_to(root)) in text and str(slurm_logs[0]) in text
    other = reports / "shards" / f"{cluster.shard_label(first.stem, 0, 2)}.ipynb"
    assert other.is_file()  # the other shard's job still ran to the end
    jobs = slurm_jobs(set(re.findall(r"SLURM run ID: (\S+)", text)))  # now: squeue forgets after 300 s

    marker.unlink()
    before = other.stat().st_mtime_ns
    proc = artsim(root, *run)
    jobs += slurm_jobs(set(re.findall(r"SLURM run ID: (\S+)", output(proc))))
    assert other.stat().st_mtime_ns == before  # not run again
    assert artifact_hashes(root / "runs" / "smoke") == reference

    for nb in shardable:  # where SLURM ran each job: the profile's partitions and GPUs
        rule = cluster.shard_rule(nb)
        ran = [job[1:] for job in jobs if job[0].startswith(f"rule_{rule}")]
        assert len(ran) == (3 if nb == first else 2)  # the failed shard ran twice
        assert all(part == "gpu" and "gpu:1" in gres for part, gres, _ in ran), ran
        merge = [job[1:] for job in jobs if job[0] == f"rule_{cluster.merge_rule(nb)}"]
        assert merge == [("cpu", "N/A", "COMPLETED")] or nb.stem.startswith("08"), merge
    states = [job[3] for job in jobs]
    assert states.count("FAILED") == 1 and set(states) == {"COMPLETED", "FAILED"}
