"""Schema of conf/tune/: Ray Tune over COMBO's loss weights and the learning rate (tasks/tune/,
flows/tune_combo.py).

The search space: one ``[low, high]`` range per searched key, sampled log-uniformly (every one
is a positive scale: λada, the three loss weights, the learning rate; a ratio matters, not a
difference); ``low == high`` fixes the value; ``null`` leaves the key out of the search (the
model's or train's own value applies). Each trial trains the composed config with its sampled
values put in place (``model.lambda_ada``, ``model.weight_class``, ``model.weight_mask``,
``model.weight_dice``, ``train.lr``) for ``max_epochs`` epochs, unless ASHA stops it earlier at
a rung (``grace_period``, then every ``reduction_factor`` times as many epochs) for a ``metric``
in the bottom of the trials that reached that rung.

Trial size: each trial is one Ray Train run of ``workers_per_trial`` workers (null: the train
config's), each with ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (0 or 1: Ray Train
gives a GPU worker one whole GPU), plus the trial's own process (it builds the ``TorchTrainer``
and waits on it) with ``driver_cpus`` CPUs. ``max_concurrent_trials`` null: as many trials as
the cluster's CPUs and GPUs hold at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Searched keys and where each lands in the run's config.
SEARCH_KEYS = {"lambda_ada": "model", "weight_class": "model", "weight_mask": "model", "weight_dice": "model",
               "lr": "train"}
SCHEDULERS = ("asha", "fifo")


@dataclass
class TuneConfig:
    # -- the search ----------------------------------------------------------------------------
    # Ranges [low, high], log-uniform; null = not searched.
    lambda_ada: list[float] | None = field(default_factory=lambda: [1.0, 30.0])  # COMBO: 10
    weight_class: list[float] | None = field(default_factory=lambda: [0.5, 5.0])  # COMBO: 2
    weight_mask: list[float] | None = field(default_factory=lambda: [1.0, 10.0])  # COMBO: 5
    weight_dice: list[float] | None = field(default_factory=lambda: [1.0, 10.0])  # COMBO: 5
    lr: list[float] | None = field(default_factory=lambda: [1.0e-5, 1.0e-3])  # COMBO: 1e-4
    num_samples: int = 4  # trials
    seed: int | None = 0  # of the sampling: the same seed samples the same trials; null = random

    # -- ASHA on the validation metric -----------------------------------------------------------
    metric: str = "val_miou"  # a metric the training loop reports every epoch (val_*, train_loss)
    mode: str = "max"
    scheduler: str = "asha"  # asha | fifo (every trial runs max_epochs)
    max_epochs: int = 4  # epochs of a trial that is never stopped (ASHA's max_t, the poly schedule's length)
    grace_period: int = 1  # epochs before ASHA may stop a trial (its first rung)
    reduction_factor: float = 4.0  # ASHA: rungs every reduction_factor x epochs; the top 1/reduction_factor go on

    # -- trial size -------------------------------------------------------------------------------
    workers_per_trial: int | None = None  # Ray Train workers per trial; null = train.num_workers
    cpus_per_worker: float | None = None  # null = train.cpus_per_worker
    gpus_per_worker: int | None = None  # 0 or 1; null = 1 when train.use_gpu, else 0
    driver_cpus: float = 0.0  # the trial's own process, which only builds the TorchTrainer and waits
    max_concurrent_trials: int | None = None  # null = as many as the cluster's CPUs and GPUs hold

    # -- where ------------------------------------------------------------------------------------
    name: str | None = None  # the tune run's folder name; null = tune-{model}-{time}
    storage_path: str | None = None  # local or s3://; null = {output}/tune

    def ranges(self) -> dict[str, list[float]]:
        """The searched keys and their [low, high] ranges."""
        return {k: list(getattr(self, k)) for k in SEARCH_KEYS if getattr(self, k) is not None}

    def __post_init__(self) -> None:
        for key in ("num_samples", "max_epochs", "grace_period"):
            if getattr(self, key) < 1:
                raise ValueError(f"tune.{key} must be >= 1, got {getattr(self, key)}")
        if self.grace_period > self.max_epochs:
            raise ValueError(f"tune.grace_period must be <= tune.max_epochs ({self.max_epochs}), "
                             f"got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ValueError(f"tune.reduction_factor must be > 1, got {self.reduction_factor}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"tune.mode must be max or min, got {self.mode!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"tune.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.metric.startswith("test_"):
            raise ValueError(f"tune.metric={self.metric}: the test split is scored once, after the last epoch, and never "
                             "in a trial (model selection stays off the test split); use a val_* metric")
        if not self.metric.startswith(("val_", "train_")):
            raise ValueError(f"tune.metric must be a per-epoch metric of the training loop (val_miou, val_fscore, "
                             f"train_loss ...), got {self.metric!r}")
        for key in SEARCH_KEYS:
            lo_hi = getattr(self, key)
            if lo_hi is not None and (len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]):
                raise ValueError(f"tune.{key} must be [low, high] with 0 < low <= high (log-uniform), or null "
                                 f"(not searched), got {list(lo_hi)}")
        if self.workers_per_trial is not None and self.workers_per_trial < 1:
            raise ValueError(f"tune.workers_per_trial must be >= 1 or null, got {self.workers_per_trial}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"tune.cpus_per_worker must be > 0 or null, got {self.cpus_per_worker}")
        if self.gpus_per_worker not in (None, 0, 1):
            raise ValueError(f"tune.gpus_per_worker must be 0, 1 or null (Ray Train gives a GPU worker one whole "
                             f"GPU), got {self.gpus_per_worker}")
        if self.driver_cpus < 0:
            raise ValueError(f"tune.driver_cpus must be >= 0, got {self.driver_cpus}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"tune.max_concurrent_trials must be >= 1 or null (from the cluster), "
                             f"got {self.max_concurrent_trials}")
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"tune.name must be a plain folder name, got {self.name!r}")
