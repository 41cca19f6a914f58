"""Schema of conf/segment/: a new video segmented by a trained checkpoint (flows/segment.py)."""
from __future__ import annotations

from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SegmentConfig:
    video: str | None = None  # the video file to segment, local or s3:// (the flow's `video` parameter wins)
    checkpoint: str | None = None  # checkpoint folder written by the training flow, local or s3://
    # Where masks/, summary.json and overlay.mp4 go; null: {output}/segments/<run>/<checkpoint>/<video name>/.
    output: str | None = None
    model: str | None = None  # a registry name (e.g. combo_tiny): refuse a checkpoint of any other model
    device: str = "auto"  # auto: cuda when there is a GPU, else cpu (also cuda:1 ...)
    # The shard data set whose preprocessing to repeat (frame size, T, log-mel framing, Maskige,
    # frame encoding); null: the one the checkpoint was trained on (its meta.json).
    dataset: str | None = None
    window_s: int | None = None  # T, seconds per model window; null: the training data set's T
    # The models' input size (a multiple of 32); null: as evaluation, the data set's frame size
    # rounded to the nearest multiple of 32.
    model_size: int | None = None
    batch_size: int = 1  # windows per model call
    overlay: bool = True  # write overlay.mp4 (sampled frames, predicted pixels highlighted, original audio)
    overlay_max_side: int = 480  # overlay frames: the source's aspect, longer side at most this (never upscaled)
    # Per-window decoding deadline: a window not decoded within this many seconds stops the run
    # with an error (the decoder runs in a child process that is then killed). null: decode here.
    decode_deadline_s: float | None = 120.0
    # Where the SAM checkpoint that made the training data's Maskiges is now; null: the path its
    # manifest records. Its sha256 must match the recorded one.
    sam_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"segment.device must be one of {DEVICES} (or cuda:N), got {self.device!r}")
        if self.window_s is not None and not 1 <= self.window_s <= 60:
            raise ValueError(f"segment.window_s must be in 1..60 or null, got {self.window_s}")
        if self.model_size is not None and (self.model_size < 32 or self.model_size % 32):
            raise ValueError(f"segment.model_size must be a multiple of 32 or null, got {self.model_size}")
        if self.batch_size < 1:
            raise ValueError(f"segment.batch_size must be >= 1, got {self.batch_size}")
        if self.overlay_max_side < 16:
            raise ValueError(f"segment.overlay_max_side must be >= 16 pixels, got {self.overlay_max_side}")
        if self.decode_deadline_s is not None and not self.decode_deadline_s > 0:
            raise ValueError(f"segment.decode_deadline_s must be > 0 seconds or null, got {self.decode_deadline_s}")
