"""Token budgets for stage 04: counting with the generator's own CLIP tokenizer, and an
offline, clause-aware compressor.

SDXL-Refiner conditions on ``tokenizer_2`` (CLIP ViT-bigG's), which keeps 77 tokens, the start
and end tokens included, and silently drops the rest. A prompt longer than the target is made
shorter in this order, each step only as far as needed:

1. drop whole clauses, the highest rank (least important) first, the trailing one first within a rank;
2. drop modifiers (adjectives and adverbs from :data:`MODIFIERS`), trailing ones first;
3. drop trailing whole words (never cutting one) -- only when still over the hard limit;
4. cut at the token limit -- the last resort, for a single enormous word.

Among the versions of steps 1 and 2 that fit the hard limit, the one whose length is closest
to the target wins (ties go to the longer one), so lengths gather around the target.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from artsim_lib.core.prompt_grammar import SLOTS, Clause, fix_articles, render

Counter = Callable[[Sequence[str]], list[int]]
_CLAUSE_SPLIT = re.compile(r"\s*[,;:\n]+\s*|(?<=[.!?])\s+|\s+[-\u2013\u2014]\s+")
_DANGLING = {
    "a",
    "an",
    "the",
    "and",
    "or",
    "with",
    "of",
    "in",
    "on",
    "at",
    "to",
    "by",
    "for",
    "from",
    "as",
    "into",
    "under",
    "while",
    "where",
    "its",
    "their",
    "his",
    "her",
}


def _grammar_adjectives() -> set[str]:
    colours = {w for alt in SLOTS["colour"] + SLOTS["palette_mood"] + SLOTS["mood"] for w in alt.split()}
    return colours - {"black", "blue", "grey", "green", "gold", "pink", "yellow"}  # kept: they carry the change


MODIFIERS = frozenset(
    {
        "very",
        "highly",
        "extremely",
        "incredibly",
        "beautifully",
        "softly",
        "gently",
        "subtly",
        "deeply",
        "richly",
        "finely",
        "delicately",
        "boldly",
        "slightly",
        "truly",
        "quite",
        "rather",
        "fresh",
        "soft",
        "warm",
        "cold",
        "cool",
        "gentle",
        "subtle",
        "delicate",
        "fine",
        "rich",
        "deep",
        "bold",
        "bright",
        "dark",
        "pale",
        "faint",
        "vivid",
        "vibrant",
        "muted",
        "lush",
        "dramatic",
        "luminous",
        "glowing",
        "intricate",
        "ornate",
        "elaborate",
        "beautiful",
        "stunning",
        "gorgeous",
        "elegant",
        "serene",
        "tranquil",
        "dreamy",
        "ethereal",
        "majestic",
        "striking",
        "breathtaking",
        "magnificent",
        "exquisite",
        "detailed",
        "crisp",
        "smooth",
        "thick",
        "thin",
        "long",
        "little",
        "small",
        "tiny",
        "huge",
        "enormous",
        "vast",
        "old",
        "ancient",
        "whole",
        "every",
        "harsh",
        "hazy",
        "flickering",
        "velvety",
        "careful",
        "precise",
        "expressive",
        "energetic",
        "loose",
        "transparent",
        "translucent",
        "layered",
        "visible",
        "new",
        "pure",
        "strong",
        "dynamic",
        "harmonious",
    }
) | frozenset(_grammar_adjectives())


@dataclass(frozen=True)
class Compressed:
    """A prompt made to fit: its text, its token count and how it was shortened."""

    text: str
    tokens: int
    method: str  # none | clauses | modifiers | words | tokens


def token_counter(tokenizer) -> Counter:
    """Token counts (start and end tokens included, no truncation) of a list of texts."""

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    return count


def split_clauses(text: str) -> list[Clause]:
    """Free text (an LLM's, say) as clauses at , ; : dashes and sentence ends; the first is
    rank 0 (kept), later ones rank by position, so trailing ones are dropped first."""
    parts = [p.strip(" .!?") for p in _CLAUSE_SPLIT.split(text.strip())]
    return [Clause(p, 0 if i == 0 else i) for i, p in enumerate(q for q in parts if q)]


def _clause_drops(clauses: list[Clause]) -> list[list[Clause]]:
    """Ever-shorter clause lists: the full list, then one clause fewer each time (rank 0 stays)."""
    out, cur = [list(clauses)], list(clauses)
    while any(c.rank > 0 for c in cur):
        worst = max(range(len(cur)), key=lambda i: (cur[i].rank, i))
        cur = cur[:worst] + cur[worst + 1 :]
        out.append(cur)
    return out


def _modifier_drops(text: str) -> list[str]:
    """``text`` with one more modifier removed each time, the trailing ones first."""
    words = text.split(" ")
    out = []
    for i in range(len(words) - 1, 0, -1):  # the very first word stays
        # Only a modifier with a word after it in its clause: 'soft light' -> 'light', never 'soft,'.
        if words[i].lower() in MODIFIERS and i + 1 < len(words):
            words = words[:i] + words[i + 1 :]
            out.append(fix_articles(" ".join(words)))
    return out


def _tidy_end(words: list[str]) -> str:
    """Words joined, without trailing commas or dangling articles/prepositions."""
    while len(words) > 1 and words[-1].lower().strip(",") in _DANGLING:
        words = words[:-1]
    return " ".join(words).rstrip(" ,;:-")


def truncate_words(text: str, count: Counter, limit: int) -> str | None:
    """The longest prefix of whole words within ``limit`` tokens (None if not even one word fits)."""
    words = text.split(" ")
    lo, hi = 0, len(words)  # invariant: a prefix of lo words fits (0 words always does)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count([" ".join(words[:mid])])[0] <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None
    return _tidy_end(words[:lo])


def truncate_tokens(text: str, tokenizer, limit: int) -> str:
    """The last resort: the text's first ``limit`` tokens (start and end included), decoded."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"][: max(0, limit - 2)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _closest(counts: list[int], target: int, limit: int) -> int | None:
    """The index of the count nearest ``target`` among those within ``limit`` (ties: the first)."""
    fits = [i for i, n in enumerate(counts) if n <= limit]
    return min(fits, key=lambda i: (abs(counts[i] - target), i)) if fits else None


def _count_groups(groups: dict[int, list[str]], count: Counter, chunk: int = 4096) -> dict[int, list[int]]:
    """Token counts of every text of every group, counted in a few large batches."""
    flat = [(key, t) for key, texts in groups.items() for t in texts]
    counts: list[int] = []
    for start in range(0, len(flat), chunk):
        counts += count([t for _, t in flat[start : start + chunk]])
    out: dict[int, list[int]] = {key: [] for key in groups}
    for (key, _), n in zip(flat, counts):
        out[key].append(n)
    return out


def _cut(text: str, count: Counter, limit: int, tokenizer) -> Compressed:
    """Whole trailing words off until ``text`` fits, or (one giant word) a cut at the token limit."""
    words = truncate_words(text, count, limit)
    if words is not None:
        return Compressed(words, count([words])[0], "words")
    if tokenizer is None:
        raise ValueError("a single word exceeds the token limit and no tokenizer was given to cut it")
    cut = truncate_tokens(text, tokenizer, limit)
    return Compressed(cut, count([cut])[0], "tokens")


def compress_many(
    prompts: list[list[Clause]], count: Counter, target: int, limit: int, tokenizer=None
) -> list[Compressed]:
    """:func:`compress` for many prompts, counting their candidate versions in large batches."""
    fulls = [render(c) for c in prompts]
    out: list[Compressed | None] = [
        Compressed(t, n, "none") if n <= target else None for t, n in zip(fulls, count(fulls))
    ]
    clause_texts = {i: [render(c) for c in _clause_drops(prompts[i])] for i, o in enumerate(out) if o is None}
    clause_counts = _count_groups(clause_texts, count)
    mod_texts = {}
    for i, texts in clause_texts.items():
        best = _closest(clause_counts[i], target, limit)
        if best is not None and (clause_counts[i][best] <= target or best < len(texts) - 1):
            out[i] = Compressed(texts[best], clause_counts[i][best], "none" if best == 0 else "clauses")
        else:  # even the subject alone is over the target: try modifiers next
            mod_texts[i] = _modifier_drops(texts[-1])
    mod_counts = _count_groups(mod_texts, count)
    for i, mods in mod_texts.items():
        n_clause = len(clause_texts[i])
        best = _closest(clause_counts[i] + mod_counts[i], target, limit)
        if best is None:
            out[i] = _cut((clause_texts[i] + mods)[-1], count, limit, tokenizer)
        else:
            text, n = (clause_texts[i] + mods)[best], (clause_counts[i] + mod_counts[i])[best]
            out[i] = Compressed(text, n, "none" if best == 0 else "clauses" if best < n_clause else "modifiers")
    return out


def compress(clauses: list[Clause], count: Counter, target: int, limit: int, tokenizer=None) -> Compressed:
    """Fit a prompt given as clauses near ``target`` tokens and within ``limit`` (see the module doc)."""
    return compress_many([clauses], count, target, limit, tokenizer)[0]
