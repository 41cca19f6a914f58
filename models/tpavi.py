"""TPAVI baseline: the AVSBench model (Zhou et al., ECCV 2022, "Audio-Visual Segmentation").

A visual backbone gives four maps (strides 4..32); each goes through a dilated-conv head to
``channel`` channels; a TPAVI block (temporal pixel-wise audio-visual interaction) mixes the
clip's audio into every stage; a DPT-style top-down fusion decoder (residual conv units,
x2 bilinear upsampling) brings stride 32 back to the input resolution.

TPAVI is a non-local block over all T*h*w positions of a clip in AVSBench's "dot" mode:
query = theta(visual), key = phi(audio of that position's frame), value = g(visual),
attention f = theta . phi / N without softmax (N = T*h*w), out = LayerNorm(x + BN(W_z(f g))),
with the BN weight and bias starting at 0 so the block starts as LayerNorm(x). Because the key
of a position depends only on its frame and the attention is linear, f @ g equals
theta @ (phi^T @ g) / N; we compute it that way, O(N * C^2) instead of the O(N^2) matrix
AVSBench builds, with the same result (a test checks it against the explicit matrix).

Classes, as AVSBench trains TPAVI: S4 / MS3 one foreground channel, sigmoid + binary
cross-entropy; AVSS C + 1 = 71 channels, softmax + cross-entropy, background learned as class 0
(``models.segmentation_loss``). Frames, targets and ``segment``: see
``models.pixel_mask_model.PixelMaskModel``.

Choices:
- The optional audio-visual matching (AVM) regulariser of AVSBench (KL between audio and
  masked visual features, MS3 only) is omitted; the loss is the segmentation loss alone.
- ``use_audio=False`` keeps the TPAVI blocks but lets the visual features be their own keys
  (AVSBench's visual-visual self-attention variant), so the ablation changes only the audio;
  no audio encoder is built then (no unused parameters for DDP).
- Outputs are always at the input resolution; ``tpavi_loss`` resizes logits bilinearly to the
  ground truth's size when the two differ.
- AVSS cross-entropy: AVSBench averages per frame, then over annotated frames; ours averages
  over every counted pixel of the annotated frames (the same when frames are of one size and
  no pixel is ignored), and skips ``ignore_index`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder
from models.pixel_mask_model import PixelMaskModel
from models.segmentation_loss import class_map_from_targets, segmentation_loss

class TPAVIBlock(nn.Module):
    """Temporal pixel-wise audio-visual interaction (AVSBench TPAVI, "dot" mode).

    Args:
        channels: C, channels of the visual map.
        audio_dim: size of the audio embedding (128 for VGGish); 0 for visual-only keys.
        inter_channels: width inside the block (AVSBench: C // 2).

    ``forward(x: B x T x C x h x w, audio: B x T x audio_dim or None) -> B x T x C x h x w``.
    """

    def __init__(self, channels: int, audio_dim: int = 128, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.audio_dim = audio_dim
        # 1x1x1 convs of AVSBench == per-position linear maps over channels.
        self.align = nn.Linear(audio_dim, channels) if audio_dim else None
        self.theta = nn.Linear(channels, inter)
        self.phi = nn.Linear(channels, inter)
        self.g = nn.Linear(channels, inter)
        self.w_z = nn.Linear(inter, channels)
        self.w_z_norm = nn.BatchNorm1d(channels)
        nn.init.zeros_(self.w_z_norm.weight)  # the block starts as the identity (+ LayerNorm)
        nn.init.zeros_(self.w_z_norm.bias)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c, h, w = x.shape
        n = t * h * w
        xl = x.permute(0, 1, 3, 4, 2).reshape(b, n, c)  # B x N x C, positions ordered (t, h, w)
        query = self.theta(xl)  # B x N x I
        value = self.g(xl)  # B x N x I
        if self.align is not None:
            if audio is None or audio.shape != (b, t, self.audio_dim):
                got = None if audio is None else tuple(audio.shape)
                raise ValueError(f"TPAVI audio must be B x T x {self.audio_dim} = {(b, t, self.audio_dim)}, got {got}")
            key = self.phi(self.align(audio))  # B x T x I: one key per frame, shared by its h*w positions
            frame_value = value.reshape(b, t, h * w, -1).sum(2)  # B x T x I
            kv = torch.einsum("bti,btj->bij", key, frame_value)
        else:
            kv = torch.einsum("bni,bnj->bij", self.phi(xl), value)
        y = torch.bmm(query, kv) / n  # == (theta phi^T / N) g
        z = self.w_z_norm(self.w_z(y).reshape(b * n, c)).reshape(b, n, c)
        out = self.norm(xl + z)
        return out.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3)


class DilatedHead(nn.Module):
    """AVSBench's per-stage head: sum of 3x3 convs with dilations (3, 6, 12, 18)."""

    def __init__(self, c_in: int, c_out: int, dilations: Sequence[int] = (3, 6, 12, 18)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=d, dilation=d) for d in dilations)
        for conv in self.convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class ResidualConvUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Top-down step: (coarse [+ refined skip]) -> residual unit -> x2 bilinear upsampling."""

    def __init__(self, channels: int, with_skip: bool = True) -> None:
        super().__init__()
        # the top block has no skip input: no unit for it (an unused parameter would trip DDP)
        self.skip_unit = ResidualConvUnit(channels) if with_skip else None
        self.out_unit = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if (skip is None) != (self.skip_unit is None):
            raise ValueError("a fusion block takes a skip input exactly when it was built with one")
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = self.out_unit(x)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class TPAVIModel(PixelMaskModel):
    """AVSBench model: backbone -> dilated heads -> TPAVI per stage -> fusion decoder -> mask.

    Args:
        backbone: a ``models.backbones.Backbone`` (four maps, strides 4..32).
        audio_encoder: VGGish (``forward_clip``: B x T x 96 x 64 -> B x T x 128), or None for
            the visual-only ablation (``logmel`` is then ignored).
        channel: decoder width (AVSBench: 256).
        num_classes: foreground classes C (1 for S4 / MS3); see ``PixelMaskModel``.
        tpavi_stages: which of the four stages get a TPAVI block (AVSBench: all four).
        channels_last: see ``PixelMaskModel``.

    ``forward(frames: B x T x 3 x H x W in [0, 1], logmel: B x T x 96 x 64, maskige=None)`` ->
    ``{"masks": (B*T) x out_channels x H x W}`` logits, frame t of clip b at row b*T + t
    (``maskige`` is accepted for a uniform interface and ignored).
    """

    def __init__(
        self,
        backbone: nn.Module,
        audio_encoder: VGGishEncoder | None,
        channel: int = 256,
        num_classes: int = 1,
        tpavi_stages: Sequence[int] = (0, 1, 2, 3),
        channels_last: bool = False,
    ) -> None:
        super().__init__(num_classes, channels_last=channels_last)
        if not set(tpavi_stages) <= {0, 1, 2, 3}:
            raise ValueError(f"tpavi_stages must be within 0..3, got {tuple(tpavi_stages)}")
        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.tpavi_stages = tuple(sorted(set(tpavi_stages)))
        audio_dim = audio_encoder.out_dim if audio_encoder is not None else 0
        self.heads = nn.ModuleList(DilatedHead(c, channel) for c in backbone.channels)
        self.tpavi = nn.ModuleDict({str(i): TPAVIBlock(channel, audio_dim) for i in self.tpavi_stages})
        self.fusion = nn.ModuleList(FusionBlock(channel, with_skip=i < 3) for i in range(4))
        self.output_conv = nn.Sequential(
            nn.Conv2d(channel, channel // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channel // 2, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, self.out_channels, 1),
        )

    def forward(
        self, frames: torch.Tensor, logmel: torch.Tensor | None = None, maskige: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        b, t = self.check_inputs(frames, logmel, self.use_audio)
        h, w = frames.shape[-2:]
        audio = self.encode_audio(self.audio_encoder, logmel) if self.use_audio else None
        feats = self.backbone(self.images(frames))
        stages = []
        for i, (head, feat) in enumerate(zip(self.heads, feats)):
            x = head(feat)
            if str(i) in self.tpavi:
                x = self.tpavi[str(i)](x.reshape(b, t, *x.shape[1:]), audio).flatten(0, 1)
            stages.append(x)
        y = self.fusion[3](stages[3])
        for i in (2, 1, 0):
            y = self.fusion[i](y, stages[i])
        masks = self.output_conv(y)
        if masks.shape[-2:] != (h, w):
            masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
        return {"masks": masks}

    def loss(self, outputs: dict, targets: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        """``tpavi_loss`` from per-frame set targets (``models.losses.targets_from_masks``,
        None = no ground truth), the same call as ``COMBO.loss``."""
        ids, has_gt = class_map_from_targets(targets, outputs["masks"].shape[-2:], outputs["masks"].device)
        return tpavi_loss(outputs, ids, has_gt)


def tpavi_loss(
    outputs: dict[str, torch.Tensor],
    gt: torch.Tensor,
    gt_frames: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> dict[str, torch.Tensor]:
    """AVSBench training loss: BCE (binary) or CE (semantic) on the annotated frames.

    outputs: ``TPAVIModel`` output; gt: B x T x H x W (or N x H x W) 0/1 or class ids;
    gt_frames: B x T (or N) bool, or None for all. Returns ``{"loss": total, "loss_mask": ...}``.
    """
    losses = segmentation_loss(outputs["masks"], gt, gt_frames, ignore_index)
    return {"loss": losses["loss_mask"], **{k: v.detach() for k, v in losses.items()}}
