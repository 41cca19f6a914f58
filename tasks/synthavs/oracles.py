"""Oracles of a SynthAVS test set: what simple rules that know the scene would score.

A model's mIoU means little on its own: on a set where most pixels are background, predicting
nothing already scores well on silent frames, and where silent objects look like the sounding
one, even a model that knows every object's category is capped. SynthAVS knows every object
exactly, so the benchmark prints, beside the models, the AVSBench metric of these predictions
(each a binary mask per frame, scored as a model's logits would be):

- ``perfect``: the ground truth itself (1.0 by construction; a check of the scoring path).
- ``nothing``: no pixel. Frames with empty ground truth score 1 (AVSBench's rule), others 0.
- ``every_object``: every visible object pixel (instance map > 0; the occluder bar and the
  background are not objects). What a saliency model without audio would give at best.
- ``sounding_categories``: in each second, every visible object of a category that sounds in
  that second (sources and their silent twins alike); nothing where nothing on screen sounds.
  What a model that reads each frame alone but knows, from the audio, exactly which categories
  sound would give at best: only synchrony over time tells a twin from its source.

Binary settings only (S4, MS3): the oracles are class-agnostic.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from models.metrics import BinaryAVSMetric

ORACLES = ("perfect", "nothing", "every_object", "sounding_categories")
_LOGIT = 20.0  # a binary mask as logits: sigmoid(+-20) is 1 or 0 at every F-score threshold but the last


def oracle_masks(id_maps: np.ndarray, objects: list[dict], ground_truth: np.ndarray) -> dict[str, np.ndarray]:
    """Each oracle's bool [T, H, W] prediction for one clip.

    id_maps: int [T, H, W] instance map (0 background, k + 1 object k, -1 occluder);
    objects: the clip's ``meta["objects"]`` (``id``, ``category_id``, ``sounding`` per second);
    ground_truth: [T, H, W] masks of the clip (> 0 = sounding pixel).
    """
    id_maps = np.asarray(id_maps)
    t_count = id_maps.shape[0]
    if ground_truth.shape != id_maps.shape:
        raise ValueError(f"ground truth shape {ground_truth.shape} differs from the instance maps' {id_maps.shape}")
    for o in objects:
        if len(o["sounding"]) != t_count:
            raise ValueError(f"object {o['id']} has {len(o['sounding'])} seconds of 'sounding', the clip {t_count}")
    sounding_cats = np.zeros(id_maps.shape, dtype=bool)
    for t in range(t_count):
        cats = {o["category_id"] for o in objects if o["sounding"][t]}
        ids = [o["id"] for o in objects if o["category_id"] in cats]
        sounding_cats[t] = np.isin(id_maps[t], ids)
    return {
        "perfect": np.asarray(ground_truth) > 0,
        "nothing": np.zeros(id_maps.shape, dtype=bool),
        "every_object": id_maps > 0,
        "sounding_categories": sounding_cats,
    }


def mask_logits(mask: np.ndarray) -> torch.Tensor:
    """A bool mask as the logits a model would give for it."""
    return torch.where(torch.as_tensor(np.asarray(mask, dtype=bool)), _LOGIT, -_LOGIT).float()


class OracleScores:
    """AVSBench metric of every oracle over a set of clips, with per-clip scores for pairing.

    ``add(clip_id, id_maps, objects, ground_truth, gt_frames)`` scores one clip on its annotated
    frames; ``totals()`` -> {oracle: {"miou", "fscore"}} (AVSBench protocol, per video then
    mean); ``per_clip[oracle][clip_id]`` -> {"miou", "fscore"}.
    """

    def __init__(self) -> None:
        self.metrics = {name: BinaryAVSMetric() for name in ORACLES}
        self.per_clip: dict[str, dict[str, dict[str, float]]] = {name: {} for name in ORACLES}

    def add(self, clip_id: str, id_maps: np.ndarray, objects: list[dict], ground_truth: np.ndarray,
            gt_frames: Iterable[bool] | None = None) -> None:
        masks = oracle_masks(id_maps, objects, ground_truth)
        keep = np.ones(len(id_maps), bool) if gt_frames is None else np.asarray(list(gt_frames), bool)
        if not keep.any():
            return
        gt = torch.as_tensor(np.asarray(ground_truth)[keep] > 0)
        for name, mask in masks.items():
            logits = mask_logits(mask[keep])
            self.metrics[name].update(logits, gt)
            alone = BinaryAVSMetric()
            alone.update(logits, gt)
            s = alone.compute()
            self.per_clip[name][clip_id] = {"miou": float(s["miou"]), "fscore": float(s["fscore"])}

    def totals(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, metric in self.metrics.items():
            if int(metric.num_videos) == 0:
                raise RuntimeError("no clip was scored: OracleScores.add was never given an annotated frame")
            s = metric.compute()
            out[name] = {"miou": float(s["miou"]), "fscore": float(s["fscore"])}
        return out
