"""Schema of conf/train/: the Ray Train loop."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 2  # clips per worker
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lambda_ada: float = 10.0  # adaptive inter-frame consistency (COMBO: 10)
    weight_class: float = 2.0
    weight_mask: float = 5.0
    weight_dice: float = 5.0
    no_object_weight: float = 0.1
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    amp: bool = False  # bf16 autocast on GPU
    image_size: int = 128
    checkpoint_every: int = 1  # epochs
    resume: bool = True

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "num_workers", "image_size", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "lambda_ada", "weight_class", "weight_mask", "weight_dice", "no_object_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.image_size % 32:
            raise ValueError(f"train.image_size must be a multiple of 32, got {self.image_size}")
