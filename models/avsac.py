"""AVSAC: "Bootstrapping Audio-Visual Segmentation by Strengthening Audio Cues" (Chen et al.,
arXiv 2402.02327), on the same encoders as COMBO and TPAVI.

Pipeline: backbone -> FPN pixel decoder (stride-4 mask features, stride-16 visual tokens);
VGGish -> audio embedding -> audio queries (learned queries + the frame's audio embedding);
Bidirectional Audio-Visual Decoder (BAVD) with two parallel branches of ``num_layers`` layers:

- audio-guided vision (AGV) branch: the audio queries attend to visual tokens (cross-attention,
  self-attention, FFN), so each query becomes visual content gathered under audio guidance;
- vision-guided audio (VGA) branch: the visual tokens attend to the audio queries
  (cross-attention and FFN only; the paper reports that self-attention in this branch hurts),
  so each position gathers audio content under visual guidance;
- bidirectional bridges at every layer: the keys/values of one branch's cross-attention are its
  own input features blended with the other branch's current features,
  ``memory = (1 - w) * base + w * bridge``, ``w = sigmoid(omega)`` learnable per layer and
  direction (the paper's learnable weight; see Choices).

The mask comes from both branches: the VGA tokens, upsampled to stride 4, are added to the mask
features; the result is multiplied channel-wise by the pooled AGV queries; a small conv head
gives the logits, upsampled to the input size.

Audio-Visual Frame-wise Synchrony (AVFS) loss: for every frame, the pooled AGV features of that
frame are pulled towards that frame's audio embedding, ``mean over frames of 1 - cos(agv_t,
audio_t)`` (``avfs_loss``), so the visual side carries each second's audio.

Choices. What we could read of the paper is its abstract, the summary in
shared/seeds/002_*.txt and secondary descriptions of the method (two branches, bridges at every
layer that feed one branch's output to the other's cross-attention as keys/values, a learnable
weight in those equations, cross-attention only in the vision-guided branch, a channel-wise
product of AGV and VGA before the mask head, a frame-level audio-visual alignment loss); its
equations, sizes and loss weights were not available, so each point below is our decision:
- Visual tokens for the decoder: one scale, stride 16 of the FPN pixel decoder, with a sine
  position encoding; the learned query positions double as the audio memory's positions.
- Bridge form: the blend above with w = sigmoid(omega), omega = 0 at start (w = 0.5). The VGA
  branch's first layer reads the initial audio queries (the AGV branch has produced nothing yet),
  so bridges into the VGA branch exist from layer 2 on; the AGV branch reads the VGA output of the
  same layer.
- Order within a layer: VGA update first, then AGV (so each AGV layer sees fresh VGA tokens).
- Layer type: post-norm (as COMBO's decoder layer, reused for the AGV branch), no deep
  supervision.
- AGV/VGA combination: ``(mask_features + up(VGA)) * linear(mean_q AGV)`` channel-wise.
- AVFS: cosine alignment per frame of the final-layer AGV (mean over queries) with the frame's
  audio embedding (the audio part of the queries), which is detached by default so the visual
  side moves towards the audio and not the reverse; weight ``lambda_avfs = 1``.
- Segmentation loss and classes: S4 / MS3 one foreground channel, BCE + dice; AVSS C + 1
  channels, CE + dice, background learned as class 0 (``models.segmentation_loss``); weights 1, 1.
- Sizes: tiny D=64, 10 queries, 3 layers, 4 heads, FFN 256 (COMBO tiny's decoder sizes);
  r50 / pvt_b5 D=256, 100 queries, 6 layers, 8 heads, FFN 2048 (``models.build``).
- ``use_audio=False``: no audio encoder, queries are the learned ones alone, no AVFS term.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder
from models.pixel_decoder import FPNPixelDecoder, group_norm
from models.pixel_mask_model import PixelMaskModel
from models.segmentation_loss import class_map_from_targets, segmentation_loss
from models.transformer_decoder import MLP, DecoderLayer, PositionEmbeddingSine


class VisionGuidedAudioLayer(nn.Module):
    """VGA layer: visual tokens attend to audio memory; cross-attention -> FFN (post-norm).

    ``forward(visual: N x S x D, visual_pos: N x S x D, memory: N x Q x D, memory_pos: N x Q x D)
    -> N x S x D``.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(
        self, visual: torch.Tensor, visual_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor
    ) -> torch.Tensor:
        out = self.cross_attn(visual + visual_pos, memory + memory_pos, memory, need_weights=False)[0]
        visual = self.norm_cross(visual + out)
        return self.norm_ffn(visual + self.ffn(visual))


class BidirectionalAVDecoder(nn.Module):
    """BAVD: parallel AGV (query) and VGA (visual-token) branches linked by bridges per layer.

    ``forward(queries: N x Q x D, query_pos: N x Q x D, visual: N x S x D, visual_pos: N x S x D)``
    -> ``(agv: N x Q x D, vga: N x S x D)``, the outputs of the last layer.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"BAVD needs at least 1 layer, got {num_layers}")
        self.agv_layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.vga_layers = nn.ModuleList(VisionGuidedAudioLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))
        # Bridge weights w = sigmoid(omega): into AGV at every layer, into VGA from layer 2 on.
        self.bridge_to_agv = nn.Parameter(torch.zeros(num_layers))
        self.bridge_to_vga = nn.Parameter(torch.zeros(num_layers - 1))

    def forward(
        self, queries: torch.Tensor, query_pos: torch.Tensor, visual: torch.Tensor, visual_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        agv, vga = queries, visual
        for i, (agv_layer, vga_layer) in enumerate(zip(self.agv_layers, self.vga_layers)):
            if i == 0:
                audio_memory = queries
            else:
                w = torch.sigmoid(self.bridge_to_vga[i - 1])
                audio_memory = (1 - w) * queries + w * agv
            vga = vga_layer(vga, visual_pos, audio_memory, query_pos)
            w = torch.sigmoid(self.bridge_to_agv[i])
            visual_memory = (1 - w) * visual + w * vga
            agv = agv_layer(agv, query_pos, visual_memory, visual_pos, None)
        return agv, vga


class AVSACModel(PixelMaskModel):
    """Args:
        backbone: ``models.backbones.Backbone``.
        audio_encoder: VGGish, or None (``use_audio=False``; ``logmel`` ignored).
        hidden_dim, num_queries, num_layers, num_heads, ffn_dim: BAVD sizes.
        num_classes: foreground classes C; see ``PixelMaskModel``.
        channels_last: see ``PixelMaskModel``.

    ``forward(frames: B x T x 3 x H x W in [0, 1], logmel: B x T x 96 x 64, maskige=None)``
    returns (N = B*T, clip-major rows; ``maskige`` is ignored):
        ``masks``: N x out_channels x H x W logits;
        ``agv``: N x D, final AGV queries averaged over queries (for the AVFS loss);
        ``audio``: N x D, the audio embedding of each frame (absent without audio).
    """

    def __init__(
        self,
        backbone: nn.Module,
        audio_encoder: VGGishEncoder | None,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        num_classes: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(num_classes, channels_last=channels_last)
        d = hidden_dim
        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.pixel_decoder = FPNPixelDecoder(backbone.channels, d)
        self.visual_pos = PositionEmbeddingSine(d // 2)
        self.audio_proj = MLP(audio_encoder.out_dim, d, d, 2) if audio_encoder is not None else None
        self.query_feat = nn.Embedding(num_queries, d)
        self.query_pos = nn.Embedding(num_queries, d)
        self.bavd = BidirectionalAVDecoder(d, num_layers, num_heads, ffn_dim)
        self.agv_to_channels = nn.Linear(d, d)
        self.head = nn.Sequential(
            nn.Conv2d(d, d, 3, padding=1, bias=False), group_norm(d), nn.ReLU(inplace=True), nn.Conv2d(d, self.out_channels, 1)
        )

    def forward(
        self, frames: torch.Tensor, logmel: torch.Tensor | None = None, maskige: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        b, t = self.check_inputs(frames, logmel, self.use_audio)
        n, (h, w) = b * t, frames.shape[-2:]
        multi_scale, mask_features = self.pixel_decoder(self.backbone(self.images(frames)))
        tokens_map = multi_scale[1]  # stride 16, N x D x h16 x w16
        visual = tokens_map.flatten(2).transpose(1, 2)
        visual_pos = self.visual_pos(tokens_map).flatten(2).transpose(1, 2)

        queries = self.query_feat.weight.unsqueeze(0).expand(n, -1, -1)
        outputs: dict[str, torch.Tensor] = {}
        if self.use_audio:
            audio = self.audio_proj(self.encode_audio(self.audio_encoder, logmel).reshape(n, -1))  # N x D
            queries = queries + audio.unsqueeze(1)
            outputs["audio"] = audio
        query_pos = self.query_pos.weight.unsqueeze(0).expand(n, -1, -1)

        agv, vga = self.bavd(queries, query_pos, visual, visual_pos)
        vga_map = vga.transpose(1, 2).reshape(tokens_map.shape)
        vga_map = F.interpolate(vga_map, size=mask_features.shape[-2:], mode="bilinear", align_corners=False)
        agv_pooled = agv.mean(1)
        fused = (mask_features + vga_map) * self.agv_to_channels(agv_pooled)[:, :, None, None]
        masks = F.interpolate(self.head(fused), size=(h, w), mode="bilinear", align_corners=False)
        outputs["masks"] = masks
        outputs["agv"] = agv_pooled
        return outputs

    def loss(self, outputs: dict, targets: Sequence[dict | None], **kwargs) -> dict[str, torch.Tensor]:
        """``avsac_loss`` from per-frame set targets (``models.losses.targets_from_masks``,
        None = no ground truth), the same call as ``COMBO.loss``."""
        ids, has_gt = class_map_from_targets(targets, outputs["masks"].shape[-2:], outputs["masks"].device)
        return avsac_loss(outputs, ids, has_gt, **kwargs)


def avfs_loss(agv: torch.Tensor, audio: torch.Tensor, detach_audio: bool = True) -> torch.Tensor:
    """Audio-Visual Frame-wise Synchrony: ``mean over frames of 1 - cos(agv_n, audio_n)``.

    agv, audio: N x D, row n = frame n (same order in both). ``detach_audio`` stops the
    gradient into the audio side so the visual features move towards the audio.
    """
    if agv.shape != audio.shape or agv.dim() != 2:
        raise ValueError(f"agv and audio must both be N x D, got {tuple(agv.shape)} and {tuple(audio.shape)}")
    if detach_audio:
        audio = audio.detach()
    return (1.0 - F.cosine_similarity(agv, audio, dim=-1, eps=1e-8)).mean()


def avsac_loss(
    outputs: dict[str, torch.Tensor],
    gt: torch.Tensor,
    gt_frames: torch.Tensor | None = None,
    lambda_avfs: float = 1.0,
    dice_weight: float = 1.0,
    ignore_index: int = 255,
    detach_audio: bool = True,
) -> dict[str, torch.Tensor]:
    """AVSAC training loss: BCE/CE + ``dice_weight`` x dice on annotated frames, plus
    ``lambda_avfs`` x AVFS over every frame (when the model has audio).

    outputs: ``AVSACModel`` output; gt: B x T x H x W (or N x H x W) 0/1 or class ids;
    gt_frames: B x T (or N) bool or None for all. Returns ``loss`` (weighted total) and the
    unweighted parts ``loss_mask``, ``loss_dice``, ``loss_avfs`` (detached).
    """
    parts = segmentation_loss(outputs["masks"], gt, gt_frames, ignore_index, dice_weight=dice_weight)
    total = parts["loss_mask"] + dice_weight * parts.get("loss_dice", 0.0)
    if "audio" in outputs and lambda_avfs:
        parts["loss_avfs"] = avfs_loss(outputs["agv"], outputs["audio"], detach_audio)
        total = total + lambda_avfs * parts["loss_avfs"]
    return {"loss": total, **{k: v.detach() for k, v in parts.items()}}
