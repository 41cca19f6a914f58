"""Shared plumbing of the models that predict one logit map per class (TPAVI, AVSAC).

Frames come in [0, 1] and are ImageNet-normalised inside; ``num_classes`` counts foreground
classes; the output has 1 channel (binary foreground logit, S4 / MS3) or C + 1 (AVSS, channel 0
the background, learned as a class); ``loss`` takes the per-frame set targets of
``models.losses.targets_from_masks``; ``segment`` gives what ``models.metrics`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder
from models.backbones import IMAGENET_MEAN, IMAGENET_STD


class PixelMaskModel(nn.Module):
    """Shared plumbing of models that predict one logit map per class (TPAVI, AVSAC).

    Args:
        num_classes: foreground classes C; the model outputs ``out_channels`` maps: 1 (binary
            foreground logit, S4 / MS3) when C = 1, else C + 1 (AVSS, channel 0 the background,
            learned as a class, channel k = class id k), the ids of ``targets_from_masks``.
        pixel_mean, pixel_std: normalisation of frames given in [0, 1].
        channels_last: convert images to ``torch.channels_last`` before the backbone.
    """

    def __init__(
        self,
        num_classes: int,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.out_channels = 1 if num_classes == 1 else num_classes + 1
        self.channels_last = channels_last
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def use_audio(self) -> bool:
        """Subclasses set self.audio_encoder = None when built without audio."""
        return self.audio_encoder is not None

    def check_inputs(self, frames: torch.Tensor, logmel: torch.Tensor | None, need_audio: bool) -> tuple[int, int]:
        """Validate ``frames: B x T x 3 x H x W`` and ``logmel: B x T x 96 x 64``; return (B, T)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be B x T x 3 x H x W, got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        if need_audio:
            if logmel is None:
                raise ValueError("logmel is required when the model uses audio")
            if logmel.dim() != 4 or tuple(logmel.shape[:2]) != (b, t):
                raise ValueError(f"logmel must be B x T x 96 x 64 with B={b}, T={t}, got {tuple(logmel.shape)}")
        return b, t

    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """``B x T x 3 x H x W`` in [0, 1] -> normalised ``(B*T) x 3 x H x W``."""
        x = (frames.flatten(0, 1) - self.pixel_mean) / self.pixel_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def encode_audio(self, audio_encoder: VGGishEncoder, logmel: torch.Tensor) -> torch.Tensor:
        """``logmel: B x T x 96 x 64`` -> ``B x T x 128`` (no graph through a frozen encoder)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not audio_encoder.frozen):
            return audio_encoder.forward_clip(logmel)

    @torch.no_grad()
    def segment(self, outputs: dict, out_size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel prediction at ``out_size``, the same contract as ``COMBO.segment``.

        Binary: foreground logits ``N x H x W``; semantic: class probabilities
        ``N x (C + 1) x H x W``, channel 0 background (``argmax`` gives the class-id map).
        """
        masks = outputs["masks"].float()
        if tuple(masks.shape[-2:]) != tuple(out_size):
            masks = F.interpolate(masks, size=tuple(out_size), mode="bilinear", align_corners=False)
        return masks[:, 0] if self.out_channels == 1 else masks.softmax(1)
