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

Conventions shared with COMBO (``PixelMaskModel`` here, reused by ``models.avsac``): frames
come in [0, 1] and are ImageNet-normalised inside; ``num_classes`` counts foreground classes, the
output has 1 channel (binary foreground logit) or C + 1 (AVSS, background first); ``loss`` takes
the per-frame set targets of ``models.losses.targets_from_masks``; ``segment`` gives what the
metrics take.

Choices:
- The optional audio-visual matching (AVM) regulariser of AVSBench (KL between audio and
  masked visual features, MS3 only) is omitted; the loss is the segmentation loss alone.
- ``use_audio=False`` keeps the TPAVI blocks but lets the visual features be their own keys
  (AVSBench's visual-visual self-attention variant), so the ablation changes only the audio;
  no audio encoder is built then (no unused parameters for DDP).
- Outputs are always at the input resolution; ``tpavi_loss`` resizes logits bilinearly to the
  ground truth's size when the two differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder, load_vggish_weights
from models.backbones import build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSize:
    """Encoder sizes shared by the TPAVI and AVSAC builders."""

    backbone: str
    backbone_kwargs: tuple = ()
    vggish_widths: tuple[int, ...] = (64, 128, 256, 512)
    vggish_fc_dims: tuple[int, ...] = (4096, 4096)
    freeze_audio: bool = True  # default: pretrained VGGish stays fixed, as in AVSBench and COMBO
    channel: int = 256  # TPAVI decoder width


# The same encoders as COMBO's builders (models/build.py) at each size.
ENCODER_SIZES = {
    "tiny": EncoderSize("tiny", (("channels", (16, 32, 64, 128)),), (8, 16, 32, 32), (128, 128), False, 64),
    "r50": EncoderSize("resnet50"),
    "pvt_b5": EncoderSize("pvt_v2_b5"),
}


def build_encoders(
    size: str,
    use_audio: bool = True,
    backbone_weights: str | os.PathLike | None = None,
    vggish_weights: str | os.PathLike | None = None,
    freeze_audio: bool | None = None,
) -> tuple[nn.Module, VGGishEncoder | None, EncoderSize]:
    """Visual backbone and (if ``use_audio``) VGGish encoder of a named size.

    Weight files are local paths (resolve s3:// first); ``freeze_audio=None`` takes the size's
    default (frozen for r50 / pvt_b5, trained for tiny, which has no pretrained weights).
    """
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {sorted(ENCODER_SIZES)}")
    spec = ENCODER_SIZES[size]
    kwargs = dict(spec.backbone_kwargs)
    if backbone_weights is not None:
        if spec.backbone == "tiny":
            raise ValueError("backbone_weights are not supported for the tiny backbone")
        kwargs["pretrained_path"] = backbone_weights
    backbone = build_backbone(spec.backbone, **kwargs)
    audio = None
    if use_audio:
        audio = VGGishEncoder(widths=spec.vggish_widths, fc_dims=spec.vggish_fc_dims, out_dim=128)
        if vggish_weights is not None:
            load_vggish_weights(audio, vggish_weights)
        if spec.freeze_audio if freeze_audio is None else freeze_audio:
            audio.freeze()
    elif vggish_weights is not None:
        raise ValueError("vggish_weights given but use_audio=False builds no audio encoder")
    return backbone, audio, spec


# Switches of the shared model config that only concern COMBO; the other builders accept them.
COMBO_ONLY_ARGS = frozenset({"use_maskige", "fusion"})


def reject_unknown_args(builder: str, ignored: dict) -> None:
    unknown = set(ignored) - COMBO_ONLY_ARGS
    if unknown:
        raise TypeError(f"{builder} got unexpected arguments: {sorted(unknown)}")


def class_map_from_targets(
    targets: Sequence[dict | None], size: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame set targets (``models.losses.targets_from_masks``) -> class-id maps.

    targets: N entries ``{"labels": n, "masks": n x H x W bool}`` or None (frame without ground
    truth). Returns ``(ids: N x H x W long, 0 = background, label k -> id k + 1; has_gt: N bool)``.
    Pixels the set targets left out (ignored ones included) become background.
    """
    ids = torch.zeros(len(targets), *size, dtype=torch.long, device=device)
    has_gt = torch.zeros(len(targets), dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        if target is None:
            continue
        has_gt[i] = True
        masks = target["masks"].to(device)
        if masks.numel() and tuple(masks.shape[-2:]) != tuple(size):
            raise ValueError(f"target {i} masks are {tuple(masks.shape[-2:])}, expected {tuple(size)}")
        for label, mask in zip(target["labels"].tolist(), masks):
            ids[i][mask.bool()] = int(label) + 1
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


class PixelMaskModel(nn.Module):
    """Shared plumbing of models that predict one logit map per class (TPAVI, AVSAC).

    Args:
        num_classes: foreground classes C; the model outputs ``out_channels`` maps: 1 (binary
            foreground logit, S4 / MS3) when C = 1, else C + 1 (AVSS, channel 0 background,
            channel k = class id k), the id convention of ``targets_from_masks``.
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


def build_tpavi(
    size: str,
    num_classes: int = 1,
    use_audio: bool = True,
    freeze_audio: bool | None = None,
    backbone_weights: str | os.PathLike | None = None,
    vggish_weights: str | os.PathLike | None = None,
    channels_last: bool = False,
    tpavi_stages: Sequence[int] = (0, 1, 2, 3),
    **ignored: object,
) -> TPAVIModel:
    """TPAVI of a named size ("tiny", "r50", "pvt_b5"): the encoders of ``ENCODER_SIZES``,
    decoder width 256 (tiny: 64). Arguments as COMBO's builders (``models.build``).

    ``ignored`` takes the switches of the shared model config that only concern COMBO
    (``use_maskige``, ``fusion``); any other unknown name is an error.
    """
    reject_unknown_args("build_tpavi", ignored)
    backbone, audio, spec = build_encoders(size, use_audio, backbone_weights, vggish_weights, freeze_audio)
    model = TPAVIModel(
        backbone, audio, channel=spec.channel, num_classes=num_classes, tpavi_stages=tpavi_stages, channels_last=channels_last
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


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
