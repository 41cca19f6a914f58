"""A reference learner for the quality benchmark: a small U-Net whose decoder is modulated by the
audio (FiLM), trained from scratch with the per-pixel BCE of AVSBench's S4 recipe.

Not a method of the project and not in the model registry: ``bench/quality_gpu.py`` trains it
beside the COMBO family (``--plan s4:reference_unet``) to separate two explanations of a weak
score on SynthAVS, that the data cannot be learned in the benchmark's steps, and that a model
family learns it slowly from scratch. An early calibration outside the project reported such a network at 0.98 mIoU on the
``easy`` preset after 5 CPU minutes (the project's own reached 0.670 on easy S4 in 9 CPU minutes).

What it shares with TPAVI-tiny, so that only the image path differs: the tiny VGGish audio encoder
(``models.build.TINY_ENCODERS``, trained), the binary output and its loss (``tpavi_loss``: BCE on
the annotated frames) and ``PixelMaskModel``'s input checks and ``segment``. What it does not have:
Maskiges (ignored), temporal attention (each frame is read alone), queries and matching.

Image path: four stages of two 3x3 conv-BN-ReLU at strides 1, 2, 4, 8 (widths 16-128 as the
TinyCNN's), a decoder that upsamples, concatenates the skip and convolves back to stride 1; every
decoder stage and the bottleneck are scaled and shifted per channel by a linear map of the frame's
audio feature (``x * (1 + gamma(a)) + beta(a)``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import conv_bn_relu
from models.build import TINY_ENCODERS
from models.encoders import build_encoders
from models.pixel_mask_model import PixelMaskModel
from models.segmentation_loss import class_map_from_targets
from models.tpavi import tpavi_loss


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(c_in, c_out, 1), conv_bn_relu(c_out, c_out, 1))  # TinyCNN's unit, twice


class FiLM(nn.Module):
    """Per-channel scale and shift of a feature map from an audio vector; starts as the identity."""

    def __init__(self, audio_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(audio_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(audio).chunk(2, dim=-1)
        return x * (1 + gamma[..., None, None]) + beta[..., None, None]


class ReferenceUNet(PixelMaskModel):
    """``forward(frames: B x T x 3 x H x W in [0, 1], logmel: B x T x 96 x 64, maskige=None)`` ->
    ``{"masks": (B*T) x 1 x H x W}`` logits, as ``TPAVIModel``; H and W divisible by 8."""

    def __init__(self, use_audio: bool = True, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__(num_classes=1)
        _, self.audio_encoder = build_encoders(TINY_ENCODERS, use_audio, None, None, False)
        audio_dim = self.audio_encoder.out_dim if self.audio_encoder is not None else 0
        w = tuple(widths)
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip((3, *w[:-1]), w))
        self.up = nn.ModuleList(_block(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1))
        self.film = nn.ModuleList(FiLM(audio_dim, c) for c in w) if audio_dim else None
        self.head = nn.Conv2d(w[0], 1, 1)

    def _film(self, i: int, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        return x if self.film is None else self.film[i](x, audio)

    def forward(self, frames: torch.Tensor, logmel: torch.Tensor | None = None,
                maskige: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b, t = self.check_inputs(frames, logmel, self.use_audio)
        if frames.shape[-1] % 8 or frames.shape[-2] % 8:
            raise ValueError(f"frame height and width must be divisible by 8, got {tuple(frames.shape[-2:])}")
        audio = self.encode_audio(self.audio_encoder, logmel).flatten(0, 1) if self.use_audio else None
        x = self.images(frames)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self._film(len(self.down) - 1, skips.pop(), audio)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self._film(i, self.up[i](torch.cat([x, skips.pop()], dim=1)), audio)
        return {"masks": self.head(x)}

    def loss(self, outputs: dict, targets: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        """TPAVI's: BCE on the annotated frames (``targets_from_masks`` targets, None = no ground truth)."""
        ids, has_gt = class_map_from_targets(targets, outputs["masks"].shape[-2:], outputs["masks"].device)
        return tpavi_loss(outputs, ids, has_gt)
