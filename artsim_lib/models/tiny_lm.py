"""Seeded, randomly initialised TINY text models for stage 04's ``llm`` and ``summarize`` backends.

==========  ==========================================  ======================================
kind        stands in for                               tiny version
==========  ==========================================  ======================================
lm          an instruct model (Llama-3.1-8B-Instruct)   2-layer Llama, width 32, chat template
summarizer  facebook/bart-large-cnn                     2+2-layer BART, width 32
==========  ==========================================  ======================================

Both use the offline OPT-style BPE of :mod:`artsim_lib.models.bpe` and are saved with
``save_pretrained``, so the stage loads them with the same ``Auto*.from_pretrained`` call it
uses for hub ids. Their output is random text: the stage must validate it and fall back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from artsim_lib.io import paths
from artsim_lib.models import bpe
from artsim_lib.models.tiny import MARKER, tiny_marker

KINDS = ("lm", "summarizer")
VERSION = 1  # bump when an architecture changes: existing tiny dirs are rebuilt
# A minimal plain-text chat format (Llama 3's has the same roles); the stage calls apply_chat_template.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _padded(n: int) -> int:
    return -(-n // 8) * 8


def make_lm():
    """``(LlamaForCausalLM, tokenizer)``: 2 layers, width 32, 4 heads (2 key/value), chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe.opt_tokenizer(max_length=512)
    tok.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=_padded(len(tok)),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,  # 0.02 makes a random LM repeat one token
    )
    return LlamaForCausalLM(config), tok


def make_summarizer():
    """``(BartForConditionalGeneration, BartTokenizer)``: 2 encoder + 2 decoder layers, width 32."""
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    vocab, merges = bpe.opt_vocab_merges()  # <s> <pad> </s> <unk> are ids 0-3, as in BART
    tok = BartTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=512)
    config = BartConfig(
        vocab_size=_padded(len(tok)),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=512,
        init_std=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_bos_token_id=tok.bos_token_id,
    )
    return BartForConditionalGeneration(config), tok


MAKERS = {"lm": make_lm, "summarizer": make_summarizer}


def build(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``kind`` into ``path`` (atomically); the same seed gives the same weights."""
    if kind not in MAKERS:
        raise ValueError(f"unknown tiny text model {kind!r} (known: {', '.join(KINDS)})")
    torch.manual_seed(seed)
    model, tok = MAKERS[kind]()
    with paths.atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        marker = {"kind": f"tiny-{kind}", "seed": seed, "version": VERSION, "note": "random weights, for smoke runs"}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return Path(path)


def ensure(kind: str, path: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``kind`` at ``path`` unless a current one (or any other checkpoint) is there."""
    path = Path(path)
    marker = tiny_marker(path)
    current = marker is not None and (marker.get("kind"), marker.get("seed"), marker.get("version")) == (
        f"tiny-{kind}",
        seed,
        VERSION,
    )
    has_checkpoint = (path / "config.json").exists() and marker is None
    if not current and not has_checkpoint:
        if path.exists() and any(path.iterdir()) and marker is None:
            raise FileExistsError(f"{path} exists but holds no checkpoint (and no {MARKER}); not replacing it")
        build(kind, path, seed)
    return path
