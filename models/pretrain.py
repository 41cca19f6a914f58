"""Pretraining the encoders every model shares, the way the papers' starting points were made.

The papers start every encoder pretrained: the image backbone on ImageNet (and segmentation on
ADE20K), VGGish on AudioSet's sound tags. No weights can be downloaded for our tiny encoders, so
they are made the same way on SynthAVS (``flows/pretrain.py``):

- the image backbone learns dense segmentation of every object's category on every frame (the
  role of ImageNet / ADE20K): the backbone's four maps go through a light FPN head (1x1 lateral
  convs to ``head_dim``, a top-down sum, a 3x3 conv-BN-ReLU, a 1x1 classifier over K categories
  plus background) at stride 4, upsampled bilinearly to the frame; cross-entropy over all pixels;
- the audio encoder learns which categories sound in each second (multi-label, the role of
  AudioSet): a linear classifier on the VGGish embedding, binary cross-entropy per category.

Only the encoders are kept (``backbone`` and ``audio_encoder`` state dicts, loaded by the models
through ``backbone_weights`` / ``vggish_weights``); the heads exist for pretraining alone.

``forward(frames: B x T x 3 x H x W in [0, 1], logmel: B x T x 96 x 64)`` ->
``{"categories": (B*T) x (K+1) x H x W logits, "audio_tags": B x T x K logits}``; frames are
ImageNet-normalised inside, as every model of ``models/`` does, so the backbone sees the same
input in pretraining and after it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder
from models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, conv_bn_relu


class DenseCategoryHead(nn.Module):
    """Backbone maps (strides 4..32, ``channels``) -> ``num_classes`` logits at stride 4."""

    def __init__(self, channels: list[int], num_classes: int, head_dim: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_dim, 1) for c in channels)
        self.fuse = conv_bn_relu(head_dim, head_dim, 1)
        self.classifier = nn.Conv2d(head_dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](feats[-1])
        for lateral, feat in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="nearest")
        return self.classifier(self.fuse(x))


class EncoderPretraining(nn.Module):
    """The backbone with its dense category head and the audio encoder with its tagger.

    Args:
        backbone: a ``models.backbones.Backbone`` (the tiny models' ``TinyCNN``).
        audio_encoder: a ``VGGishEncoder``, trained.
        num_categories: K (SynthAVS: 8); the dense head has K + 1 classes, 0 the background.
        head_dim: width of the dense head.
    """

    def __init__(self, backbone: Backbone, audio_encoder: VGGishEncoder, num_categories: int,
                 head_dim: int = 64) -> None:
        super().__init__()
        if num_categories < 1:
            raise ValueError(f"num_categories must be >= 1, got {num_categories}")
        self.backbone = backbone
        self.audio_encoder = audio_encoder
        self.num_categories = num_categories
        self.dense_head = DenseCategoryHead(list(backbone.channels), num_categories + 1, head_dim)
        self.audio_tagger = nn.Linear(audio_encoder.out_dim, num_categories)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be B x T x 3 x H x W, got {tuple(frames.shape)}")
        if logmel.dim() != 4 or tuple(logmel.shape[:2]) != tuple(frames.shape[:2]):
            raise ValueError(f"logmel must be B x T x 96 x 64 with B x T = {tuple(frames.shape[:2])}, "
                             f"got {tuple(logmel.shape)}")
        x = (frames.flatten(0, 1) - self.pixel_mean) / self.pixel_std
        logits = self.dense_head(self.backbone(x))
        logits = F.interpolate(logits, size=frames.shape[-2:], mode="bilinear", align_corners=False)
        return {"categories": logits, "audio_tags": self.audio_tagger(self.audio_encoder.forward_clip(logmel))}

    @staticmethod
    def loss(outputs: dict[str, torch.Tensor], category_maps: torch.Tensor,
             audio_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """category_maps: B x T x H x W ids (0 background, 1..K); audio_labels: B x T x K in {0, 1}.
        Returns ``{"loss": sum, "loss_categories": CE, "loss_audio": BCE}``."""
        ce = F.cross_entropy(outputs["categories"], category_maps.flatten(0, 1).long())
        bce = F.binary_cross_entropy_with_logits(outputs["audio_tags"], audio_labels.float())
        return {"loss": ce + bce, "loss_categories": ce.detach(), "loss_audio": bce.detach()}
