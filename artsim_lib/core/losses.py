"""The study's triplet loss and the numbers that judge an embedding: one definition for every model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def triplet_similarities(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor):
    """Cosine similarities ``(s+, s-)`` of each anchor with its positive and its negative. # [B], [B]"""
    a, p, n = (F.normalize(x, dim=-1) for x in (anchor, positive, negative))
    return (a * p).sum(-1), (a * n).sum(-1)


def infonce_triplet_loss(
    s_pos: torch.Tensor, s_neg: torch.Tensor, tau: float | torch.Tensor = 0.07, reduction: str = "mean"
) -> torch.Tensor:
    """``-log(e^{s+/τ} / (e^{s+/τ} + e^{s-/τ}))``, computed stably as ``softplus((s- - s+)/τ)``.

    ``s_neg`` may be ``[B]`` (one negative each) or ``[B, K]`` (K negatives each, e.g. in-batch):
    the denominator then sums over the positive and every negative.
    """
    if s_neg.dim() == 1:
        s_neg = s_neg[:, None]
    logits = torch.cat([s_pos[:, None], s_neg], dim=1) / tau  # [B, 1+K]
    loss = -torch.log_softmax(logits, dim=1)[:, 0]  # [B]
    return loss.mean() if reduction == "mean" else loss


def in_batch_negatives(
    anchor: torch.Tensor, positive: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """Similarities of each anchor with every *other* positive in the batch. # [B, B-1]

    ``groups`` ``[B]`` names each item's original (the anchor's painting): another item's positive of
    the same original is a derivative of this anchor's painting, not a negative, and is set to
    ``-inf`` (it then adds nothing to the InfoNCE denominator)."""
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    sim = a @ p.T  # [B, B]
    if groups is not None:
        groups = torch.as_tensor(groups, device=a.device)
        sim = sim.masked_fill(groups[:, None] == groups[None, :], float("-inf"))
    mask = ~torch.eye(len(a), dtype=torch.bool, device=a.device)
    return sim[mask].view(len(a), len(a) - 1)


def triplet_loss(za, zp, zn, tau, groups: torch.Tensor | None = None, in_batch: bool = False):
    """The study's InfoNCE loss, optionally with the other positives of the batch as extra
    negatives (except those of the same original, ``groups``). Returns (loss, s+, s-)."""
    s_pos, s_neg = triplet_similarities(za, zp, zn)  # [B], [B]
    negs = s_neg[:, None]
    if in_batch and len(za) > 1:
        negs = torch.cat([negs, in_batch_negatives(za, zp, groups)], dim=1)  # [B, 1 + B-1]
    return infonce_triplet_loss(s_pos, negs, tau), s_pos, s_neg
