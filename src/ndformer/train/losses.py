"""Training losses: cross-entropy with label smoothing, the Lovász-softmax loss, and the
soft Dice loss.

The Lovász-softmax loss (Berman, Rannen Triki and Blaschko, CVPR 2018) is a convex
surrogate of the Jaccard index (IoU) of every class, optimized directly: for class c
with errors ``m_i = |[y_i = c] - p_i(c)|`` over the labelled outputs i, it is the Lovász
extension of the Jaccard loss ``Delta(M) = |M| / |G_c ∪ M|`` (``G_c`` the outputs of class
c, ``M`` a set of wrong outputs) at ``m``: with the errors sorted in decreasing order,
``sum_k m_(k) * (Delta(first k) - Delta(first k - 1))``. The loss averages the classes
present in the labels. Point clouds and semantic segmentation (Volt, PTv3, Cylinder3D)
add it to cross-entropy.

The soft Dice loss (V-Net; MONAI's ``DiceLoss(softmax=True)``, which SegFormer3D and most
medical segmentation models add to cross-entropy) is one minus the mean, over samples
and classes, of ``(2 sum p g + eps) / (sum p + sum g + eps)`` with ``p`` the softmax
probability and ``g`` the one-hot label of the class over the sample's labelled
outputs, ``eps = 1e-5``: a class of few voxels weighs as much as the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tasks.points import IGNORE


def flat_outputs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, C, *spatial] (or [N, C]) and labels [B, *spatial] (or [N]) as [M, C] and
    [M] over the labelled outputs only."""
    if logits.dim() > 2:
        logits = logits.movedim(1, -1).reshape(-1, logits.shape[1])
        labels = labels.reshape(-1)
    keep = labels != IGNORE
    return logits[keep], labels[keep]


def lovasz_extension(errors: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The Lovász extension of class c's Jaccard loss at ``errors`` [n] (in [0, 1]), where
    ``truth`` [n] (bool) marks the outputs of class c: errors sorted in decreasing order,
    each times the Jaccard loss it adds (a scalar, differentiable in ``errors``)."""
    order = torch.argsort(errors, descending=True)
    sorted_truth = truth[order].to(errors.dtype)
    total = sorted_truth.sum()
    intersection = total - sorted_truth.cumsum(0)  # class-c outputs not among the first k
    union = total + (1 - sorted_truth).cumsum(0)  # ... and the others among the first k
    jaccard = 1 - intersection / union  # Delta(first k)
    increments = torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]))
    return (errors[order] * increments).sum()


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The Lovász-softmax loss of ``logits`` [B, C, *spatial] or [N, C] against ``labels``
    [B, *spatial] or [N] (``IGNORE`` = unlabelled), averaged over the classes present;
    0 (with a gradient) when nothing is labelled."""
    logits, labels = flat_outputs(logits, labels)
    if labels.numel() == 0:
        return logits.sum() * 0.0
    probs = (logits if logits.dtype == torch.float64 else logits.float()).softmax(1)
    losses = []
    for c in labels.unique().tolist():
        truth = labels == c
        losses.append(lovasz_extension((truth.to(probs.dtype) - probs[:, c]).abs(), truth))
    return torch.stack(losses).mean()


#: The smoothing of the soft Dice loss's numerator and denominator (MONAI's default).
DICE_EPS = 1e-5


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The soft Dice loss (see the module) of ``logits`` [B, C, *spatial] against labels
    [B, *spatial], per sample; [N, C] and [N] (points) count as one sample. Outputs
    labelled ``IGNORE`` do not count."""
    if logits.dim() == 2:
        logits, labels = logits.T[None], labels[None]
    probs = (logits if logits.dtype == torch.float64 else logits.float()).softmax(1)
    probs = probs.flatten(2)  # [B, C, M]
    labels = labels.reshape(labels.shape[0], -1)
    keep = (labels != IGNORE).to(probs.dtype)[:, None]
    truth = F.one_hot(labels.clamp_min(0), probs.shape[1]).movedim(-1, 1).to(probs.dtype) * keep
    probs = probs * keep
    overlap = (probs * truth).sum(-1)
    dice = (2 * overlap + DICE_EPS) / (probs.sum(-1) + truth.sum(-1) + DICE_EPS)
    return 1 - dice.mean()


def supervised_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    lovasz: bool = False,
    dice: bool = False,
) -> torch.Tensor:
    """Cross-entropy over the labelled outputs (with ``label_smoothing``: the target puts
    ``1 - s + s / C`` on the label and ``s / C`` on every class), plus the Lovász-softmax
    loss if ``lovasz`` (Volt's supervised term), plus the soft Dice loss if ``dice``
    (SegFormer3D's, MONAI's DiceCE)."""
    wide = logits if logits.dtype == torch.float64 else logits.float()  # bf16 under autocast
    loss = F.cross_entropy(wide, labels, ignore_index=IGNORE, label_smoothing=label_smoothing)
    if lovasz:
        loss = loss + lovasz_softmax(logits, labels)
    if dice:
        loss = loss + soft_dice_loss(logits, labels)
    return loss
