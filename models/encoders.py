"""The encoders every model shares: a visual backbone and the VGGish audio encoder.

``EncoderSize`` says which backbone and how wide a VGGish; the named sizes themselves (tiny,
r50, pvt_b5) are in ``models.build``, beside the rest of each model's size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from models.audio_encoder import VGGishEncoder, load_vggish_weights
from models.backbones import Backbone, build_backbone, load_state_dict_checked, read_state_dict

PathLike = str | os.PathLike


@dataclass(frozen=True)
class EncoderSize:
    """Args:
    backbone: ``models.backbones.build_backbone`` name: "tiny", "resnet50", "pvt_v2_b5".
    backbone_kwargs: further (name, value) pairs for it (TinyCNN widths).
    vggish_widths, vggish_fc_dims: VGGish conv widths and hidden FC widths.
    freeze_audio: default of ``freeze_audio``: keep the VGGish fixed (as AVSBench and COMBO
        do with the pretrained one) or train it (tiny: there are no pretrained weights for it).
    """

    backbone: str
    backbone_kwargs: tuple[tuple[str, object], ...] = ()
    vggish_widths: tuple[int, ...] = (64, 128, 256, 512)
    vggish_fc_dims: tuple[int, ...] = (4096, 4096)
    freeze_audio: bool = True


def build_visual_backbone(size: EncoderSize, weights: PathLike | None = None) -> Backbone:
    """The backbone of ``size``, with ``weights`` (a local path; resolve s3:// first) if given: a
    timm checkpoint for the timm backbones, a ``TinyCNN`` state dict (``flows/pretrain.py`` makes
    one) for the tiny one."""
    kwargs = dict(size.backbone_kwargs)
    if weights is not None and size.backbone != "tiny":
        kwargs["pretrained_path"] = weights
    backbone = build_backbone(size.backbone, **kwargs)
    if weights is not None and size.backbone == "tiny":
        load_state_dict_checked(backbone, read_state_dict(weights, "tiny backbone"), f"tiny backbone ({weights})")
    return backbone


def build_encoders(
    size: EncoderSize,
    use_audio: bool = True,
    backbone_weights: PathLike | None = None,
    vggish_weights: PathLike | None = None,
    freeze_audio: bool | None = None,
) -> tuple[Backbone, VGGishEncoder | None]:
    """Visual backbone and (if ``use_audio``) VGGish encoder (``B x T x 96 x 64 -> B x T x 128``).

    Weight files are local paths; with ``use_audio=False`` no VGGish is built and ``vggish_weights`` is
    not loaded (so that one set of weights serves a model and its no-audio ablation). ``freeze_audio=None``: frozen when ``vggish_weights`` are given
    (a pretrained VGGish stays fixed, as AVSBench and COMBO keep theirs), else the size's default
    (tiny: trained from scratch).
    """
    backbone = build_visual_backbone(size, backbone_weights)
    if not use_audio:
        if vggish_weights is not None:  # one set of weights serves a model and its no-audio ablation
            logging.getLogger(__name__).info("use_audio=False builds no audio encoder: vggish_weights %s not loaded",
                                             vggish_weights)
        return backbone, None
    audio = VGGishEncoder(widths=size.vggish_widths, fc_dims=size.vggish_fc_dims, out_dim=128)
    if vggish_weights is not None:
        load_vggish_weights(audio, vggish_weights)
    if freeze_audio is None:
        freeze_audio = size.freeze_audio or vggish_weights is not None
    if freeze_audio:
        audio.freeze()
    return backbone, audio
