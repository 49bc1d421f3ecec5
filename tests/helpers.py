"""Builders the test files share (plain functions and constants; the fixtures that wrap them are in
tests/conftest.py). Test files import these from here, never from one another."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

from artsim_lib.io import shards
from artsim_lib.measures import scoring
from artsim_lib.measures.base import Measure
from artsim_lib.workflow import cluster

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
PROFILE = REPO / "workflow" / "profiles" / "slurm"


# -- a throwaway project that `artsim` runs on ----------------------------------------------------
def write_notebook(path, stage, body="", parameters=""):
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


def make_project(root, stages=("01-a", "02-b"), bodies=None, notebooks=None):
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
        write_notebook(root / "notebooks" / f"{stage}.ipynb", stage, bodies.get(stage, ""))
    return root


def project_env(root):
    """The environment for a subprocess working on the project at ``root``."""
    env = {k: v for k, v in os.environ.items() if k not in ("ARTSIM_RUN_DIR", "ARTSIM_NOTEBOOKS_DIR")}
    env["ARTSIM_ROOT"] = str(root)
    return env


def artsim(root, *args, check=True):
    """Run ``python -m artsim_lib ARGS`` against the project at ``root``."""
    proc = subprocess.run(
        [sys.executable, "-m", "artsim_lib", *args],
        cwd=root,
        env=project_env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"artsim {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


SHARD_PARAMETERS = "num_shards = 1  # shard jobs\nshard_index = 0  # this job's shard; -1: merge only\n"


# Put after the parameters cell of every shardable notebook (toy or real): shard 1 of stage NN
# fails while the file fail-NN.1 exists in the project, so removing it changes no notebook.
FAIL_HOOK = """import os as _os, pathlib as _pathlib
if shard_index == 1 and (_pathlib.Path(_os.environ["ARTSIM_ROOT"]) / "fail-{number}.1").exists():
    raise RuntimeError("shard 1 of {number} fails on purpose (the test's marker file)")"""


TIMING = re.compile(r"^(seconds|wall_s|.*_per_s|.*_seconds)$")  # columns that vary run to run


def add_fail_hook(notebook):
    """Insert :data:`FAIL_HOOK` after the parameters cell of a shardable notebook."""
    nb = nbformat.read(notebook, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    hook = nbformat.v4.new_code_cell(FAIL_HOOK.format(number=cluster.stage_number(notebook)))
    nb.cells.insert(at + 1, hook)
    nbformat.write(nb, notebook)


def make_study(root, notebooks):
    """A project at ``root`` running copies of ``notebooks`` (a folder), the fail hook added
    to each shardable one."""
    root = make_project(root, stages=())
    (root / "notebooks").mkdir(exist_ok=True)
    for nb in sorted(Path(notebooks).glob("[0-9][0-9]-*.ipynb")):
        copy = Path(shutil.copy(nb, root / "notebooks" / nb.name))
        if cluster.is_shardable(copy):
            add_fail_hook(copy)
    return root


def artifact_hashes(run_dir):
    """Every result of a run, by content: merged parquet tables (content_hash without timing
    columns, paths relative to the run) and images (bytes); per-shard parts and the rest are
    left out."""
    run_dir = Path(run_dir)
    out = {}
    for f in sorted(run_dir.rglob("*")):
        rel = f.relative_to(run_dir)
        if not f.is_file() or any(p.startswith("shard-") for p in rel.parts):
            continue
        if f.suffix == ".parquet":
            df = pd.read_parquet(f)
            for c in [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]:
                df[c] = df[c].map(lambda v: v.replace(f"{run_dir}/", "<run>/") if isinstance(v, str) else v)
            out[str(rel)] = shards.content_hash(df, ignore=[c for c in df.columns if TIMING.match(c)])
        elif f.suffix.lower() in (".png", ".jpg", ".jpeg"):
            out[str(rel)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def output(proc):
    return proc.stdout + proc.stderr


# -- the plan ------------------------------------------------------------------------------
def job_counts(text):
    """``{rule: count}`` from Snakemake's 'Job stats' table."""
    table = text[text.index("Job stats:") :].split("total", 1)[0].splitlines()[3:]
    return {line.split()[0]: int(line.split()[1]) for line in table if line.strip()}


def tiny_png() -> bytes:
    """A valid 2x2 red PNG."""

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PNG_B64 = base64.b64encode(tiny_png()).decode()


def executed_notebook(path, with_png=True):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()")
    if with_png:
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG_B64})]
    else:
        cell.outputs = [nbformat.v4.new_output("error", ename="KeyError", evalue="'style'", traceback=[])]
    nb.cells = [nbformat.v4.new_markdown_cell("$x^2$ and math"), cell]
    nb.metadata["papermill"] = {"duration": 1.25}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


class Table(Measure):
    """Scores looked up in a symmetric table (default 0.1); records every image it was asked to describe."""

    def __init__(self, table=None, default=0.1, name="table"):
        self.table, self.default, self.name, self.seen = table or {}, default, name, []

    def features(self, images):
        self.seen += list(images)
        return list(images)

    def raw_from_features(self, fa, fb):
        return self.table.get(frozenset((fa, fb)), self.default)


# -- ties and hand-computed values ----------------------------------------------------------------------
def hand_study():
    """Three test originals A, B (same style) and C, one derivative each, explicit triplets."""
    manifest = pd.DataFrame(
        {
            "id": ["A", "B", "C"],
            "path": ["A", "B", "C"],
            "style": ["s1", "s1", "s2"],
            "artist": ["a", "b", "c"],
            "phash": ["00000000", "ffffffff", "0000ffff"],
            "split": "test",
        }
    )
    pairs = pd.DataFrame(
        {
            "pair_id": ["A'", "B'", "C'"],
            "original_id": ["A", "B", "C"],
            "path": ["A'", "B'", "C'"],
            "level": ["moderate", "radical", "moderate"],
            "family": "photometric",
            "strength": [0.25, 1.0, 0.5],
            "prompt": None,
            "nan_flag": False,
            "black_flag": False,
            "backend": "augment",
            "split": "test",
            "style": ["s1", "s1", "s2"],
            "artist": ["a", "b", "c"],
        }
    )
    trip = pd.DataFrame(
        {
            "triplet_id": ["t1", "t2", "t3"],
            "anchor_id": ["A", "B", "C"],
            "positive_id": ["A'", "B'", "C'"],
            "negative_id": ["B", "A", "A"],
            "negative_kind": ["same_style", "same_style", "random"],
            "level": ["moderate", "radical", "moderate"],
            "family": "photometric",
            "strength": [0.25, 1.0, 0.5],
            "backend": "augment",
            "split": "test",
            "style": ["s1", "s1", "s2"],
            "artist": ["a", "b", "c"],
        }
    )
    table = {
        frozenset(k): v
        for k, v in [
            (("A", "A'"), 0.9),
            (("B", "A'"), 0.9),
            (("C", "A'"), 0.1),
            (("A", "B'"), 0.8),
            (("B", "B'"), 0.5),
            (("C", "B'"), 0.2),
            (("C", "C'"), 0.7),
            (("A", "B"), 0.9),
            (("A", "C"), 0.3),
        ]
    }
    return scoring.test_set(manifest, pairs, trip), table


# -- a real SLURM --------------------------------------------------------------------------
def sh(*args, timeout=120):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


SHARDED = ("03-captioning", "05-generation")  # the toy study: two sharded stages in a row


# A sharded stage following the contract: its shard's items not done yet, in batches, each item
# seeded by its id; once every shard is done (or as the merge job) the merged table. Stage 05
# reads stage 03's table, so the stages depend on each other as the real ones do.
TOY_BODY = """
import random
import pandas as pd
from artsim_lib.io import paths, shards
{source}
root = P.run.sub("toy", "{stage}")
if shard_index != -1:
    store = shards.ShardStore(root, num_shards, shard_index)
    mine = shards.select_shard(items, num_shards, shard_index)
    todo = mine[~mine["id"].isin(store.done())]
    for chunk in shards.batches(todo.to_dict("records"), 3):
        store.append([{{"id": r["id"], "seconds": random.random(),
                        "value": r["value"] + random.Random(shards.item_seed(P.seed, r["id"], "{stage}")).random()}}
                      for r in chunk])
done = set().union(*(shards.ShardStore(root, num_shards, k).done() for k in range(num_shards)))
if shard_index == -1 and not done >= set(items["id"]):
    raise RuntimeError(f"merge: {{len(set(items['id']) - done)}} items have no result yet")
if done >= set(items["id"]):
    merged = shards.merge(root)
    paths.write_parquet(merged, P.run.root / "toy" / "{stage}.parquet", meta={{"seed": P.seed}})
    print(f"merged {{len(merged)}} items")
"""


FIRST_ITEMS = 'items = pd.DataFrame({{"id": [f"item-{{i:02d}}" for i in range({n})], "value": 0.0}})'


NEXT_ITEMS = 'items = pd.read_parquet(P.run.root / "toy" / "{previous}.parquet")[["id", "value"]]'


# -- helpers (shared with test_slurm.py) ---------------------------------------------------
def write_toy_notebooks(directory, stages=SHARDED, num_items=12):
    """The toy study's sharded notebooks in ``directory``; returns it."""
    directory = Path(directory)
    previous = None
    for stage in stages:
        source = FIRST_ITEMS.format(n=num_items) if previous is None else NEXT_ITEMS.format(previous=previous)
        write_notebook(
            directory / f"{stage}.ipynb",
            stage,
            TOY_BODY.format(source=source, stage=stage),
            parameters=SHARD_PARAMETERS,
        )
        previous = stage
    return directory


def shard_sets(stage_shards):
    """``--set`` arguments giving ``{"03": 2, ...}`` shard jobs."""
    return [a for number, n in stage_shards.items() for a in ("--set", f"workflow.shards.{number}={n}")]


def colour_image(colour, seed, size: int = 40, sigma: float = 25):
    """A ``size``² image of one RGB ``colour`` with seeded Gaussian noise of ``sigma`` per pixel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.normal(0, sigma, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)
