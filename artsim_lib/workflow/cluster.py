"""Cluster execution: which stages fan out into shard jobs, the workflow profiles under
``workflow/profiles/`` and what Snakemake's SLURM executor needs to know about the scheduler.

>>> plan, warnings = shard_plan(runner.discover_notebooks(), {"03": 4})   # {"03-captioning": 4}
>>> snakemake_args("slurm")     # ['--workflow-profile', '.../workflow/profiles/slurm', ...]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from artsim_lib import config
from artsim_lib.io import paths
from artsim_lib.workflow import runner

# The checkout holding this package (workflow/, params/): the Snakefile and profiles of an
# editable install when the project root (``$ARTSIM_ROOT``) is another folder.
MERGE_ONLY = -1  # the shard_index of the job that merges the shards' results
PROFILES_DIR = Path("workflow") / "profiles"
DAG_FORMATS = {".dot": "dot", ".mmd": "mermaid-js"}  # written as Snakemake prints them
RENDERED = (".png", ".svg", ".pdf")  # drawn from the .dot by graphviz
_STAGE_RULE = re.compile(r"^stage_(\d{2})_")


# -- shardable stages ------------------------------------------------------------------
def parameters(notebook: str | os.PathLike) -> dict[str, dict]:
    """The notebook's parameters as papermill reads them (``papermill --help-notebook``): name ->
    ``{name, inferred_type_name, default, help}``; empty if it has no ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def parameter_names(notebook: str | os.PathLike) -> set[str]:
    """The names a notebook's ``parameters`` cell assigns (empty if it has no such cell)."""
    return set(parameters(notebook))


def is_shardable(notebook: str | os.PathLike) -> bool:
    """A stage can run as shard jobs when its parameters cell defines ``num_shards``."""
    return "num_shards" in parameter_names(notebook)


def stage_number(notebook: str | os.PathLike) -> str:
    """``notebooks/03-captioning.ipynb`` -> ``"03"``."""
    return runner.stage_name(notebook).split("-", 1)[0]


def shard_plan(notebooks: Sequence[Path], shards: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
    """Shard jobs per stage name (only stages that get more than one) and a warning for
    each ``workflow.shards`` entry that cannot apply."""
    by_number = {stage_number(nb): nb for nb in notebooks}
    plan, warnings = {}, []
    for number, n in sorted(shards.items()):
        nb = by_number.get(number)
        if nb is None:
            warnings.append(f"workflow.shards: no stage {number} notebook; its {n} shards are ignored")
        elif n > 1 and not is_shardable(nb):
            warnings.append(f"workflow.shards: {nb.name} has no num_shards parameter; it runs as one job")
        elif n > 1:
            plan[runner.stage_name(nb)] = n
    return plan, warnings


def shard_rule(notebook: str | os.PathLike) -> str:
    """The rule of a stage's shard jobs: ``stage_03_captioning_shard``."""
    return runner.rule_name(notebook) + "_shard"


def merge_rule(notebook: str | os.PathLike) -> str:
    """The rule of a sharded stage's merge job: ``stage_03_captioning_merge``."""
    return runner.rule_name(notebook) + "_merge"


def shard_label(stage: str, index: int | str, num_shards: int) -> str:
    """``03-captioning.1-of-4``: a shard's notebook and log names."""
    return f"{stage}.{index}-of-{num_shards}"


# -- workflow profiles -------------------------------------------------------------------
def profile_dir(cluster: str | os.PathLike) -> Path:
    """A profile given as a name under ``workflow/profiles/`` (``slurm``) or as a folder."""
    p = Path(cluster)
    if p.is_dir():
        return p.resolve()
    for base in (paths.project_root(), paths.SOURCE_ROOT):
        if (base / PROFILES_DIR / str(cluster)).is_dir():
            return base / PROFILES_DIR / str(cluster)
    known = sorted(d.name for d in (paths.SOURCE_ROOT / PROFILES_DIR).glob("*") if d.is_dir())
    raise config.ParamsError(f"--cluster {cluster}: no such profile (known: {', '.join(known) or 'none'})")


def load_profile(directory: str | os.PathLike) -> dict:
    """A workflow profile's settings (its ``config.yaml``)."""
    f = Path(directory) / "config.yaml"
    if not f.is_file():
        raise config.ParamsError(f"{directory}: not a Snakemake profile (no config.yaml)")
    data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise config.ParamsError(f"{f}: the top level must be a mapping")
    return data


def workflow_rules(notebooks: Sequence[Path]) -> dict[str, set[str]]:
    """Stage number -> the rules its stage can have (the shard and merge rules of a
    shardable stage whether or not it is sharded in this run)."""
    rules = {}
    for nb in notebooks:
        names = {runner.rule_name(nb)}
        if is_shardable(nb):
            names |= {shard_rule(nb), merge_rule(nb)}
        rules[stage_number(nb)] = names
    return rules


def check_profile(profile: Mapping, notebooks: Sequence[Path], origin: str = "profile") -> list[str]:
    """Rules the profile's ``set-resources``/``set-threads`` name that this workflow does not
    have. Stages not written yet are not an error; a renamed notebook is, since its stage
    would silently lose its GPU."""
    rules = workflow_rules(notebooks)
    problems = []
    for key in ("set-resources", "set-threads"):
        for name in profile.get(key) or {}:
            m = _STAGE_RULE.match(str(name))
            if name in ("report", "all") or (m and m.group(1) not in rules):
                continue
            if m is None:
                problems.append(f"{origin}: {key}: {name!r} is not a rule of this workflow")
            elif name not in rules[m.group(1)]:
                problems.append(
                    f"{origin}: {key}: no rule {name!r}; stage {m.group(1)}'s rules are "
                    f"{', '.join(sorted(rules[m.group(1)]))}"
                )
    return problems


def fit_profile(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    cpus_per_task: int = 1,
    mem_mb: int = 1000,
    status_check_seconds: int | None = None,
) -> Path:
    """A copy of a cluster profile whose jobs each ask for ``cpus_per_task`` CPUs and
    ``mem_mb`` MB (partitions, GPUs and runtimes kept), to try it on a small single-node
    SLURM (scripts/slurm/start-slurm.sh). ``status_check_seconds``: the first status check
    after a job starts (Snakemake then adds 10 s per check until a job ends)."""
    profile = load_profile(profile_dir(src))  # YAML merge keys resolved
    for res in [profile.setdefault("default-resources", {}), *(profile.get("set-resources") or {}).values()]:
        res.update(cpus_per_task=cpus_per_task, mem_mb=mem_mb)
    if status_check_seconds is not None:
        profile["slurm-init-seconds-before-status-checks"] = status_check_seconds
    head = f"# {profile_dir(src)}/config.yaml cut to {cpus_per_task} CPU(s) and {mem_mb} MB a job\n"
    paths.atomic_write_text(Path(dst) / "config.yaml", head + yaml.safe_dump(profile, sort_keys=False))
    return Path(dst)


# -- the scheduler -----------------------------------------------------------------------
def slurm_settings() -> dict[str, str]:
    """``scontrol show config`` as a mapping; empty when SLURM is not reachable here."""
    if shutil.which("scontrol") is None:
        return {}
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def status_command(settings: Mapping[str, str]) -> str | None:
    """``squeue`` on a cluster without job accounting, where ``sacct`` (the executor's
    default) answers nothing and Snakemake would wait forever; else None (the default)."""
    if settings.get("AccountingStorageType", "").endswith("/none"):
        return "squeue"
    return None


def snakemake_args(
    cluster: str | os.PathLike, notebooks: Sequence[Path] | None = None, settings: Mapping[str, str] | None = None
) -> list[str]:
    """The ``snakemake`` arguments for running on ``cluster`` (a profile name or folder);
    raises :class:`config.ParamsError` when the profile names rules the workflow lacks."""
    directory = profile_dir(cluster)
    profile = load_profile(directory)
    notebooks = runner.discover_notebooks() if notebooks is None else notebooks
    problems = check_profile(profile, notebooks, str(directory / "config.yaml"))
    if problems:
        raise config.ParamsError("; ".join(problems))
    args = ["--workflow-profile", str(directory)]
    if profile.get("executor") == "slurm" and "slurm-status-command" not in profile:
        command = status_command(slurm_settings() if settings is None else settings)
        if command:
            args += ["--slurm-status-command", command]
    return args


# -- the job graph -----------------------------------------------------------------------
def dag_format(target: str | os.PathLike) -> str:
    """The ``snakemake --dag`` format for a target file (graphviz renders the others)."""
    suffix = Path(target).suffix.lower()
    if suffix in DAG_FORMATS:
        return DAG_FORMATS[suffix]
    if suffix in RENDERED:
        return "dot"
    raise config.ParamsError(f"--dag {target}: use .dot, .mmd, or (with graphviz) {', '.join(RENDERED)}")


def write_dag(text: str, target: str | os.PathLike) -> tuple[Path, str]:
    """Write Snakemake's ``--dag`` output to ``target``, drawing it with graphviz's ``dot``
    for .png/.svg/.pdf; without graphviz, write the .dot beside it and say how to draw it."""
    target = Path(target)
    if target.suffix.lower() not in RENDERED:
        return paths.atomic_write_text(target, text), f"wrote {target}"
    dot_file = paths.atomic_write_text(target.with_suffix(".dot"), text)
    render = ["dot", f"-T{target.suffix.lower()[1:]}", str(dot_file), "-o", str(target)]
    if shutil.which("dot") is None:
        return dot_file, (
            f"graphviz is not installed: wrote {dot_file}; draw it with `{' '.join(render)}` (apt-get install graphviz)"
        )
    subprocess.run(render, check=True, capture_output=True, timeout=120)
    return target, f"wrote {target} (and {dot_file.name})"
