"""Small, general pieces of a training loop, shared by the fine-tune and the siamese models.

A loop built from them reads::

    setup = training.setup(P.device, P.dtype, mixed_precision=True)
    model.to(setup.device)                      # weights stay float32; autocast does the rest
    opt = training.adamw(model, lr, weight_decay)
    sched = training.warmup_schedule(opt, total_steps, warmup_ratio=0.1, kind="cosine")
    stopper, history = training.EarlyStopping(patience=3), training.History()
    for epoch in range(epochs):
        for idx in training.batch_indices(n, batch_size, shuffle=True, seed=training.epoch_seed(seed, epoch)):
            with setup.autocast():
                loss = ...
            setup.step(loss, opt, sched)
        history.log(epoch=epoch, split="val", loss=val_loss)
        if stopper.step(val_loss, epoch):
            save_best(...)
        if stopper.should_stop:
            break
    history.frame()   # one row per (epoch, split)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from artsim_lib.models.hub import pick_device, pick_dtype  # not the package facade: it imports this module

# -- device and mixed precision ------------------------------------------------------------------


@dataclass
class Setup:
    """Where and how to train: the device, the autocast dtype (None: plain float32) and the
    gradient scaler (enabled only for CUDA float16)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler = field(default=None)

    def __post_init__(self):
        if self.scaler is None:
            fp16 = self.amp_dtype == torch.float16 and self.device.type == "cuda"
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    @property
    def mixed(self) -> bool:
        return self.amp_dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to the AMP dtype, or a no-op context in plain float32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self, loss: torch.Tensor, optimizer, scheduler=None, clip_norm: float | None = None) -> None:
        """Backward, optional gradient clipping, optimizer and scheduler step, zero grads;
        through the scaler, so float16 gradients neither underflow nor apply when inf/NaN."""
        self.scaler.scale(loss).backward()
        if clip_norm is not None:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()


def setup(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", mixed_precision: bool = True
) -> Setup:
    """A :class:`Setup` from the ``device``/``dtype`` params: on CUDA with ``mixed_precision``
    and a half dtype, autocast to it (float16 also gets a GradScaler); on CPU plain float32."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    half = dt in (torch.float16, torch.bfloat16)
    amp = dt if (mixed_precision and half and dev.type == "cuda") else None
    return Setup(dev, amp)


@contextlib.contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """Hide transformers' own progress bars (``save_pretrained``/``from_pretrained`` shards) inside
    a training loop, where one per saved epoch would drown the loop's bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# -- optimiser and learning-rate schedule ----------------------------------------------------------


def _no_decay(name: str, p: torch.nn.Parameter) -> bool:
    """Biases and normalisation weights (1-d tensors) are not weight-decayed, as in BERT/ViT recipes."""
    return p.ndim <= 1 or name.endswith(".bias")


def adamw(
    model_or_params, lr: float, weight_decay: float = 0.0, lr_overrides: dict[str, float] | None = None, **kwargs
) -> torch.optim.AdamW:
    """AdamW over the *trainable* parameters, without weight decay on biases and norms.

    Takes a module, or an iterable of ``(name, parameter)`` pairs (``module.named_parameters()``).
    ``lr_overrides`` maps a name prefix to its own learning rate, e.g. ``{"backbone.": 1e-5}``
    for a pretrained backbone under a fresh head (the first matching prefix wins).
    """
    named = model_or_params.named_parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    overrides = lr_overrides or {}
    groups: dict[tuple[float, float], list] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        p_lr = next((v for k, v in overrides.items() if name.startswith(k)), lr)
        p_wd = 0.0 if _no_decay(name, p) else weight_decay
        groups.setdefault((p_lr, p_wd), []).append(p)
    if not groups:
        raise ValueError("adamw: nothing to train (every parameter has requires_grad=False)")
    return torch.optim.AdamW(
        [{"params": ps, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), ps in groups.items()], lr=lr, **kwargs
    )


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    kind: Literal["cosine", "linear", "constant"] = "cosine",
    floor: float = 0.0,
) -> float:
    """The multiplier of the base learning rate at ``step``: linear warm-up from ~0 to 1 over
    ``warmup_steps``, then cosine or linear decay to ``floor`` at ``total_steps`` (or constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * decay


def warmup_schedule(
    optimizer,
    total_steps: int,
    warmup_ratio: float = 0.1,
    kind: Literal["cosine", "linear", "constant"] = "cosine",
    floor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler (call ``.step()`` after each optimizer step) following :func:`lr_factor`."""
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, kind, floor))


# -- early stopping and history --------------------------------------------------------------------


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement of more than ``min_delta``.

    ``step(value, epoch)`` returns True when ``value`` is a new best (save the checkpoint then);
    ``should_stop`` turns True once ``patience`` epochs in a row have not improved.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, mode: Literal["min", "max"] = "min"):
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience, self.min_delta, self.mode = patience, min_delta, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record one epoch's monitored value; True when it is the best so far."""
        value = float(value)
        if self._better(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


class History:
    """Rows of per-epoch numbers (``log(epoch=1, split="val", loss=0.3, acc=0.9)``) as a table."""

    def __init__(self):
        self.rows: list[dict] = []

    def log(self, **row) -> dict:
        """Append one row (numbers are stored as Python floats/ints); returns it."""
        clean = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()}
        self.rows.append(clean)
        return clean

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def last(self, split: str | None = None) -> dict:
        """The latest row (of ``split`` when given)."""
        rows = [r for r in self.rows if split is None or r.get("split") == split]
        return rows[-1] if rows else {}


@dataclass
class TrainResult:
    """What a training run returns: the per-epoch history (``epoch``, ``split``, metrics), the
    best epoch (by the monitored validation number), where the best model was saved, and any
    extra numbers (``metrics``)."""

    history: pd.DataFrame
    best_epoch: int | None
    model_dir: Path
    variant: str = ""
    metrics: dict = field(default_factory=dict)


# -- batches, seeds and trainable parts -----------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed per epoch (for shuffling and augmentation)."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**31


def batch_indices(
    n: int, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Index arrays of consecutive batches over ``range(n)``, shuffled with ``seed`` when asked."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def set_trainable(module: torch.nn.Module, trainable: bool | Iterable[str] = True) -> torch.nn.Module:
    """``requires_grad`` on (True), off (False), or on only for parameters whose name starts
    with one of the given prefixes (e.g. ``["resnet.encoder.stages.3"]``). Returns the module."""
    if isinstance(trainable, bool):
        for p in module.parameters():
            p.requires_grad_(trainable)
        return module
    prefixes = tuple(trainable)
    for name, p in module.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
    return module


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def mean_of(values: list[float], weights: list[int] | None = None) -> float:
    """The (weighted) mean of per-batch numbers; NaN for none."""
    if not values:
        return float("nan")
    return float(np.average(values, weights=weights))
