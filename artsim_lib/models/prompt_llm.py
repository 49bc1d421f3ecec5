"""Stage 04's model backends: prompts written by an instruct LLM (``prompting.backend: llm``)
and over-long prompts shortened by a seq2seq summariser (``prompting.compressor: summarize``).

Model output is never trusted: :func:`clean_output` strips chat furniture (preambles, quotes,
markdown, several options) and rejects what is not a usable prompt (too few words, refusals,
non-text bytes); the stage then falls back to the template grammar or to truncation and
records that it did. Generation is batched; sampling draws each prompt from its own seeded
stream (:mod:`artsim_lib.core.sampling`), so a prompt never depends on its batch.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from tqdm import tqdm

from artsim_lib import models
from artsim_lib.io import shards
from artsim_lib.models import tiny_lm

SYSTEM = (
    "You write prompts for SDXL-Refiner, an image-to-image diffusion model that transforms a painting. "
    "Answer with the prompt only: one line of comma-separated phrases, at most {words} words, "
    "no quotes, no explanations, no lists."
)
LEVEL_BRIEFS = {
    "moderate": "Keep the composition, the framing and the main subject exactly as they are; change only {brief}.",
    "radical": "Transform the image radically through one idea only, {brief}; keep the subject recognisable.",
}
FAMILY_BRIEFS = {
    "colour": "the colour scheme",
    "lighting": "the lighting",
    "technique": "the painting technique",
    "season": "the season",
    "time_of_day": "the time of day",
    "historical": "moving it to another historical era and its art form",
    "cultural": "recasting it in the art tradition of another culture",
    "natural": "rebuilding it from natural, organic materials and forms",
    "surreal": "turning it into a surreal dream with impossible events",
    "material": "remaking it in another material or medium",
    "emotional": "charging it with one overwhelming emotion",
    "mythological": "retelling it as a scene from a myth or legend",
    "scientific": "redrawing it as a scientific or technical diagram",
    "technological": "placing it in a technological, digital or futuristic world",
    "scale": "changing its scale drastically (miniature, microscopic or colossal)",
}
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|okay|ok|absolutely)\s*[,!.:-]"
    r"|(?:here(?:'s| is| are)\b[^:]*|(?:final |image )?prompt|output|answer)\s*:)\s*",
    re.I,
)
_REFUSAL = re.compile(r"\b(?:i'm sorry|i am sorry|i cannot|i can't|as an ai|i won't|unable to)\b", re.I)
_ALLOWED = re.compile(r"[A-Za-z0-9\s,.;:'()&/+\-\u00C0-\u024F]")


def messages(caption: str, level: str, family: str, style: str | None, max_words: int) -> list[dict]:
    """The system and user messages asking for one prompt."""
    brief = LEVEL_BRIEFS[level].format(brief=FAMILY_BRIEFS[family])
    user = (
        f"The painting ({style or 'unknown style'}) shows: {caption}.\n{brief}\n"
        f"Write the prompt for this {level} transformation ({family.replace('_', ' ')})."
    )
    return [{"role": "system", "content": SYSTEM.format(words=max_words)}, {"role": "user", "content": user}]


def _strip_line(line: str) -> str:
    """One answer line without markdown, numbering, quotes or a preamble ('Sure! Here is ...:')."""
    line = re.sub(r"[*_`\"\u201c\u201d]", "", line)
    line = re.sub(r"^\s*(?:[-#>]+|\d+[.)])\s*", "", line)
    prev = None
    while prev != line:
        prev, line = line, _PREAMBLE.sub("", line, count=1)
    return re.sub(r"\s+", " ", line).strip(" ,;:.'")


def clean_output(text: str | None, min_words: int = 4) -> str | None:
    """The usable prompt in a model's answer (its first non-empty line, cleaned), or None."""
    lines = (_strip_line(x) for x in str(text or "").splitlines())
    line = next((ln for ln in lines if ln), "")
    if not line or _REFUSAL.search(line):
        return None
    if any(unicodedata.category(ch).startswith("C") or ch == "\ufffd" for ch in line):
        return None  # control bytes or undecodable ones: not text
    if sum(bool(_ALLOWED.match(ch)) for ch in line) < 0.97 * len(line):
        return None  # stray symbols, code, emoji: not a prompt
    words = re.findall(r"[A-Za-z\u00C0-\u024F][\w'\-]*", line)
    if len(words) < min_words or len({w.lower() for w in words}) < max(2, len(words) // 3):
        return None  # too short, or one word repeated
    return line


def text_model_ref(P, value: str, kind: str) -> str:
    """``prompting.llm`` / ``prompting.summarizer`` as ``from_pretrained`` wants it. A path is
    resolved (and a tiny random model built there when ``models.build_tiny``); a hub id must be
    in the local cache."""
    if P.is_path(value):
        path = P.path(value)
        if P.models.build_tiny:
            tiny_lm.ensure(kind, path)
        return models.resolve_model_ref(path)
    return models.resolve_model_ref(value)


def load_text_model(ref: str, device="cpu", dtype="float32", seq2seq: bool = False):
    """``(model, tokenizer)``: a causal LM (left-padded for batches) or a seq2seq model, frozen."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    dev = models.pick_device(device)
    dt = models.pick_dtype(dtype, dev)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = models.freeze(cls.from_pretrained(ref, dtype=dt).to(dev))
    tok = AutoTokenizer.from_pretrained(ref)
    if not seq2seq:
        tok.padding_side = "left"  # a decoder-only model continues from the right edge
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def chat_text(tok, msgs: list[dict]) -> str:
    """The model's own chat format, or a plain one when the tokenizer has none."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in msgs) + "\n\nPrompt:"


def generate(
    model,
    tok,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seeds: Sequence[int] = (),
    batch_size: int = 8,
    desc: str = "generate",
    **kwargs,
) -> list[str]:
    """The continuation of each text (causal LM) or its output (seq2seq), decoded, in batches.
    ``temperature > 0`` samples text ``i`` from its own ``seeds[i]``; 0 decodes greedily."""
    import torch

    from artsim_lib.core.sampling import greedy_config, sampled_generate

    if temperature > 0 and len(seeds) != len(texts):
        raise ValueError("sampling needs one seed per text")
    decoder_only = not model.config.is_encoder_decoder
    out: list[str] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
        batch = list(texts[start : start + batch_size])
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, add_special_tokens=not decoder_only).to(
            model.device
        )  # input_ids: [B, T], left-padded
        opts = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id, **kwargs}
        with torch.inference_mode():
            if temperature > 0:
                ids = sampled_generate(model, dict(enc), seeds[start : start + batch_size], temperature, **opts)
            elif decoder_only:  # instruct models ship sampling defaults: switch them off
                ids = model.generate(**enc, generation_config=greedy_config(model, **opts))
            else:  # a summariser's own (deterministic, often beam-search) settings
                ids = model.generate(**enc, **opts)
        new = ids[:, enc["input_ids"].shape[1] :] if decoder_only else ids  # [B, new]
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return out


def llm_prompts(P, jobs) -> list[str | None]:
    """One cleaned LLM prompt per row of ``jobs`` (prompt_id, caption, level, family, style);
    None where the answer was not usable."""
    cfg = P.prompting
    model, tok = load_text_model(text_model_ref(P, cfg.llm, "lm"), P.device, P.dtype)
    words = max(8, round(cfg.target_tokens * 0.8))  # ~1.25 CLIP tokens per word
    texts = [chat_text(tok, messages(r.caption, r.level, r.family, r.style, words)) for r in jobs.itertuples()]
    seeds = [shards.item_seed(P.seed, pid, "llm") for pid in jobs["prompt_id"]]
    raw = generate(
        model,
        tok,
        texts,
        max_new_tokens=cfg.llm_max_new_tokens,
        temperature=cfg.llm_temperature,
        seeds=seeds,
        batch_size=cfg.batch_size,
        desc="LLM prompts",
    )
    return [clean_output(t, cfg.llm_min_words) for t in raw]


def summarize(P, texts: Sequence[str]) -> list[str | None]:
    """Each text shortened by the summariser (deterministic decoding); None where unusable."""
    cfg = P.prompting
    if not texts:
        return []
    model, tok = load_text_model(text_model_ref(P, cfg.summarizer, "summarizer"), P.device, P.dtype, seq2seq=True)
    # bart-large-cnn asks for at least 56 tokens by default: far too long for a CLIP prompt.
    raw = generate(
        model,
        tok,
        texts,
        max_new_tokens=cfg.summarizer_max_new_tokens,
        batch_size=cfg.batch_size,
        desc="summarise",
        min_length=0,
    )
    return [clean_output(t, cfg.llm_min_words) for t in raw]
