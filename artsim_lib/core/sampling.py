"""Sampling that does not depend on the batch: one random stream per item.

``generate(do_sample=True)`` draws every row of a batch from torch's one global generator, so
an item's text depends on which items share its batch. :class:`SeededSampler` instead samples
each row with its own ``torch.Generator`` (seeded from the item's id) by the Gumbel-max trick:
``argmax(logits / T + Gumbel noise)`` is a draw from ``softmax(logits / T)``. It runs as a logits
processor under greedy decoding, so sampled generation stays batched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch


class SeededSampler:
    """A ``LogitsProcessor``: temperature-``T`` sampling with one generator per batch row."""

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, device: str | torch.device = "cpu"):
        if temperature <= 0:
            raise ValueError("SeededSampler needs a temperature > 0 (use greedy decoding for 0)")
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):  # beams or several return sequences
            raise ValueError(f"SeededSampler has {len(self.generators)} generators for {scores.shape[0]} rows")
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # [B, V]
        u = torch.stack([torch.rand(scores.shape[1], generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7)))  # [B, V]
        return torch.where(torch.isfinite(logp), logp + gumbel, logp)


def greedy_config(model, **overrides):
    """The model's generation config switched to plain greedy decoding (its eos ids kept), so a
    :class:`SeededSampler` alone decides; ``overrides`` (max_new_tokens, ...) are applied on top."""
    config = copy.deepcopy(model.generation_config)
    config.do_sample, config.num_beams = False, 1
    config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50  # the defaults: no warnings
    config.update(**overrides)
    return config


def sampled_generate(model, inputs: dict, seeds: Sequence[int], temperature: float, **overrides):
    """``model.generate(**inputs)`` sampling row ``i`` with ``seeds[i]``, batched."""
    from transformers import LogitsProcessorList

    sampler = SeededSampler(seeds, temperature, device=next(model.parameters()).device)
    return model.generate(
        **inputs, generation_config=greedy_config(model, **overrides), logits_processor=LogitsProcessorList([sampler])
    )
