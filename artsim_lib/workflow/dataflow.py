"""What each stage reads: the params sections and the earlier stages whose artifacts it uses.

The Snakefile builds the workflow from this table, so a rule's inputs are the data it reads, not
the stage order: 07 (fine-tuning, GPU) starts once 02's manifest exists, beside 03-06, and a
changed ``evaluation.*`` re-runs 09 alone.

>>> upstream("09", ["01", "02", "03", "04", "05", "06", "07", "08", "09"])
['03', '05', '06', '07', '08']
>>> stage_params(P, "06")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from artsim_lib import config


@dataclass(frozen=True)
class StageReads:
    """What one stage's notebook and module read: earlier stages (their artifacts) and params."""

    stages: tuple[str, ...]
    sections: tuple[str, ...]
    keys: tuple[str, ...] = ("seed",)  # top-level params besides the sections


IDENTITY = ("profile", "run_dir")  # in every stage's params: which run it is
GPU = ("seed", "device", "dtype", "num_workers")
# Stage number -> what it reads. "stages" are direct reads (artifact files of that stage):
#   01 writes the raw manifest (and generates SynthArt), 02 the manifest and split, 03 captions,
#   04 prompts, 05 pairs/derivatives and triplets, 06 descriptor similarities, 07 the fine-tuned
#   backbone, 08 CLIP embeddings and the siamese heads; 09 scores every measure on the test split.
# "sections": the params sections its code reads (stage modules, notebooks, the measures it loads).
STAGES: dict[str, StageReads] = {
    "01": StageReads((), ("data", "preprocess"), ("seed", "num_workers")),
    "02": StageReads(("01",), ("data", "preprocess"), ("seed", "num_workers")),
    "03": StageReads(("02",), ("captioning", "models"), GPU),
    "04": StageReads(("02", "03"), ("prompting", "models"), ("seed", "device", "dtype")),
    "05": StageReads(("02", "04"), ("generation", "triplets", "preprocess", "models"), GPU),
    "06": StageReads(("05",), ("descriptors",), ("seed", "num_workers")),
    "07": StageReads(("02",), ("finetune", "models"), GPU),
    "08": StageReads(("02", "03", "05", "07"), ("siamese", "finetune", "models"), GPU),
    "09": StageReads(  # preprocess: the geometry baseline's padding colour
        ("02", "03", "05", "06", "07", "08"),
        ("evaluation", "triplets", "descriptors", "finetune", "siamese", "preprocess", "models"),
        GPU,
    ),
}
SCHEDULING = ("workflow",)  # decides how stages run, never what they compute


def upstream(number: str, present: Sequence[str]) -> list[str]:
    """The stages among ``present`` whose outputs stage ``number`` waits for.

    A stage the table does not know waits for the stage before it (the order, as a new stage
    would). A stage it reads that this project lacks (a test project of a few notebooks) is
    replaced by what that stage would have read, so the chain of data stays unbroken."""
    present = sorted(set(present))
    if number not in STAGES:
        before = [s for s in present if s < number]
        return before[-1:]
    out: set[str] = set()
    todo = list(STAGES[number].stages)
    seen: set[str] = set()
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        seen.add(s)
        if s in present:
            out.add(s)
        elif s in STAGES:
            todo.extend(STAGES[s].stages)
    return sorted(out)


def stage_params_data(P: config.Params, number: str) -> dict:
    """The resolved params stage ``number`` reads (a stage not in the table: all but the
    workflow section)."""
    data = P.model_dump(mode="json")
    if number not in STAGES:
        return {k: v for k, v in data.items() if k not in SCHEDULING}
    reads = STAGES[number]
    wanted = [*IDENTITY, *reads.keys, *reads.sections]
    return {k: data[k] for k in data if k in wanted}


def stage_params(P: config.Params, number: str) -> str:
    """The text of ``<run>/params/<number>.yaml``: what stage ``number``'s rule depends on."""
    head = (
        f"# the params stage {number} reads (artsim_lib/workflow/dataflow.py): its rule "
        "re-runs when this file changes\n"
    )
    return head + yaml.safe_dump(stage_params_data(P, number), sort_keys=False)
