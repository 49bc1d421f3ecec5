"""Reading a stage's artifacts back: nothing is rebuilt behind a getter.

Every stage module's ``load(P)`` goes through :func:`read_current`: the artifact is returned when it
exists and was made with the params ``P`` asks for, and otherwise :class:`StageNotRunError` says
which stage to run, so a notebook never trains or regenerates what an earlier stage owns."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from artsim_lib.io import paths

STAGE_NOTEBOOKS = {
    "01": "01-eda",
    "02": "02-preprocessing",
    "03": "03-captioning",
    "04": "04-prompting",
    "05": "05-generation",
    "06": "06-descriptors",
    "07": "07-finetune",
    "08": "08-siamese",
    "09": "09-evaluation",
}


class StageNotRunError(RuntimeError):
    """An input of a stage is missing or was made with other params: run the named stage first."""

    def __init__(self, stage: str, what: str, path: str | os.PathLike, stale: bool = False):
        self.stage, self.what, self.path, self.stale = stage, what, Path(path), stale
        state = "was made with other params" if stale else "is missing"
        super().__init__(
            f"{what} ({path}) {state}: run stage {stage} first "
            f"(artsim run --until {stage}, or notebooks/{STAGE_NOTEBOOKS.get(stage, stage)}.ipynb)"
        )


def expect_file(path: str | os.PathLike, stage: str, what: str) -> Path:
    """``path`` when it exists, else :class:`StageNotRunError` naming ``stage``."""
    path = Path(path)
    if not path.exists():
        raise StageNotRunError(stage, what, path)
    return path


def read_current(path: str | os.PathLike, meta: dict, stage: str, what: str) -> pd.DataFrame:
    """The parquet table at ``path`` when it was written with exactly ``meta``; else
    :class:`StageNotRunError` (missing or stale) naming the ``stage`` that makes it."""
    path = Path(path)
    if paths.is_current(path, meta):
        return pd.read_parquet(path)
    raise StageNotRunError(stage, what, path, stale=path.exists())
