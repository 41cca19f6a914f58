"""Schema of conf/data/: which clips to read and how to decode them."""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.schema.synth import SynthConfig

SOURCES = ("synth", "avsbench", "videos")
SETTINGS = ("s4", "ms3", "avss")


@dataclass
class DataConfig:
    # synth: generate SynthAVS into `uri`, then read it as an AVSBench folder.
    # avsbench: an AVSBench root (holding AVSBench_object/ and/or AVSBench_semantic/).
    # videos: a folder or bucket of video files (any container FFmpeg reads).
    source: str = "synth"
    uri: str = "outputs/synthavs"
    setting: str = "s4"
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    num_frames: int = 5  # T: 5 for S4/MS3, 10 for AVSS v2
    frame_size: int = 224  # decoded frames are resized to frame_size x frame_size
    max_clips: int | None = None  # read at most this many clips (None = all)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.setting not in SETTINGS:
            raise ValueError(f"data.setting must be one of {SETTINGS}, got {self.setting!r}")
        bad = [s for s in self.splits if s not in ("train", "val", "test")]
        if bad:
            raise ValueError(f"data.splits may hold train, val, test; got {bad}")
        if not 1 <= self.num_frames <= 60:
            raise ValueError(f"data.num_frames must be in 1..60, got {self.num_frames}")
        if self.frame_size < 32 or self.frame_size % 2:
            raise ValueError(f"data.frame_size must be an even number >= 32, got {self.frame_size}")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError(f"data.max_clips must be >= 1 or null, got {self.max_clips}")
