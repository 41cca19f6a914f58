"""Every model's builders and sizes, and the registry, laid out as segment-anything's
``build_sam.py``: a frozen size spec per model, one private builder per model family, public
builders of a line or two, and ``model_registry`` naming them all.

A size is nothing but numbers: ``combo_tiny`` runs the same code as ``combo_r50``. Every
builder takes ``num_classes`` (foreground classes: 1 for S4/MS3, C for AVSS), the ablation
switches of the shared model config, and ``backbone_weights`` / ``vggish_weights`` (local
paths; resolve s3:// first). ``build_model(name, **options)`` calls one by name.

    model = build_model("combo_tiny", num_classes=1, lambda_ada=0.0)

``FAMILIES`` x ``SIZES`` are the names of the supervised models of ``model_registry``: import
them rather than spelling the names again. ``MOCA_MODELS`` are the unsupervised ones (MoCA and
its two baselines, ``models.moca``): trained without masks, by ``training_loss``, binary only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.avsac import AVSACModel
from models.bilateral_fusion import FUSION_MODES, BilateralFusion
from models.combo import COMBO
from models.encoders import EncoderSize, build_encoders, build_visual_backbone
from models.losses import ComboLoss
from models.moca import MoCA, SaliencyBaseline, SimilarityBaseline
from models.pixel_decoder import FPNPixelDecoder
from models.pretrain import EncoderPretraining
from models.siam_encoder import SiamEncoder
from models.tpavi import TPAVIModel
from models.transformer_decoder import MaskedAttentionDecoder

PathLike = str | os.PathLike

FAMILIES = ("combo", "avsac", "tpavi")
SIZES = ("tiny", "r50", "pvt_b5")

# ---- sizes ------------------------------------------------------------------------------------

# tiny: a TinyCNN and a narrow VGGish, trained (there are no pretrained weights for them)
TINY_ENCODERS = EncoderSize(
    backbone="tiny",
    backbone_kwargs=(("channels", (16, 32, 64, 128)),),
    vggish_widths=(8, 16, 32, 32),
    vggish_fc_dims=(128, 128),
    freeze_audio=False,
)
# the real thing: timm backbones and the full VGGish, kept frozen (AVSBench, COMBO)
R50_ENCODERS = EncoderSize(backbone="resnet50")
PVT_B5_ENCODERS = EncoderSize(backbone="pvt_v2_b5")


@dataclass(frozen=True)
class ComboSize:
    encoders: EncoderSize
    hidden_dim: int  # D of the pixel decoder, fusion and decoder (COMBO: 256)
    num_queries: int  # COMBO: 100
    num_decoder_layers: int  # COMBO: 9
    num_heads: int  # decoder and fusion heads (COMBO: 8)
    ffn_dim: int  # decoder FFN (COMBO: 2048)
    audio_mlp_dim: int  # hidden width of the audio MLP to the queries (COMBO: 4096)


@dataclass(frozen=True)
class AVSACSize:
    encoders: EncoderSize
    hidden_dim: int
    num_queries: int
    num_layers: int
    num_heads: int
    ffn_dim: int


@dataclass(frozen=True)
class TPAVISize:
    encoders: EncoderSize
    channel: int  # decoder width (AVSBench: 256)


COMBO_TINY = ComboSize(
    TINY_ENCODERS, hidden_dim=64, num_queries=10, num_decoder_layers=3, num_heads=4, ffn_dim=256, audio_mlp_dim=256
)
COMBO_R50 = ComboSize(
    R50_ENCODERS, hidden_dim=256, num_queries=100, num_decoder_layers=9, num_heads=8, ffn_dim=2048, audio_mlp_dim=4096
)
COMBO_PVT_B5 = ComboSize(
    PVT_B5_ENCODERS, hidden_dim=256, num_queries=100, num_decoder_layers=9, num_heads=8, ffn_dim=2048, audio_mlp_dim=4096
)

AVSAC_TINY = AVSACSize(TINY_ENCODERS, hidden_dim=64, num_queries=10, num_layers=3, num_heads=4, ffn_dim=256)
AVSAC_R50 = AVSACSize(R50_ENCODERS, hidden_dim=256, num_queries=100, num_layers=6, num_heads=8, ffn_dim=2048)
AVSAC_PVT_B5 = AVSACSize(PVT_B5_ENCODERS, hidden_dim=256, num_queries=100, num_layers=6, num_heads=8, ffn_dim=2048)

TPAVI_TINY = TPAVISize(TINY_ENCODERS, channel=64)
TPAVI_R50 = TPAVISize(R50_ENCODERS, channel=256)
TPAVI_PVT_B5 = TPAVISize(PVT_B5_ENCODERS, channel=256)


@dataclass(frozen=True)
class MoCASize:
    encoders: EncoderSize
    feature_stage: int  # the frozen map the adapters read (2: stride 16)
    embed_dim: int  # D of the joint audio-visual embedding
    adapter_dim: int  # AdaAV bottleneck
    num_adapters: int
    num_heads: int


MOCA_TINY = MoCASize(TINY_ENCODERS, feature_stage=2, embed_dim=32, adapter_dim=16, num_adapters=1, num_heads=2)
MOCA_R50 = MoCASize(R50_ENCODERS, feature_stage=2, embed_dim=256, adapter_dim=64, num_adapters=2, num_heads=4)


# ---- public builders ----------------------------------------------------------------------------


def build_combo_tiny(**options: Any) -> COMBO:
    """COMBO for CPU work: TinyCNN backbones, hidden 64, 10 queries, 3 decoder layers."""
    return _build_combo(COMBO_TINY, **options)


def build_combo_r50(**options: Any) -> COMBO:
    """COMBO with timm ResNet-50 backbones, hidden 256, 100 queries, 9 layers, frozen VGGish."""
    return _build_combo(COMBO_R50, **options)


def build_combo_pvt_b5(**options: Any) -> COMBO:
    """COMBO with timm PVT-v2-b5 backbones; otherwise as ``build_combo_r50``."""
    return _build_combo(COMBO_PVT_B5, **options)


def build_avsac_tiny(**options: Any) -> AVSACModel:
    """AVSAC for CPU work: TinyCNN backbone, D=64, 10 queries, 3 BAVD layers."""
    return _build_avsac(AVSAC_TINY, **options)


def build_avsac_r50(**options: Any) -> AVSACModel:
    """AVSAC with a timm ResNet-50 backbone, D=256, 100 queries, 6 BAVD layers."""
    return _build_avsac(AVSAC_R50, **options)


def build_avsac_pvt_b5(**options: Any) -> AVSACModel:
    """AVSAC with a timm PVT-v2-b5 backbone; otherwise as ``build_avsac_r50``."""
    return _build_avsac(AVSAC_PVT_B5, **options)


def build_tpavi_tiny(**options: Any) -> TPAVIModel:
    """TPAVI for CPU work: TinyCNN backbone, decoder width 64."""
    return _build_tpavi(TPAVI_TINY, **options)


def build_tpavi_r50(**options: Any) -> TPAVIModel:
    """TPAVI with a timm ResNet-50 backbone, decoder width 256 (AVSBench's ResNet-50 TPAVI)."""
    return _build_tpavi(TPAVI_R50, **options)


def build_tpavi_pvt_b5(**options: Any) -> TPAVIModel:
    """TPAVI with a timm PVT-v2-b5 backbone, decoder width 256."""
    return _build_tpavi(TPAVI_PVT_B5, **options)


def build_moca_tiny(**options: Any) -> MoCA:
    """MoCA for CPU work: frozen TinyCNN (stride-16 map) and tiny VGGish, one AdaAV block, D=32."""
    return _build_moca(MOCA_TINY, MoCA, **options)


def build_moca_r50(**options: Any) -> MoCA:
    """MoCA with a frozen timm ResNet-50 (stride-16 map, 1024 channels) and VGGish, two AdaAV blocks, D=256."""
    return _build_moca(MOCA_R50, MoCA, **options)


def build_moca_baseline_similarity_tiny(**options: Any) -> SimilarityBaseline:
    """The thresholded audio-visual cosine map on MoCA's tiny encoders."""
    return _build_moca(MOCA_TINY, SimilarityBaseline, **options)


def build_moca_baseline_similarity_r50(**options: Any) -> SimilarityBaseline:
    """The thresholded audio-visual cosine map on MoCA's ResNet-50 and VGGish."""
    return _build_moca(MOCA_R50, SimilarityBaseline, **options)


def build_moca_baseline_saliency_tiny(**options: Any) -> SaliencyBaseline:
    """The most salient Maskige proposal, by frozen TinyCNN features."""
    return _build_moca(MOCA_TINY, SaliencyBaseline, **options)


def build_moca_baseline_saliency_r50(**options: Any) -> SaliencyBaseline:
    """The most salient Maskige proposal, by frozen ResNet-50 features."""
    return _build_moca(MOCA_R50, SaliencyBaseline, **options)


MOCA_MODELS = (
    "moca_tiny",
    "moca_r50",
    "moca_baseline_similarity_tiny",
    "moca_baseline_similarity_r50",
    "moca_baseline_saliency_tiny",
    "moca_baseline_saliency_r50",
)

model_registry: dict[str, Callable[..., nn.Module]] = {
    "combo_tiny": build_combo_tiny,
    "combo_r50": build_combo_r50,
    "combo_pvt_b5": build_combo_pvt_b5,
    "avsac_tiny": build_avsac_tiny,
    "avsac_r50": build_avsac_r50,
    "avsac_pvt_b5": build_avsac_pvt_b5,
    "tpavi_tiny": build_tpavi_tiny,
    "tpavi_r50": build_tpavi_r50,
    "tpavi_pvt_b5": build_tpavi_pvt_b5,
    "moca_tiny": build_moca_tiny,
    "moca_r50": build_moca_r50,
    "moca_baseline_similarity_tiny": build_moca_baseline_similarity_tiny,
    "moca_baseline_similarity_r50": build_moca_baseline_similarity_r50,
    "moca_baseline_saliency_tiny": build_moca_baseline_saliency_tiny,
    "moca_baseline_saliency_r50": build_moca_baseline_saliency_r50,
}


def build_encoder_pretraining_tiny(num_categories: int = 8, head_dim: int = 64) -> EncoderPretraining:
    """The tiny encoders (``TINY_ENCODERS``: the TinyCNN and the tiny VGGish every tiny model builds)
    with the heads that pretrain them (``models.pretrain``), for ``flows/pretrain.py``."""
    backbone, audio_encoder = build_encoders(TINY_ENCODERS, True, freeze_audio=False)
    return EncoderPretraining(backbone, audio_encoder, num_categories, head_dim)


# What flows/pretrain.py trains: the encoders of a size, to be loaded as model.backbone_weights /
# model.vggish_weights by every model of that size (not segmentation models: not in model_registry).
pretrain_registry: dict[str, Callable[..., nn.Module]] = {"encoders_tiny": build_encoder_pretraining_tiny}


def build_model(name: str, **options: Any) -> nn.Module:
    """``model_registry[name](**options)``, with a clear error for an unknown name."""
    if name not in model_registry:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(model_registry))}")
    return model_registry[name](**options)


# ---- private builders ---------------------------------------------------------------------------


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (1 for S4/MS3, C for AVSS), got {num_classes}")


def _finish(model: nn.Module, channels_last: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _build_combo(
    size: ComboSize,
    *,
    num_classes: int = 1,
    use_maskige: bool = True,
    fusion: str = "bilateral",
    use_audio: bool = True,
    learn_background: bool = True,
    lambda_ada: float = 10.0,
    freeze_audio: bool | None = None,
    backbone_weights: PathLike | None = None,
    vggish_weights: PathLike | None = None,
    layer_scale_init: float = 1e-4,
    weight_class: float = 2.0,
    weight_mask: float = 5.0,
    weight_dice: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int | None = None,
    channels_last: bool = False,
) -> COMBO:
    """COMBO of ``size``. Options:

    num_classes: foreground classes C. use_maskige / fusion ("bilateral", "audio_to_visual") /
    use_audio: the ablations. learn_background: COMBO's classes (C + 1 with the background a
    class; default) or ours (C, background derived at inference). lambda_ada: consistency loss
    weight (COMBO: 10). freeze_audio: None = the size's default. backbone_weights (loaded into
    both Siam-Encoder backbones) / vggish_weights: local weight files. layer_scale_init:
    fusion gammas (COMBO: 1e-4). weight_class / weight_mask / weight_dice / no_object_weight
    (COMBO: 2, 5, 5, 0.1) and num_points (COMBO: 12544; None = every target pixel): the
    Hungarian loss. channels_last: NHWC images and weights.
    """
    _check_num_classes(num_classes)
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
    backbone, audio_encoder = build_encoders(size.encoders, use_audio, backbone_weights, vggish_weights, freeze_audio)
    maskige_backbone = build_visual_backbone(size.encoders, backbone_weights) if use_maskige else None
    encoder = SiamEncoder(backbone, maskige_backbone)
    d = size.hidden_dim
    label_space = num_classes + 1 if learn_background else num_classes
    decoder = MaskedAttentionDecoder(
        d, label_space, size.num_queries, size.num_decoder_layers, num_heads=size.num_heads, ffn_dim=size.ffn_dim
    )
    fusion_module = None
    if audio_encoder is not None:
        fusion_module = BilateralFusion(
            d, audio_encoder.out_dim, size.num_heads, mode=fusion, layer_scale_init=layer_scale_init
        )
    criterion = ComboLoss(
        num_classes,
        learn_background=learn_background,
        lambda_ada=lambda_ada,
        weight_class=weight_class,
        weight_mask=weight_mask,
        weight_dice=weight_dice,
        no_object_weight=no_object_weight,
        num_points=num_points,
    )
    model = COMBO(
        encoder=encoder,
        pixel_decoder=FPNPixelDecoder(encoder.channels, d),
        decoder=decoder,
        audio_encoder=audio_encoder,
        fusion=fusion_module,
        audio_mlp_dim=size.audio_mlp_dim,
        learn_background=learn_background,
        criterion=criterion,
        channels_last=channels_last,
    )
    return _finish(model, channels_last)


def _build_avsac(
    size: AVSACSize,
    *,
    num_classes: int = 1,
    use_audio: bool = True,
    freeze_audio: bool | None = None,
    backbone_weights: PathLike | None = None,
    vggish_weights: PathLike | None = None,
    channels_last: bool = False,
    use_maskige: bool = True,
    fusion: str = "bilateral",
) -> AVSACModel:
    """AVSAC of ``size``; options as ``_build_combo``'s. ``use_maskige`` and ``fusion`` are
    accepted so that one model config builds every family; AVSAC has neither part."""
    _check_num_classes(num_classes)
    backbone, audio_encoder = build_encoders(size.encoders, use_audio, backbone_weights, vggish_weights, freeze_audio)
    model = AVSACModel(
        backbone,
        audio_encoder,
        hidden_dim=size.hidden_dim,
        num_queries=size.num_queries,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        ffn_dim=size.ffn_dim,
        num_classes=num_classes,
        channels_last=channels_last,
    )
    return _finish(model, channels_last)


def _build_tpavi(
    size: TPAVISize,
    *,
    num_classes: int = 1,
    use_audio: bool = True,
    freeze_audio: bool | None = None,
    backbone_weights: PathLike | None = None,
    vggish_weights: PathLike | None = None,
    channels_last: bool = False,
    tpavi_stages: Sequence[int] = (0, 1, 2, 3),
    use_maskige: bool = True,
    fusion: str = "bilateral",
) -> TPAVIModel:
    """TPAVI of ``size``; options as ``_build_combo``'s, plus ``tpavi_stages`` (AVSBench: all
    four). ``use_maskige`` and ``fusion`` are accepted so that one model config builds every
    family; TPAVI has neither part."""
    _check_num_classes(num_classes)
    backbone, audio_encoder = build_encoders(size.encoders, use_audio, backbone_weights, vggish_weights, freeze_audio)
    model = TPAVIModel(
        backbone,
        audio_encoder,
        channel=size.channel,
        num_classes=num_classes,
        tpavi_stages=tpavi_stages,
        channels_last=channels_last,
    )
    return _finish(model, channels_last)


_MOCA_OPTIONS = ("margin", "pool_temperature", "threshold", "aggregate", "embed_dim", "num_adapters")


def _build_moca(
    size: MoCASize,
    cls: type[MoCA] | type[SaliencyBaseline],
    *,
    num_classes: int = 1,
    use_audio: bool = True,
    freeze_audio: bool | None = True,
    backbone_weights: PathLike | None = None,
    vggish_weights: PathLike | None = None,
    channels_last: bool = False,
    use_maskige: bool | None = None,
    fusion: str | None = None,
    **options: Any,
) -> nn.Module:
    """MoCA or a baseline (``cls``) of ``size``, every encoder frozen (``freeze_audio=False``
    trains VGGish; None = frozen). Options as ``_build_combo``'s; ``use_maskige`` = the class's
    ``use_proposals`` (None: its default; the saliency baseline needs the Maskige; ``fusion`` is
    accepted and ignored); ``num_classes`` must be 1. Further options go to the class: MoCA's
    ``margin``, ``pool_temperature``, ``threshold``, ``logit_scale``, ``aggregate``; the saliency
    baseline's ``min_area``, ``logit_scale``. The saliency baseline hears nothing: no VGGish is
    built and the audio options are ignored. So that one config builds MoCA and both baselines
    (``model=moca_tiny model.name=moca_baseline_saliency``), options that a baseline's definition
    fixes are accepted and ignored: every MoCA option by the saliency baseline, ``aggregate``,
    ``embed_dim`` and ``num_adapters`` by the similarity baseline (no aggregation, no adapter, the
    audio width); ``min_area`` by MoCA and the similarity baseline.
    """
    _check_num_classes(num_classes)
    fixed = {SaliencyBaseline: _MOCA_OPTIONS, SimilarityBaseline: ("aggregate", "embed_dim", "num_adapters", "min_area"),
             MoCA: ("min_area",)}[cls]
    options = {k: v for k, v in options.items() if k not in fixed}
    if cls is SaliencyBaseline:
        if use_maskige is False:
            raise ValueError("the saliency baseline picks a Maskige proposal: it cannot run with use_maskige=False")
        backbone = build_visual_backbone(size.encoders, backbone_weights)
        model = SaliencyBaseline(backbone, feature_stage=size.feature_stage, num_classes=num_classes,
                                 channels_last=channels_last, **options)
        return _finish(model, channels_last)
    if not use_audio:
        raise ValueError(f"{cls.__name__} is audio-visual: use_audio=False is not supported")
    freeze = True if freeze_audio is None else freeze_audio
    backbone, audio_encoder = build_encoders(size.encoders, True, backbone_weights, vggish_weights, freeze)
    if use_maskige is not None:
        options["use_proposals"] = use_maskige
    if cls is MoCA:
        options = {"embed_dim": size.embed_dim, "adapter_dim": size.adapter_dim, "num_adapters": size.num_adapters,
                   "num_heads": size.num_heads, **options}
    model = cls(backbone, audio_encoder, feature_stage=size.feature_stage, num_classes=num_classes,
                channels_last=channels_last, **options)
    return _finish(model, channels_last)
