"""Schema of conf/model/: which model to build and the builder's own keyword arguments.

``name`` and ``size`` pick a builder of ``models.build.model_registry`` (``f"{name}_{size}"``,
e.g. ``combo_tiny``); every other field is a keyword argument of that builder, under the
builder's own name, so a config reaches the model by one path: ``build_model(registry_name,
**options)`` (:meth:`ModelConfig.builder_options`). The lists of models and sizes are the
registry's (``models.build.FAMILIES`` / ``SIZES``), not repeated here: ``infra`` may not import
``models``, so the training step checks the name against the registry, and the options against
the builder (a dry build on the meta device), before any worker starts.

A field left ``null`` is not passed: the builder's own default applies. The families take
different options (``build_model`` raises TypeError on a key its builder does not take):

- every builder: ``num_classes``, ``use_audio``, ``freeze_audio``, ``backbone_weights``,
  ``vggish_weights``, ``channels_last``; ``use_maskige`` and ``fusion`` (AVSAC and TPAVI accept
  and ignore them, so one config builds every family);
- COMBO only: ``learn_background``, ``lambda_ada``, ``layer_scale_init``, ``weight_class``,
  ``weight_mask``, ``weight_dice``, ``no_object_weight``, ``num_points``;
- TPAVI only: ``tpavi_stages``;
- MoCA only (``models.moca``): ``margin``, ``pool_temperature``, ``threshold``, ``aggregate``,
  ``embed_dim``, ``num_adapters``; ``logit_scale`` (MoCA and its saliency baseline), ``min_area``
  (the saliency baseline).

The loss weights live here, as the builder's arguments (COMBO builds its loss), not in
``train``: ``model.lambda_ada=3 model.weight_dice=2`` is what a sweep overrides.
conf/model/combo_*.yaml spell out COMBO's values.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# ModelConfig fields that select the builder rather than being its arguments
_SELECTORS = ("name", "size")


@dataclass
class ModelConfig:
    name: str = "combo"  # family: the part of the registry name before the size
    size: str = "tiny"
    # Foreground classes C; null = from the data set (1 for S4/MS3, the class count of
    # label2idx.json for AVSS).
    num_classes: int | None = None
    # Ablation switches (COMBO): the Maskige branch, fusion direction, audio at all.
    use_maskige: bool | None = None
    fusion: str | None = None  # bilateral | audio_to_visual
    use_audio: bool | None = None
    # null = frozen when vggish_weights are given (as the papers keep a pretrained VGGish), else the size's
    # default (tiny trains VGGish from scratch, r50/pvt_b5 freeze it)
    freeze_audio: bool | None = None
    # Weights: local path or s3:// URI (fetched by each worker); null = random initialisation.
    backbone_weights: str | None = None
    vggish_weights: str | None = None
    channels_last: bool | None = None  # NHWC convs: faster on tensor cores
    # COMBO's classes and loss (COMBO's values in conf/model/combo_*.yaml)
    learn_background: bool | None = None
    lambda_ada: float | None = None  # adaptive inter-frame consistency weight (COSINE_WEIGHT: 10)
    layer_scale_init: float | None = None
    weight_class: float | None = None
    weight_mask: float | None = None
    weight_dice: float | None = None
    no_object_weight: float | None = None
    num_points: int | None = None  # null = every target pixel (COMBO: 12544 sampled points)
    # TPAVI: the stages that get a TPAVI block (AVSBench: all four)
    tpavi_stages: list[int] | None = None
    # MoCA (models.moca; its defaults: margin 0.5, pool_temperature 0.1, threshold 0, logit_scale 10,
    # aggregate true; conf/model/moca_*.yaml spell them out)
    margin: float | None = None  # of the ranking loss between positive and negative image scores
    pool_temperature: float | None = None  # softmax pooling of the audio-pixel map into an image score
    threshold: float | None = None  # inference: a proposal is marked when its mean cosine beats this
    logit_scale: float | None = None  # inference: logits = (score - threshold) * logit_scale
    aggregate: bool | None = None  # pixel matching aggregation in training (false: the plain map)
    embed_dim: int | None = None  # width D of the pixel and audio embeddings
    num_adapters: int | None = None  # AdaAV blocks on the frozen map
    min_area: float | None = None  # saliency baseline: the smallest proposal it may pick (frame fraction)

    def __post_init__(self) -> None:
        for key in _SELECTORS:
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"model.{key} must be a non-empty name (the registry name is name_size), got {value!r}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1 or null (from the data set), got {self.num_classes}")
        for key in ("lambda_ada", "weight_class", "weight_mask", "weight_dice", "no_object_weight"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"model.{key} must be >= 0 or null, got {value}")
        if self.threshold is not None and not -1.0 < self.threshold < 1.0:
            raise ValueError(f"model.threshold is on a cosine map and must lie in (-1, 1), got {self.threshold}")
        for key in ("pool_temperature", "logit_scale"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ValueError(f"model.{key} must be > 0 or null, got {value}")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"model.margin must be >= 0 or null, got {self.margin}")
        if self.num_points is not None and self.num_points < 1:
            raise ValueError(f"model.num_points must be >= 1 or null (every pixel), got {self.num_points}")

    @property
    def registry_name(self) -> str:
        return f"{self.name}_{self.size}"

    def builder_options(self, **given: Any) -> dict[str, Any]:
        """Keyword arguments of the builder: every field that is set (not null) but the
        name and size, then ``given`` (e.g. ``num_classes`` resolved from the data set)."""
        options = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _SELECTORS}
        options.update(given)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v is not None}
