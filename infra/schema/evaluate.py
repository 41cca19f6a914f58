"""Schema of conf/evaluate/: a checkpoint scored on a shard data set, and where its report goes."""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None  # checkpoint folder, local or s3:// (the flow's `checkpoint` parameter wins)
    dataset: str | None = None  # shard data set (folder of manifest.json); null: the one the checkpoint was trained on
    split: str = "test"
    # Report folder; null: {output}/evaluations/<run>/<checkpoint>/<split>/, run = the checkpoint's parent folder.
    output: str | None = None
    model: str | None = None  # a registry name (e.g. combo_tiny): refuse a checkpoint of any other model
    batch_size: int = 4
    device: str = "auto"  # auto: cuda when there is a GPU, else cpu (also cuda:1 ...)
    # Ground truth is scored at image_size x image_size; null: the data set's own frame size (native).
    image_size: int | None = None
    # The models' input size (a multiple of 32); null: image_size rounded to the nearest multiple of 32.
    model_size: int | None = None
    num_overlays: int = 4  # best and worst videos shown in overlays.png

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"evaluate.split must be one of {SPLITS}, got {self.split!r}")
        if self.batch_size < 1:
            raise ValueError(f"evaluate.batch_size must be >= 1, got {self.batch_size}")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"evaluate.device must be one of {DEVICES} (or cuda:N), got {self.device!r}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"evaluate.image_size must be >= 8 pixels or null, got {self.image_size}")
        if self.model_size is not None and (self.model_size < 32 or self.model_size % 32):
            raise ValueError(f"evaluate.model_size must be a multiple of 32 or null, got {self.model_size}")
        if self.num_overlays < 0:
            raise ValueError(f"evaluate.num_overlays must be >= 0, got {self.num_overlays}")
