"""Per-pixel segmentation losses of the models that predict one logit map per class (TPAVI,
AVSAC), and the bridge from the per-frame set targets every model is given to class-id maps.

Channel convention (``models.pixel_mask_model.PixelMaskModel``): one channel, the foreground
logit (S4 / MS3: sigmoid + BCE, as AVSBench trains TPAVI), or C + 1 channels with channel k the
class id k and channel 0 the background, learned as a class (AVSS: softmax + cross-entropy over
71 channels, as AVSBench trains TPAVI on AVSS).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def class_map_from_targets(
    targets: Sequence[dict | None], size: tuple[int, int], device: torch.device, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame set targets (``models.losses.targets_from_masks``) -> class-id maps.

    targets: N entries ``{"labels": n class ids (0 = background), "masks": n x H x W bool}`` or
    None (frame without ground truth). Returns ``(ids: N x H x W long, has_gt: N bool)``; pixels
    no instance covers (the ignored ones) get ``ignore_index``, as do frames without ground truth.
    """
    ids = torch.full((len(targets), *size), ignore_index, dtype=torch.long, device=device)
    has_gt = torch.zeros(len(targets), dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        if target is None:
            continue
        has_gt[i] = True
        masks = target["masks"].to(device)
        if masks.numel() and tuple(masks.shape[-2:]) != tuple(size):
            raise ValueError(f"target {i} masks are {tuple(masks.shape[-2:])}, expected {tuple(size)}")
        for label, mask in zip(target["labels"].tolist(), masks):
            ids[i][mask.bool()] = int(label)
    return ids, has_gt


def segmentation_loss(
    logits: torch.Tensor,
    gt: torch.Tensor,
    gt_frames: torch.Tensor | None = None,
    ignore_index: int = 255,
    dice_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Per-pixel loss of mask logits on the annotated frames.

    logits: N x K x h x w, N = B*T (K = 1: binary cross-entropy on the foreground logit;
    K > 1: cross-entropy over channels, channel k = class id k, 0 = background);
    gt: N x H x W or B x T x H x W, 0/1 (K = 1) or class ids (K > 1), ``ignore_index`` pixels
    skipped; gt_frames: N (or B x T) bool, frames that carry ground truth (default: all).
    Logits are resized bilinearly to H x W when they differ. BCE/CE are means over the counted
    pixels; ``dice_weight > 0`` adds a soft dice (binary: foreground; semantic: mean over the
    classes present) per frame, averaged over frames.
    Returns ``{"loss_mask": ..., "loss_dice": ...}`` (dice only when weighted).
    """
    if gt.dim() == 4:
        gt = gt.flatten(0, 1)
    if gt.dim() != 3:
        raise ValueError(f"gt must be N x H x W or B x T x H x W, got {tuple(gt.shape)}")
    n = gt.shape[0]
    if logits.dim() != 4 or logits.shape[0] != n:
        raise ValueError(f"logits must be N x K x h x w with N = {n} frames, got {tuple(logits.shape)}")
    if logits.shape[-2:] != gt.shape[-2:]:
        logits = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    if gt_frames is not None:
        keep = gt_frames.reshape(-1).bool()
        if keep.numel() != n:
            raise ValueError(f"gt_frames must flag {n} frames, got {tuple(gt_frames.shape)}")
        if not bool(keep.any()):
            zero = logits.sum() * 0.0  # no annotated frame in the batch: zero loss, graph kept
            return {"loss_mask": zero, **({"loss_dice": zero} if dice_weight else {})}
        logits, gt = logits[keep], gt[keep]
    gt = gt.to(logits.device)
    losses = {}
    if logits.shape[1] == 1:
        valid = gt != ignore_index
        target = (gt == 1).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        losses["loss_mask"] = (bce * valid).sum() / valid.sum().clamp(min=1)
        if dice_weight:
            prob = logits[:, 0].sigmoid() * valid
            inter = (prob * target).flatten(1).sum(1)
            denom = prob.flatten(1).sum(1) + (target * valid).flatten(1).sum(1)
            losses["loss_dice"] = (1 - (2 * inter + 1) / (denom + 1)).mean()
    else:
        k = logits.shape[1]
        valid = gt != ignore_index
        if bool(((gt[valid] < 0) | (gt[valid] >= k)).any()):
            raise ValueError(f"gt holds class ids outside [0, {k}) that are not ignore_index={ignore_index}")
        losses["loss_mask"] = F.cross_entropy(logits, gt.long(), ignore_index=ignore_index)
        if dice_weight:
            prob = logits.softmax(1) * valid[:, None]
            onehot = F.one_hot(torch.where(valid, gt.long(), 0), k).permute(0, 3, 1, 2) * valid[:, None]
            inter = (prob * onehot).flatten(2).sum(2)
            denom = prob.flatten(2).sum(2) + onehot.flatten(2).sum(2)
            present = onehot.flatten(2).sum(2) > 0
            dice = 1 - (2 * inter + 1) / (denom + 1)
            losses["loss_dice"] = ((dice * present).sum(1) / present.sum(1).clamp(min=1)).mean()
    return losses
