"""Model builders and the registry, in the manner of segment-anything's ``sam_model_registry``.

A size is nothing but the arguments its builder passes; ``combo_tiny`` runs the same code
as ``combo_r50`` with small numbers. Every builder takes ``num_classes`` (1 for S4/MS3, C
foreground classes for AVSS) and the ablation switches; ``build_model(name, **overrides)``
calls it by name.

    model = build_model("combo_tiny", num_classes=1, lambda_ada=0.0)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from models.audio_encoder import VGGishEncoder, load_vggish_weights
from models.backbones import build_backbone
from models.bilateral_fusion import FUSION_MODES, BilateralFusion
from models.combo import COMBO
from models.losses import ComboLoss
from models.pixel_decoder import FPNPixelDecoder
from models.siam_encoder import SiamEncoder
from models.transformer_decoder import MaskedAttentionDecoder

PathLike = str | os.PathLike


def _build_combo(
    *,
    backbone: str,
    backbone_kwargs: dict[str, Any],
    hidden_dim: int,
    num_queries: int,
    num_decoder_layers: int,
    num_heads: int,
    ffn_dim: int,
    vggish_widths: Sequence[int],
    vggish_fc_dims: Sequence[int],
    num_classes: int,
    use_maskige: bool,
    fusion: str,
    use_audio: bool,
    lambda_ada: float,
    freeze_audio: bool,
    vggish_weights: PathLike | None,
    num_audio_tokens: int,
    layer_scale_init: float,
    weight_class: float,
    weight_mask: float,
    weight_dice: float,
    no_object_weight: float,
    num_points: int | None,
    channels_last: bool,
) -> COMBO:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (1 for S4/MS3, C for AVSS), got {num_classes}")
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
    frame_backbone = build_backbone(backbone, **backbone_kwargs)
    # the Maskige backbone starts from the same weights file as the frame backbone, if any
    maskige_backbone = build_backbone(backbone, **backbone_kwargs) if use_maskige else None
    encoder = SiamEncoder(frame_backbone, maskige_backbone)
    pixel_decoder = FPNPixelDecoder(encoder.channels, hidden_dim)
    decoder = MaskedAttentionDecoder(
        hidden_dim, num_classes, num_queries, num_decoder_layers, num_heads=num_heads, ffn_dim=ffn_dim
    )
    audio_encoder = fusion_module = None
    if use_audio:
        audio_encoder = VGGishEncoder(widths=vggish_widths, fc_dims=vggish_fc_dims, out_dim=128)
        if vggish_weights is not None:
            load_vggish_weights(audio_encoder, vggish_weights)
        if freeze_audio:
            audio_encoder.freeze()
        fusion_module = BilateralFusion(
            hidden_dim, num_heads, mode=fusion, num_audio_tokens=num_audio_tokens, layer_scale_init=layer_scale_init
        )
    criterion = ComboLoss(
        num_classes,
        lambda_ada=lambda_ada,
        weight_class=weight_class,
        weight_mask=weight_mask,
        weight_dice=weight_dice,
        no_object_weight=no_object_weight,
        num_points=num_points,
    )
    return COMBO(
        encoder=encoder,
        pixel_decoder=pixel_decoder,
        decoder=decoder,
        audio_encoder=audio_encoder,
        fusion=fusion_module,
        num_audio_tokens=num_audio_tokens,
        criterion=criterion,
        channels_last=channels_last,
    )


def build_combo_tiny(
    num_classes: int = 1,
    use_maskige: bool = True,
    fusion: str = "bilateral",
    use_audio: bool = True,
    lambda_ada: float = 10.0,
    freeze_audio: bool = False,
    vggish_weights: PathLike | None = None,
    num_audio_tokens: int = 1,
    layer_scale_init: float = 1e-4,
    weight_class: float = 2.0,
    weight_mask: float = 5.0,
    weight_dice: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int | None = None,
    channels_last: bool = False,
    backbone_channels: Sequence[int] = (16, 32, 64, 128),
    hidden_dim: int = 64,
    num_queries: int = 10,
    num_decoder_layers: int = 3,
) -> COMBO:
    """CPU-sized COMBO: TinyCNN backbones, hidden 64, 10 queries, 3 decoder layers, a narrow
    VGGish (trained by default: there are no pretrained weights for it)."""
    return _build_combo(
        backbone="tiny",
        backbone_kwargs={"channels": tuple(backbone_channels)},
        hidden_dim=hidden_dim,
        num_queries=num_queries,
        num_decoder_layers=num_decoder_layers,
        num_heads=4,
        ffn_dim=4 * hidden_dim,
        vggish_widths=(8, 16, 32, 32),
        vggish_fc_dims=(128, 128),
        **_common(locals()),
    )


def _common(kw: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "num_classes", "use_maskige", "fusion", "use_audio", "lambda_ada", "freeze_audio", "vggish_weights",
        "num_audio_tokens", "layer_scale_init", "weight_class", "weight_mask", "weight_dice", "no_object_weight",
        "num_points", "channels_last",
    )  # fmt: skip
    return {k: kw[k] for k in keys}


def _build_combo_full(backbone: str, backbone_weights: PathLike | None, kw: dict[str, Any]) -> COMBO:
    return _build_combo(
        backbone=backbone,
        backbone_kwargs={"pretrained_path": backbone_weights},
        hidden_dim=256,
        num_queries=kw["num_queries"],
        num_decoder_layers=kw["num_decoder_layers"],
        num_heads=8,
        ffn_dim=2048,
        vggish_widths=(64, 128, 256, 512),
        vggish_fc_dims=(4096, 4096),
        **_common(kw),
    )


def build_combo_r50(
    num_classes: int = 1,
    use_maskige: bool = True,
    fusion: str = "bilateral",
    use_audio: bool = True,
    lambda_ada: float = 10.0,
    freeze_audio: bool = True,
    vggish_weights: PathLike | None = None,
    backbone_weights: PathLike | None = None,
    num_audio_tokens: int = 1,
    layer_scale_init: float = 1e-4,
    weight_class: float = 2.0,
    weight_mask: float = 5.0,
    weight_dice: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int | None = None,
    channels_last: bool = False,
    num_queries: int = 100,
    num_decoder_layers: int = 9,
) -> COMBO:
    """COMBO with ResNet-50 backbones (timm), hidden 256, 100 queries, 9 layers, full VGGish
    (frozen, as in COMBO). Weight files are local paths (resolve s3:// first)."""
    return _build_combo_full("resnet50", backbone_weights, locals())


def build_combo_pvt_b5(
    num_classes: int = 1,
    use_maskige: bool = True,
    fusion: str = "bilateral",
    use_audio: bool = True,
    lambda_ada: float = 10.0,
    freeze_audio: bool = True,
    vggish_weights: PathLike | None = None,
    backbone_weights: PathLike | None = None,
    num_audio_tokens: int = 1,
    layer_scale_init: float = 1e-4,
    weight_class: float = 2.0,
    weight_mask: float = 5.0,
    weight_dice: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int | None = None,
    channels_last: bool = False,
    num_queries: int = 100,
    num_decoder_layers: int = 9,
) -> COMBO:
    """COMBO with PVT-v2-b5 backbones (timm); otherwise as ``build_combo_r50``."""
    return _build_combo_full("pvt_v2_b5", backbone_weights, locals())


def _avsac(size: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        from models.avsac import build_avsac  # imported here: models/avsac.py is built separately

        return build_avsac(size, **kwargs)

    build.__name__ = f"build_avsac_{size}"
    return build


def _tpavi(size: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        from models.tpavi import build_tpavi  # imported here: models/tpavi.py is built separately

        return build_tpavi(size, **kwargs)

    build.__name__ = f"build_tpavi_{size}"
    return build


model_registry: dict[str, Callable[..., nn.Module]] = {
    "combo_tiny": build_combo_tiny,
    "combo_r50": build_combo_r50,
    "combo_pvt_b5": build_combo_pvt_b5,
    **{f"avsac_{size}": _avsac(size) for size in ("tiny", "r50", "pvt_b5")},
    **{f"tpavi_{size}": _tpavi(size) for size in ("tiny", "r50", "pvt_b5")},
}


def build_model(name: str, **overrides: Any) -> nn.Module:
    """``model_registry[name](**overrides)``, with a clear error for an unknown name."""
    if name not in model_registry:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(model_registry))}")
    return model_registry[name](**overrides)
