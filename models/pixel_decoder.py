"""FPN pixel decoder: four backbone maps -> stride-4 mask features + three decoder scales.

COMBO (like Mask2Former) uses a multi-scale deformable-attention pixel decoder, whose
sampling op is a custom CUDA kernel. A plain FPN runs anywhere (CPU tests, any GPU, no
compilation) and is the pixel decoder Mask2Former itself offers as the portable baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(dim: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups when ``dim`` allows it (Mask2Former's choice), fewer otherwise."""
    for groups in (32, 16, 8, 4, 2, 1):
        if dim % groups == 0:
            return nn.GroupNorm(groups, dim)
    raise AssertionError("unreachable")


def conv_norm_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        group_norm(c_out),
        nn.ReLU(inplace=True),
    )


class FPNPixelDecoder(nn.Module):
    """Top-down FPN with lateral 1x1 convs and 3x3 output convs.

    Args:
        in_channels: channels of the stride 4, 8, 16, 32 backbone maps.
        hidden_dim: channels of every output (decoder scales and mask features).
        mask_dim: channels of the mask features (default ``hidden_dim``).

    ``forward(feats)`` with ``feats = [N x c0 x H/4 x W/4, ..., N x c3 x H/32 x W/32]`` returns
    ``(multi_scale, mask_features)``: ``multi_scale`` = [stride 32, stride 16, stride 8] maps,
    each ``N x hidden_dim x h x w`` (coarse to fine, the order the decoder cycles through),
    and ``mask_features``: ``N x mask_dim x H/4 x W/4``.
    """

    def __init__(self, in_channels: Sequence[int], hidden_dim: int, mask_dim: int | None = None) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"FPN pixel decoder needs 4 input channel counts, got {in_channels}")
        mask_dim = mask_dim or hidden_dim
        # index 0..3 = stride 4..32
        self.lateral = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), group_norm(hidden_dim)) for c in in_channels]
        )
        self.output = nn.ModuleList([conv_norm_relu(hidden_dim, hidden_dim, 3) for _ in in_channels])
        self.mask_features = nn.Conv2d(hidden_dim, mask_dim, 3, padding=1)
        self.hidden_dim, self.mask_dim = hidden_dim, mask_dim

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        if len(feats) != 4:
            raise ValueError(f"FPN pixel decoder needs 4 feature maps, got {len(feats)}")
        outs: list[torch.Tensor] = [None] * 4  # type: ignore[list-item]
        y = None
        for i in (3, 2, 1, 0):
            lat = self.lateral[i](feats[i])
            if y is not None:
                lat = lat + F.interpolate(y, size=lat.shape[-2:], mode="nearest")
            y = self.output[i](lat)
            outs[i] = y
        return [outs[3], outs[2], outs[1]], self.mask_features(outs[0])
