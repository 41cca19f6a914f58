"""One batch of the shard loader -> model inputs, set targets, predictions, AVSBench scores.

Shared by training (the loss and the per-epoch validation) and evaluation, so both read a
batch, and score it, the same way. A batch is what :func:`tasks.shards.loader.make_loader`
yields (``frames`` B x T x 3 x S x S in [0, 1], ``maskige``, ``masks`` B x T x S x S class
ids, ``gt_frames`` B x T, ``logmel`` B x T x 96 x 64, ``has_maskige``, ``clip_id``). Frames
are handed to the models in clip-major order (frame t of clip b is row b*T + t), which is
the order every model of ``models/`` uses for its outputs.

Scoring follows the AVSBench protocol (:mod:`models.metrics`): each clip is one video, scored
on the frames that carry ground truth, at the resolution of its masks.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from models.losses import targets_from_masks
from models.metrics import BinaryAVSMetric, SemanticAVSMetric


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch's tensors on device (non-blocking from pinned memory); other entries as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
    """Keyword arguments of ``model(...)``: frames, logmel, and the Maskige when every clip has one."""
    has = batch.get("has_maskige")
    maskige = batch["maskige"] if has is not None and bool(torch.as_tensor(has).all()) else None
    return {"frames": batch["frames"], "logmel": batch["logmel"], "maskige": maskige}


def set_targets(batch: dict[str, Any], num_classes: int) -> list[dict | None]:
    """Per-frame set targets (clip-major) for ``model.loss``; None on frames without ground truth."""
    masks = batch["masks"].flatten(0, 1)
    has_gt = batch["gt_frames"].flatten()
    return targets_from_masks(masks, num_classes, has_gt=has_gt.tolist())


def new_metric(setting: str, num_classes: int, **kwargs: Any) -> BinaryAVSMetric | SemanticAVSMetric:
    """The AVSBench metric of a setting: binary for s4 / ms3, semantic (C + 1 classes) for avss."""
    if setting in ("s4", "ms3"):
        return BinaryAVSMetric(**kwargs)
    if setting == "avss":
        return SemanticAVSMetric(num_classes=num_classes + 1, **kwargs)
    raise ValueError(f"no AVSBench metric for setting {setting!r} (s4, ms3 or avss)")


@torch.no_grad()
def predict(model: torch.nn.Module, outputs: dict, batch: dict[str, Any]) -> torch.Tensor:
    """``model.segment`` at the masks' resolution: B x T x H x W logits (binary) or
    B x T x (C + 1) x H x W class scores (semantic)."""
    b, t = batch["masks"].shape[:2]
    size = tuple(batch["masks"].shape[-2:])
    bare = getattr(model, "module", model)
    pred = bare.segment(outputs, size)
    return pred.reshape(b, t, *pred.shape[1:])


def score_clips(metric: BinaryAVSMetric | SemanticAVSMetric, pred: torch.Tensor,
                batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Update metric with every clip of the batch (its annotated frames); returns per-clip
    rows {clip_id, frames, miou, fscore} scored by a metric of the same kind on that clip alone."""
    rows = []
    for i, clip_id in enumerate(batch["clip_id"]):
        gt = batch["gt_frames"][i]
        if not bool(gt.any()):
            continue
        logits, labels = pred[i][gt].float(), batch["masks"][i][gt]
        metric.update(logits, labels)
        # a metric of this clip alone, never synced: other ranks score other clips
        alone = type(metric)(**_same_kind(metric), sync_on_compute=False).to(logits.device)
        alone.update(logits, labels)
        scores = alone.compute()
        rows.append({"clip_id": clip_id, "frames": int(gt.sum()), "miou": float(scores["miou"]),
                     "fscore": float(scores["fscore"])})
    return rows


def _same_kind(metric: BinaryAVSMetric | SemanticAVSMetric) -> dict[str, Any]:
    if isinstance(metric, SemanticAVSMetric):
        return {"num_classes": metric.num_classes, "ignore_index": metric.ignore_index, "beta2": metric.beta2}
    return {"num_thresholds": int(metric.thresholds.numel()), "beta2": metric.beta2}


def label_map(pred: torch.Tensor, semantic: bool) -> torch.Tensor:
    """One frame's prediction as the metric reads it: class ids [H, W]."""
    if semantic:
        return pred.float().softmax(0).argmax(0)
    return (torch.sigmoid(pred.float()) > 0.5).long()


def to_model_size(inputs: dict[str, Any], size: int) -> dict[str, Any]:
    """Frames (bilinear) and Maskige (nearest: its colours are ids) resized to size x size."""
    out = dict(inputs)
    for name, mode in (("frames", "bilinear"), ("maskige", "nearest-exact")):
        x = inputs.get(name)
        if x is None or tuple(x.shape[-2:]) == (size, size):
            continue
        b, t = x.shape[:2]
        flat = x.flatten(0, 1)
        if mode == "bilinear":
            flat = F.interpolate(flat, size=(size, size), mode=mode, align_corners=False, antialias=True)
        else:
            flat = F.interpolate(flat, size=(size, size), mode=mode)
        out[name] = flat.reshape(b, t, *flat.shape[1:])
    return out
