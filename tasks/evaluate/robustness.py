"""Robustness to wrong audio: a checkpoint scored on a split with the audio it came with, with
silence, and with another clip's audio (none of the AVS papers measures this).

- true: the clips as they are (the AVSBench report's numbers);
- silent: every clip's log-mel replaced by that of silence (:func:`tasks.decode.logmel.silence`).
  Nothing sounds, so a model that listens marks nothing; ``silent_false_positive_rate`` is the
  share of frames where it still marks a pixel (every frame of the split counts, annotated or not);
- swapped: every clip gets the audio of another clip of the split (the next clip in loader order;
  the first clip of a batch takes the last clip of the batch before, so a batch of one still
  swaps). mIoU is scored against the clip's own ground truth: a model that listens loses, one
  that reads the frames alone does not.

A pixel is marked when its logit is above 0 (binary: probability 0.5, as the AVSBench metric
thresholds) or when its class is not background (semantic).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from infra.storage import Storage, join
from tasks.decode.logmel import silence
from tasks.evaluate.report import evaluate_checkpoint

log = logging.getLogger(__name__)

CONDITIONS = ("true", "silent", "swapped")


def marked(pred: torch.Tensor) -> torch.Tensor:
    """bool [B, T]: frames where the prediction marks at least one pixel."""
    if pred.dim() == 4:  # binary logits [B, T, H, W]
        return (pred > 0).flatten(2).any(-1)
    return (pred.argmax(2) != 0).flatten(2).any(-1)  # semantic scores [B, T, C + 1, H, W]


def silence_batch(batch: dict[str, Any]) -> dict[str, Any]:
    logmel = batch["logmel"]
    quiet = torch.from_numpy(silence(logmel.shape[1])).to(logmel.device, logmel.dtype)
    return {**batch, "logmel": quiet.expand_as(logmel).clone()}


@dataclass
class Swapper:
    """Gives each clip of a batch the audio of the clip before it in loader order (see the module
    docstring); the split's first clip takes the last clip's audio of its first batch."""

    previous: torch.Tensor | None = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        logmel = batch["logmel"]
        before = self.previous if self.previous is not None else logmel[-1:]
        if before.shape[1:] != logmel.shape[1:]:
            before = logmel[-1:]
        swapped = torch.cat([before.to(logmel.device), logmel[:-1]], dim=0)
        self.previous = logmel[-1:].clone()
        return {**batch, "logmel": swapped}


@dataclass
class MarkCounter:
    frames: int = 0
    marked: int = 0

    def __call__(self, clip_ids: list[str], pred: torch.Tensor) -> None:
        m = marked(pred)
        self.frames += m.numel()
        self.marked += int(m.sum())

    @property
    def rate(self) -> float:
        return self.marked / self.frames if self.frames else float("nan")


def measure_robustness(checkpoint_uri: str, dataset_url: str, storage: Storage, out_dir: str, split: str = "test",
                       device: str = "cpu", batch_size: int = 4, progress: bool = True) -> dict[str, Any]:
    """Score the checkpoint under each condition; each report goes to ``{out_dir}/{condition}/``.

    Returns ``{"true_audio_miou", "swapped_audio_miou", "silent_audio_miou", "silent_false_positive_rate",
    "true_audio_marked_rate", "swapped_audio_marked_rate", "fscore": {condition: F}, "frames"}``."""
    changes = {"true": None, "silent": silence_batch, "swapped": Swapper()}
    scores, counts = {}, {}
    for condition in CONDITIONS:
        counts[condition] = MarkCounter()
        report = evaluate_checkpoint(checkpoint_uri, dataset_url, storage, join(out_dir, condition), split=split,
                                     device=device, batch_size=batch_size, num_overlays=2, progress=progress,
                                     on_predictions=counts[condition], change_batch=changes[condition])
        scores[condition] = report
        log.info("%s audio: mIoU %.4f, F %.4f, frames with marked pixels %.3f", condition, report["miou"],
                 report["fscore"], counts[condition].rate)
    return {
        "true_audio_miou": scores["true"]["miou"],
        "swapped_audio_miou": scores["swapped"]["miou"],
        "silent_audio_miou": scores["silent"]["miou"],
        "silent_false_positive_rate": counts["silent"].rate,
        "true_audio_marked_rate": counts["true"].rate,
        "swapped_audio_marked_rate": counts["swapped"].rate,
        "fscore": {c: scores[c]["fscore"] for c in CONDITIONS},
        "frames": counts["silent"].frames,
    }
