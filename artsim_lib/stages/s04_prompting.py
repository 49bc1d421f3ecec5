"""Stage 04: a moderate and/or a radical transformation prompt per image, within SDXL's budget.

* **Levels** (``prompting.levels``): ``both`` gives every image one prompt of each level;
  ``split`` gives each image one level, ``radical_share`` of them radical (seeded, exact count).
* **Families**: each prompt changes one thing. Moderate prompts keep composition and subject and
  change colour, lighting, technique, season or time of day; radical ones change style, era,
  medium or setting through one of ten families. Families are dealt out evenly (counts differ
  by at most one per level) and in turn within each style, from a seeded order.
* **Text**: the ``template`` grammar (:mod:`artsim_lib.core.prompt_grammar`) or an instruct model
  (``llm``, :mod:`artsim_lib.models.prompt_llm`), falling back to the template when its answer is unusable.
* **Budget**: tokens are counted with the refiner's own ``tokenizer_2``; no prompt exceeds
  ``max_tokens`` and over-long ones are brought near ``target_tokens``
  (:mod:`artsim_lib.core.prompt_compress`, or the ``summarize`` model with truncation as fallback).
  That is the real CLIP tokenizer in every profile (the tiny refiner carries the real 49,408-token
  vocabulary, :mod:`artsim_lib.models.bpe`), so the smoke profile's counts are the full study's.

Output: ``prompting/prompts.parquet`` (see :data:`COLUMNS`), via :func:`load`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from artsim_lib import models
from artsim_lib.core.prompt_compress import Compressed, compress_many, split_clauses, token_counter
from artsim_lib.core.prompt_grammar import LEVELS, clean_caption, render, template_prompt
from artsim_lib.io import paths, shards
from artsim_lib.io.artifacts import read_current
from artsim_lib.stages import s02_preprocess, s03_captioning
from artsim_lib.stages.s03_captioning import caption_meta

# The seed study's own figures for its prompts, in CLIP tokens (start/end included): the mean
# before compression, the mean after it, and CLIP's limit. Notebook 04 draws them beside ours.
SEED_FIGURES = {"mean_before": 89, "mean_after": 55, "limit": 77}

COLUMNS = [
    "prompt_id",
    "id",
    "level",
    "family",
    "prompt",
    "prompt_raw",
    "tokens_raw",
    "tokens",
    "compressed",
    "backend",
    "compression",
    "llm_fallback",
    "summary_fallback",
]


def prompts_path(P):
    """``<run>/prompting/prompts.parquet``."""
    return P.run.root / "prompting" / "prompts.parquet"


def prompt_meta(P) -> dict:
    """What ``prompts.parquet`` depends on (batch size, device and dtype do not count)."""
    cfg = P.prompting.model_dump(mode="json")
    cfg.pop("batch_size")
    if P.prompting.backend != "llm":
        for k in [k for k in cfg if k.startswith("llm")]:
            cfg.pop(k)
    if P.prompting.compressor != "summarize":
        for k in [k for k in cfg if k.startswith("summarizer")]:
            cfg.pop(k)
    from artsim_lib.models import tiny

    # A tiny refiner's vocabulary changes with its version (version 2: the real CLIP vocabulary).
    tok_version = tiny.TINY_VERSION if P.models.build_tiny else None
    return {
        "stage": "prompting",
        "captions": caption_meta(P),
        "seed": P.seed,
        "tokenizer": P.models.sdxl_refiner,
        "tokenizer_tiny_version": tok_version,
        "prompting": cfg,
    }


def assign_levels(ids, levels: str = "both", radical_share: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """(id, level) rows: both levels per id, or one level each with exactly
    ``round(radical_share * n)`` radical ones, chosen by a seeded permutation."""
    ids = sorted(map(str, ids))
    if levels == "both":
        return pd.DataFrame([(i, lv) for i in ids for lv in LEVELS], columns=["id", "level"])
    if levels != "split":
        raise ValueError(f"prompting.levels must be 'both' or 'split', got {levels!r}")
    n_radical = int(round(radical_share * len(ids)))
    order = np.random.default_rng([seed, 4]).permutation(len(ids))
    level = np.full(len(ids), "moderate", dtype=object)
    level[order[:n_radical]] = "radical"
    return pd.DataFrame({"id": ids, "level": level})


def assign_families(jobs: pd.DataFrame, families: dict[str, list[str]], seed: int = 0) -> pd.Series:
    """A family per row of ``jobs`` (id, level, style): per level, families are dealt in a seeded
    order to the rows sorted by style (then a seeded shuffle), so the counts differ by at most
    one overall and each style gets a spread of families."""
    out = pd.Series(index=jobs.index, dtype=object)
    for level, fams in families.items():
        sub = jobs[jobs["level"] == level]
        if sub.empty:
            continue
        fams = list(fams)
        random.Random(f"{seed}:{level}:families").shuffle(fams)
        key = sub["id"].map(lambda i: shards.item_seed(seed, i, f"family:{level}"))
        order = sub.assign(_key=key).sort_values(["style", "_key"], kind="stable").index
        out.loc[order] = [fams[k % len(fams)] for k in range(len(order))]
    return out


def plan(P, manifest: pd.DataFrame, captions: pd.DataFrame) -> pd.DataFrame:
    """Every prompt to write: prompt_id, id, level, family, style and the cleaned caption."""
    cfg = P.prompting
    base = manifest[["id", "style"]].merge(captions[["id", "caption"]], on="id", how="inner")
    base["caption"] = [clean_caption(c, cfg.caption_max_words) for c in base["caption"]]
    jobs = assign_levels(base["id"], cfg.levels, cfg.radical_share, P.seed).merge(base, on="id")
    families = {"moderate": list(cfg.moderate_families), "radical": list(cfg.radical_families)}
    jobs["family"] = assign_families(jobs, families, P.seed)
    jobs["prompt_id"] = jobs["id"] + ":" + jobs["level"]
    return jobs.sort_values("prompt_id", kind="stable").reset_index(drop=True)


def _texts(P, jobs: pd.DataFrame) -> tuple[list, list[str], list[bool]]:
    """Clauses, backend and LLM-fallback flag per job."""
    clauses = [
        template_prompt(
            r.caption, r.level, r.family, random.Random(shards.item_seed(P.seed, r.prompt_id, "prompt")), r.style
        )
        for r in jobs.itertuples()
    ]
    backend, fallback = ["template"] * len(jobs), [False] * len(jobs)
    if P.prompting.backend == "llm" and len(jobs):
        from artsim_lib.models.prompt_llm import llm_prompts

        for i, text in enumerate(llm_prompts(P, jobs)):
            if text is None:
                fallback[i] = True
            else:
                clauses[i], backend[i] = split_clauses(text), "llm"
    return clauses, backend, fallback


def _summaries(P, raw: list[str], tokens_raw: list[int], fitted: list[Compressed], count) -> list[bool]:
    """Replace truncations by summaries where the summariser's answer is usable; returns the
    per-prompt 'summary fell back to truncation' flags."""
    from artsim_lib.models.prompt_llm import summarize

    cfg = P.prompting
    over = [i for i, n in enumerate(tokens_raw) if n > cfg.target_tokens]
    failed = [False] * len(raw)
    summaries = summarize(P, [raw[i] for i in over])
    counts = count([s or "" for s in summaries])
    for i, text, n in zip(over, summaries, counts):
        if text is not None and n <= cfg.max_tokens and n < tokens_raw[i]:
            fitted[i] = Compressed(text, n, "summarize")
        else:
            failed[i] = True
    return failed


def build_prompts(P, manifest: pd.DataFrame, captions: pd.DataFrame) -> pd.DataFrame:
    """The prompts table for ``P`` (not written; see :func:`run`)."""
    cfg = P.prompting
    jobs = plan(P, manifest, captions)
    clauses, backend, llm_fallback = _texts(P, jobs)
    tokenizer = models.load_clip_tokenizer(P)
    count = token_counter(tokenizer)
    raw = [render(c) for c in clauses]
    tokens_raw = count(raw)
    fitted = compress_many(clauses, count, cfg.target_tokens, cfg.max_tokens, tokenizer)
    summary_fallback = [False] * len(raw)
    if cfg.compressor == "summarize":
        summary_fallback = _summaries(P, raw, tokens_raw, fitted, count)
    out = jobs[["prompt_id", "id", "level", "family"]].assign(
        prompt=[f.text for f in fitted],
        prompt_raw=raw,
        tokens_raw=tokens_raw,
        tokens=[f.tokens for f in fitted],
        compressed=[f.text != r for f, r in zip(fitted, raw)],
        backend=backend,
        compression=[f.method for f in fitted],
        llm_fallback=llm_fallback,
        summary_fallback=summary_fallback,
    )
    too_long = out[out["tokens"] > cfg.max_tokens]
    if len(too_long):  # compress() guarantees this; a failure here is a bug, not a data problem
        raise AssertionError(
            f"{len(too_long)} prompt(s) over {cfg.max_tokens} tokens, e.g. {list(too_long['prompt_id'][:3])}"
        )
    return out[COLUMNS]


@dataclass
class PromptRun:
    """What :func:`run` wrote, and how long it took."""

    prompts: pd.DataFrame
    seconds: float

    @property
    def prompts_per_s(self) -> float:
        return len(self.prompts) / self.seconds if self.seconds > 0 else float("nan")


def run(P) -> PromptRun:
    """Write ``prompts.parquet`` for ``P`` from stage 02's manifest and stage 03's captions."""
    manifest = s02_preprocess.load(P)
    captions = s03_captioning.load(P)
    t0 = time.perf_counter()
    prompts = build_prompts(P, manifest, captions)
    seconds = time.perf_counter() - t0
    paths.write_parquet(prompts, prompts_path(P), prompt_meta(P))
    return PromptRun(prompts, seconds)


def load(P) -> pd.DataFrame:
    """``prompts.parquet`` for ``P``; StageNotRunError ("run stage 04 first") when it is missing
    or was made with other params."""
    return read_current(prompts_path(P), prompt_meta(P), "04", "the prompts")


def figure_token_lengths(prompts: pd.DataFrame, target: int, limit: int, reference: dict | None = None):
    """Histograms of prompt lengths in CLIP tokens, before and after compression, per level.
    ``reference`` (e.g. :data:`SEED_FIGURES`) adds the seed study's means as dotted lines."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    top = int(max(prompts["tokens_raw"].max(), limit, (reference or {}).get("mean_before", 0))) + 2
    bins = np.arange(0, top + 4, 4)
    for ax, col, title, ref_key in (
        (axes[0], "tokens_raw", "Before compression", "mean_before"),
        (axes[1], "tokens", "After compression", "mean_after"),
    ):
        for level, color in (("moderate", "#4C72B0"), ("radical", "#C44E52")):
            vals = prompts.loc[prompts["level"] == level, col]
            if len(vals):
                ax.hist(vals, bins=bins, alpha=0.6, color=color, label=f"{level} (mean {vals.mean():.1f})")
        ax.axvline(limit, color="k", ls="-", lw=1.2, label=f"limit {limit}")
        ax.axvline(target, color="k", ls="--", lw=1.2, label=f"target {target}")
        if reference and ref_key in reference:
            ax.axvline(
                reference[ref_key], color="#55A868", ls=":", lw=2, label=f"seed study's mean {reference[ref_key]}"
            )
        ax.set(
            title=f"{title}: mean {prompts[col].mean():.1f} tokens",
            xlabel="CLIP tokens (start/end included)",
            ylabel="prompts",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def token_figures_vs_seed(prompts: pd.DataFrame, reference: dict = SEED_FIGURES) -> pd.DataFrame:
    """This run's mean lengths before/after compression and its longest prompt, beside the seed
    study's figures (all in CLIP tokens, start/end included)."""
    rows = [
        ("mean before compression", prompts["tokens_raw"].mean(), reference["mean_before"]),
        ("mean after compression", prompts["tokens"].mean(), reference["mean_after"]),
        ("longest after compression", prompts["tokens"].max(), reference["limit"]),
    ]
    return pd.DataFrame(rows, columns=["figure", "this run", "seed study"]).set_index("figure").round(1)


def figure_family_counts(prompts: pd.DataFrame):
    """Prompts per family, one bar colour per level."""
    import matplotlib.pyplot as plt

    counts = prompts.groupby(["level", "family"]).size().rename("prompts").reset_index()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    colors = counts["level"].map({"moderate": "#4C72B0", "radical": "#C44E52"})
    ax.bar(range(len(counts)), counts["prompts"], color=colors)
    ax.set_xticks(
        range(len(counts)),
        [f"{f}\n({lv[:3]})" for lv, f in zip(counts["level"], counts["family"])],
        fontsize=8,
        rotation=45,
        ha="right",
    )
    ax.set(ylabel="prompts", title="Prompts per transformation family (blue: moderate, red: radical)")
    fig.tight_layout()
    return fig


def side_by_side(prompts: pd.DataFrame, captions: pd.DataFrame, n: int = 4, seed: int = 0) -> pd.DataFrame:
    """For ``n`` images (seeded pick, those with both levels first): caption, moderate and radical prompt."""
    wide = prompts.pivot_table(index="id", columns="level", values="prompt", aggfunc="first")
    fams = prompts.pivot_table(index="id", columns="level", values="family", aggfunc="first")
    for level in LEVELS:
        wide[level] = wide.get(level)
        fams[level] = fams.get(level)
    both = wide.dropna(subset=list(LEVELS))
    pool = both if len(both) else wide
    ids = pool.sample(min(n, len(pool)), random_state=seed).index.sort_values() if len(pool) else []
    out = pd.DataFrame({"caption": captions.set_index("id").reindex(ids)["caption"]})
    for level in LEVELS:
        out[level] = [
            f"[{f}] {p}" if isinstance(p, str) else None for f, p in zip(fams.loc[ids, level], wide.loc[ids, level])
        ]
    return out


def compression_examples(prompts: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """The compressed prompts with the longest raw text, one per compression method first."""
    done = prompts[prompts["compressed"]].sort_values(["tokens_raw", "prompt_id"], ascending=[False, True])
    first = done.drop_duplicates("compression")
    picks = pd.concat([first, done.drop(first.index)]).head(n)
    return picks[["prompt_id", "compression", "tokens_raw", "tokens", "prompt_raw", "prompt"]].reset_index(drop=True)
