"""Schema of conf/train/: training on Ray Train (tasks/train/, flows/train_combo.py).

The optimiser defaults are COMBO's (yannqi/COMBO-AVS ``configs/avs_*/R50-*-SemanticSegmentation.yaml``,
``SOLVER``; ``train_net.py`` ``build_optimizer``; detectron2's DeepLab config for the poly
schedule): AdamW, lr 1e-4, weight decay 0.05 (0 on norm layers and embeddings), backbone lr
x 0.1, poly decay with power 0.9 and no warm-up, the whole model's gradient clipped to L2
norm 0.01. TPAVI / AVSAC were trained otherwise by their authors (AVSBench: Adam, lr 1e-4, no
schedule): override ``train.optimizer=adam train.weight_decay=0 train.lr_schedule=constant
train.grad_clip=0 train.backbone_multiplier=1``.

Loss weights are model options (conf/model/), not training options. The loader settings are
``train.loader`` (:class:`~infra.schema.shards.LoaderConfig`: per-worker batch size, image
size, DataLoader workers, shuffle buffer, augmentation, data-order seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.schema.shards import LoaderConfig

OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("poly", "constant")
AMP_MODES = ("none", "bf16")


@dataclass
class TrainHooks:
    """TEST-ONLY hooks. Never set them for a real run."""

    # Rank fail_rank exits (os._exit, as a killed worker) once, after optimiser step
    # fail_once_at_step (counted over the whole run, from 1); a marker file in the run's folder
    # keeps it from failing again after Ray Train restarts the workers.
    fail_once_at_step: int | None = None
    fail_rank: int = 1
    # Every rank reports the clip ids it trained on in each epoch ("clip_ids" in its metrics).
    report_clip_ids: bool = False

    def __post_init__(self) -> None:
        if self.fail_once_at_step is not None and self.fail_once_at_step < 1:
            raise ValueError(f"train.hooks.fail_once_at_step must be >= 1 or null, got {self.fail_once_at_step}")
        if self.fail_rank < 0:
            raise ValueError(f"train.hooks.fail_rank must be >= 0, got {self.fail_rank}")


@dataclass
class TrainConfig:
    # -- what to train on ---------------------------------------------------------------------
    # A data set version folder made by the preprocess flow ({preprocess.output}/{name}/v-...,
    # local or s3://). null: the flow runs preprocess on the configured source first.
    dataset: str | None = None
    val_split: str | None = "val"  # validated every epoch; null = no validation
    test_split: str | None = "test"  # scored after the last epoch, and the report's split; null = none
    epochs: int = 2
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(batch_size=2, num_workers=0, image_size=128))

    # -- optimiser (COMBO's SOLVER) ----------------------------------------------------------
    optimizer: str = "adamw"  # OPTIMIZER: ADAMW
    lr: float = 1e-4  # BASE_LR (for a global batch of IMS_PER_BATCH 8)
    weight_decay: float = 0.05  # WEIGHT_DECAY
    weight_decay_norm: float = 0.0  # WEIGHT_DECAY_NORM (detectron2's default): norm layers
    weight_decay_embed: float = 0.0  # WEIGHT_DECAY_EMBED: nn.Embedding (queries, level embeddings)
    backbone_multiplier: float = 0.1  # BACKBONE_MULTIPLIER: lr of modules named *backbone*
    lr_schedule: str = "poly"  # LR_SCHEDULER_NAME: WarmupPolyLR; or constant
    poly_power: float = 0.9  # POLY_LR_POWER
    warmup_steps: int = 0  # WARMUP_ITERS (linear warm-up from warmup_factor x lr)
    warmup_factor: float = 1.0  # WARMUP_FACTOR
    grad_clip: float = 0.01  # CLIP_GRADIENTS full_model CLIP_VALUE: max L2 norm of all gradients; 0 = off
    amp: str = "none"  # none | bf16 (torch.autocast on the worker's device; COMBO: off for S4/MS3, on for AVSS)

    # -- Ray Train ------------------------------------------------------------------------------
    num_workers: int = 1  # Ray Train workers (ScalingConfig.num_workers); train.loader.num_workers is per worker
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # ScalingConfig.placement_strategy (PACK | SPREAD | STRICT_PACK | STRICT_SPREAD)
    run_name: str | None = None  # RunConfig.name; null = {model}-{time}. The same name and storage resume.
    storage_path: str | None = None  # RunConfig.storage_path, local or s3://; null = {output}/train
    resume: bool = True  # false: refuse to start when the run's folder already exists
    resume_from: str | None = None  # a checkpoint (local or s3://) to start a new run from: weights, optimiser, epoch
    checkpoint_every: int = 1  # epochs; the last epoch always writes one
    num_to_keep: int | None = 2  # CheckpointConfig.num_to_keep; null = keep every checkpoint
    max_failures: int = 2  # FailureConfig.max_failures: worker-group restarts from the last checkpoint
    collective_timeout_s: int = 1800  # TorchConfig.timeout_s: a rank stuck this long in a collective fails
    evaluate: bool = True  # the flow ends with tasks.evaluate.report.evaluate_checkpoint on test_split
    # MoCA and its similarity baseline (flows.train_moca): after the last epoch, the inference threshold
    # (model.threshold) becomes the one of a grid that scores the best mIoU on this split, and is stored
    # in the checkpoint; one number read off the split's masks, never a loss term. null = model.threshold.
    moca_threshold_split: str | None = "val"
    hooks: TrainHooks = field(default_factory=TrainHooks)

    def __post_init__(self) -> None:
        for key in ("epochs", "num_workers", "checkpoint_every", "collective_timeout_s"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "weight_decay", "weight_decay_norm", "weight_decay_embed", "backbone_multiplier",
                    "poly_power", "warmup_steps", "grad_clip", "max_failures"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"train.warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        for key, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES), ("amp", AMP_MODES),
                             ("placement_strategy", ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"train.{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key in ("val_split", "test_split"):
            if getattr(self, key) not in (None, "train", "val", "test"):
                raise ValueError(f"train.{key} must be train, val, test or null, got {getattr(self, key)!r}")
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ValueError(f"train.num_to_keep must be >= 1 or null (keep all), got {self.num_to_keep}")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name or self.run_name.startswith(".")):
            raise ValueError(f"train.run_name must be a plain folder name, got {self.run_name!r}")
        if self.loader.image_size % 32:
            raise ValueError(f"train.loader.image_size must be a multiple of 32 (the backbones' stride), "
                             f"got {self.loader.image_size}")
