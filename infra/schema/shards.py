"""Schema of the shard writer and the training loader (WebDataset shards of clips)."""
from __future__ import annotations

from dataclasses import dataclass, field

FRAME_FORMATS = ("jpg", "png")


@dataclass
class ShardsConfig:
    """How clips are written into WebDataset tars."""

    samples_per_shard: int = 32  # clips per tar
    frame_format: str = "jpg"  # jpg (small, lossy) | png (lossless, ~5x larger)
    jpeg_quality: int = 95  # used when frame_format == "jpg"

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"shards.samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(f"shards.frame_format must be one of {FRAME_FORMATS}, got {self.frame_format!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"shards.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass
class LoaderConfig:
    """How shards stream into training batches."""

    batch_size: int = 8
    num_workers: int = 2  # DataLoader worker processes per training process
    shuffle_buffer: int = 256  # clips held for shuffling; 0 or 1 = no shuffling (shard order kept too)
    image_size: int = 224  # frames, Maskiges and masks are resized to image_size x image_size
    augment: bool = True  # random resized crop + horizontal flip, identical for frames, Maskiges, masks
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])  # (min, max) area fraction of the crop
    hflip_p: float = 0.5
    # Training only (with augment): the share of clips whose audio is replaced by silence and whose
    # masks are emptied (nothing sounds, so nothing is segmented). A model that never hears silence
    # in training marks pixels under silence all the same (bench/robustness.py measures it).
    silent_audio_prob: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"loader.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"loader.num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"loader.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.image_size < 8:
            raise ValueError(f"loader.image_size must be >= 8 pixels, got {self.image_size}")
        scale = list(self.crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"loader.crop_scale must be (min, max) with 0 < min <= max <= 1, got {self.crop_scale}")
        self.crop_scale = [float(scale[0]), float(scale[1])]
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ValueError(f"loader.hflip_p must be in [0, 1], got {self.hflip_p}")
        if not 0.0 <= self.silent_audio_prob <= 1.0:
            raise ValueError(f"loader.silent_audio_prob must be in [0, 1], got {self.silent_audio_prob}")
