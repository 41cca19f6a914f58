"""COMBO's optimiser and learning-rate schedule, on our models.

Read from yannqi/COMBO-AVS (``train_net.py`` ``Trainer.build_optimizer``, itself Mask2Former's;
``configs/avs_*/R50-*-SemanticSegmentation.yaml`` ``SOLVER``) and detectron2 (``WarmupPolyLR``,
``add_deeplab_config``); the values are :class:`~infra.schema.train.TrainConfig`'s defaults:

- AdamW (``OPTIMIZER: ADAMW``), lr 1e-4 (``BASE_LR``), weight decay 0.05 (``WEIGHT_DECAY``);
- a parameter of a module whose qualified name holds ``backbone`` learns at lr x 0.1
  (``BACKBONE_MULTIPLIER``). Here: ``encoder.backbone`` and ``encoder.maskige_backbone`` (COMBO's
  ``backbone`` and ``pre_sam_backbone``), AVSAC's and TPAVI's ``backbone``. COMBO's VGGish is
  named ``audio_backbone`` but frozen, so it never takes the multiplier; ours is
  ``audio_encoder`` and, when trained (the tiny size), learns at the full rate;
- no weight decay on the parameters of normalisation layers (``WEIGHT_DECAY_NORM``, detectron2's
  default 0), of ``nn.Embedding`` (``WEIGHT_DECAY_EMBED: 0``: queries, level embeddings) and on
  ``relative_position_bias_table`` / ``absolute_pos_embed``;
- frozen parameters (``requires_grad=False``) are left out;
- poly decay per optimiser step, ``lr = base x (1 - step / total) ^ 0.9`` (``WarmupPolyLR``,
  ``POLY_LR_POWER: 0.9``, ``POLY_LR_CONSTANT_ENDING: 0``), with detectron2's linear warm-up
  (``WARMUP_ITERS: 0`` in COMBO: none);
- the gradient of the whole model clipped to L2 norm 0.01 (``CLIP_GRADIENTS``, ``CLIP_TYPE:
  full_model``): done in the training loop, after the all-reduce, so every rank clips alike.

COMBO gives every parameter its own group; ours groups parameters with equal settings (the
same update, fewer groups in the state dict).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from infra.schema.train import TrainConfig

NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimiser parameter groups by COMBO's rules (module docstring), each with ``name``
    (``backbone`` / ``other``, ``+no_decay`` where the decay differs), ``lr`` and ``weight_decay``."""
    groups: dict[tuple[str, float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            backbone = "backbone" in module_name
            lr = cfg.lr * (cfg.backbone_multiplier if backbone else 1.0)
            decay = cfg.weight_decay
            if any(n in param_name for n in NO_DECAY_PARAM_NAMES):
                decay = 0.0
            if isinstance(module, NORM_TYPES):
                decay = cfg.weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = cfg.weight_decay_embed
            name = ("backbone" if backbone else "other") + ("" if decay == cfg.weight_decay else "+no_decay")
            groups.setdefault((name, lr, decay), []).append(param)
    return [{"name": name, "params": params, "lr": lr, "weight_decay": decay}
            for (name, lr, decay), params in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (COMBO) or Adam (AVSBench) over :func:`param_groups`."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_factor(step: int, total_steps: int, power: float, warmup_steps: int, warmup_factor: float,
              schedule: str) -> float:
    """The multiplier of every group's base lr after ``step`` optimiser steps (detectron2's
    ``WarmupPolyLR`` with ``POLY_LR_CONSTANT_ENDING`` 0; ``constant``: warm-up only)."""
    warmup = 1.0
    if step < warmup_steps:
        alpha = step / warmup_steps
        warmup = warmup_factor * (1 - alpha) + alpha
    if schedule == "constant":
        return warmup
    return warmup * max(0.0, 1.0 - step / max(1, total_steps)) ** power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule over total_steps optimiser steps. The factor is a ``functools.partial``,
    whose (empty) ``__dict__`` is all ``LambdaLR.state_dict`` keeps: a resumed run takes the
    schedule from its config and only the step count from the checkpoint."""
    factor = functools.partial(lr_factor, total_steps=total_steps, power=cfg.poly_power,
                               warmup_steps=cfg.warmup_steps, warmup_factor=cfg.warmup_factor,
                               schedule=cfg.lr_schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
