"""Siam-Encoder (COMBO): a second backbone of the same type encodes the Maskige, and each
of its stage maps, re-weighted per channel by a squeeze-excitation gate, is added to the
frame's stage map:

    feat_i = frame_feat_i + SE_i(maskige_feat_i) * maskige_feat_i

The two backbones run side by side (the Maskige map is added after each stage, not fed
into the frame backbone's next stage), as in COMBO's released code (``MaskFormer.forward``,
``channel_weighted_block``; the Maskige normalised with the frames' ImageNet mean and std).

Where ours differs: the SE bottleneck has ``max(dim // 16, 4)`` units (COMBO: ``dim / 16``),
so that tiny widths keep a usable gate; at COMBO's widths (256..2048) the two agree.
"""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import Backbone


class SqueezeExcitation(nn.Module):
    """Channel gate: global average pool -> FC(dim / reduction) -> ReLU -> FC(dim) -> sigmoid.

    ``forward(x: N x C x H x W) -> N x C x 1 x 1`` in (0, 1).
    """

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        # at least 4 units: tiny widths would otherwise get a 1-2 unit bottleneck that dies easily
        hidden = max(dim // reduction, 4)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3))
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))
        return w[:, :, None, None]


class SiamEncoder(nn.Module):
    """Frame backbone plus (optionally) a Maskige backbone of the same type.

    Args:
        backbone: encodes the frames.
        maskige_backbone: encodes the Maskige; ``None`` turns the Siam branch off (the
            ``use_maskige=False`` ablation: the encoder is then the frame backbone alone).
        reduction: squeeze-excitation bottleneck ratio (COMBO: 16).

    ``forward(frames: N x 3 x H x W, maskige: N x 3 x H x W | None)`` -> list of 4 maps
    at strides 4, 8, 16, 32 with ``channels`` channels.
    """

    def __init__(self, backbone: Backbone, maskige_backbone: Backbone | None = None, reduction: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels = list(backbone.channels)
        self.maskige_backbone = maskige_backbone
        if maskige_backbone is not None:
            if list(maskige_backbone.channels) != self.channels:
                raise ValueError(
                    f"Maskige backbone channels {maskige_backbone.channels} differ from the frame backbone's "
                    f"{self.channels}; the Siam-Encoder needs two backbones of the same type"
                )
            self.se_blocks = nn.ModuleList([SqueezeExcitation(c, reduction) for c in self.channels])
        else:
            self.se_blocks = None

    @property
    def use_maskige(self) -> bool:
        return self.maskige_backbone is not None

    def forward(self, frames: torch.Tensor, maskige: torch.Tensor | None = None) -> list[torch.Tensor]:
        feats = self.backbone(frames)
        if self.maskige_backbone is None:
            return feats
        if maskige is None:
            raise ValueError("this Siam-Encoder was built with a Maskige branch: pass maskige (N x 3 x H x W)")
        if maskige.shape != frames.shape:
            raise ValueError(f"maskige shape {tuple(maskige.shape)} must equal frames shape {tuple(frames.shape)}")
        pre = self.maskige_backbone(maskige)
        return [f + se(p) * p for f, p, se in zip(feats, pre, self.se_blocks)]
