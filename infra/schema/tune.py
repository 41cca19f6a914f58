"""Schema of conf/tune/: Ray Tune over loss weights."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TuneConfig:
    num_samples: int = 4
    metric: str = "val_miou"
    mode: str = "max"
    scheduler: str = "asha"
    max_epochs: int = 4
    grace_period: int = 1
    lambda_ada: list[float] = field(default_factory=lambda: [1.0, 30.0])  # log-uniform range
    weight_dice: list[float] = field(default_factory=lambda: [1.0, 10.0])

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"tune.num_samples must be >= 1, got {self.num_samples}")
        if self.mode not in ("max", "min"):
            raise ValueError(f"tune.mode must be max or min, got {self.mode!r}")
        if self.scheduler not in ("asha", "fifo"):
            raise ValueError(f"tune.scheduler must be asha or fifo, got {self.scheduler!r}")
        for key in ("lambda_ada", "weight_dice"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"tune.{key} must be [low, high] with 0 < low <= high, got {lo_hi}")
