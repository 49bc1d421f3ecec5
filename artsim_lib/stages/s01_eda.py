"""Stage 01: the originals as they come from the source, before anything is changed.

``run(P)`` reads (or, for SynthArt, generates) the source into the raw manifest
(``<run>/manifest/raw.parquet``) and looks at it: which files open and how, what the Kaggle loader
left out, and which images are perceptual-hash duplicates. ``load(P)`` reads the raw manifest back.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from artsim_lib.core.cleaning import find_duplicates, null_table
from artsim_lib.io import manifest
from artsim_lib.io.artifacts import StageNotRunError
from artsim_lib.io.datasets import source_decisions
from artsim_lib.io.images import probe_files


@dataclass
class EdaResult:
    """What stage 01 found in the originals."""

    raw: pd.DataFrame  # the raw manifest (one row per source image)
    missing: pd.DataFrame  # null counts per column
    probe: pd.DataFrame  # format, mode, EXIF orientation, readable, error per file
    decisions: pd.DataFrame  # files the Kaggle loader left out, and why
    duplicates: pd.DataFrame  # id, duplicate_of, distance (phash Hamming)


def run(P) -> EdaResult:
    """Read the source for ``P`` into the raw manifest and describe it."""
    raw = manifest.load_manifest(P)
    return EdaResult(
        raw=raw,
        missing=null_table(raw.drop(columns=["styles"])),
        probe=probe_files(raw["path"], workers=P.num_workers, max_pixels=P.preprocess.max_pixels),
        decisions=source_decisions(P),
        duplicates=find_duplicates(raw.sort_values("id"), P.preprocess.phash_max_distance),
    )


def load(P) -> pd.DataFrame:
    """The raw manifest stage 01 wrote for ``P``; StageNotRunError ("run stage 01 first") when it is
    missing or was made from other data params."""
    target = P.run.raw_manifest
    if not manifest.raw_is_current(P):
        raise StageNotRunError("01", "the raw manifest", target, stale=target.exists())
    return manifest.read_manifest(target)
