"""Schema of conf/data/: which clips to read and how to decode them."""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.schema.synth import SynthConfig

SETTINGS = ("s4", "ms3", "avss")
MAX_FRAMES = 60
OBJECT_NUM_FRAMES = 5  # AVSBench S4 / MS3 clips: 5 seconds, one frame per second
VIDEO_NUM_FRAMES = 5  # video files: T when data.num_frames is null (any length FFmpeg reads)


@dataclass
class DataConfig:
    # A registered source (tasks/decode/registry.py; an unknown name fails before any work):
    # synth: generate SynthAVS into `uri`, then read it as an AVSBench folder.
    # avsbench: an AVSBench root (holding AVSBench_object/ and/or AVSBench_semantic/).
    # videos: a folder or bucket of video files (any container FFmpeg reads).
    source: str = "synth"
    uri: str = "outputs/synthavs"
    setting: str = "s4"
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    # T, frames per clip at 1 fps. null (the default) = follow the source: AVSBench S4/MS3 5;
    # AVSBench AVSS per clip from its label (v1s/v1m 5, v2 10), so it stays null here and the
    # reader decides; SynthAVS the generator's seconds for the setting (synth.num_seconds, or
    # synth.avss_num_seconds for avss: 10 gives v2 clips); videos 5. An int overrides it for
    # every clip (the first T frames; shorter clips repeat their last frame, without ground truth).
    num_frames: int | None = None
    frame_size: int = 224  # decoded frames are resized to frame_size x frame_size
    max_clips: int | None = None  # read at most this many clips (None = all)
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"data.source must name a registered source (tasks/decode/registry.py), got {self.source!r}")
        if self.setting not in SETTINGS:
            raise ValueError(f"data.setting must be one of {SETTINGS}, got {self.setting!r}")
        bad = [s for s in self.splits if s not in ("train", "val", "test")]
        if bad:
            raise ValueError(f"data.splits may hold train, val, test; got {bad}")
        t = self.num_frames
        if t is not None and (isinstance(t, bool) or not 1 <= t <= MAX_FRAMES):
            raise ValueError(f"data.num_frames must be in 1..{MAX_FRAMES}, or null to follow the source, "
                             f"got {self.num_frames}")
        if self.num_frames is None:
            self.num_frames = self.source_num_frames()
            if self.num_frames is not None and self.num_frames > MAX_FRAMES:
                raise ValueError(f"data.num_frames is null, so T follows data.synth "
                                 f"({self.num_frames} seconds), which is above {MAX_FRAMES}")
        if self.frame_size < 32 or self.frame_size % 2:
            raise ValueError(f"data.frame_size must be an even number >= 32, got {self.frame_size}")
        if self.max_clips is not None and self.max_clips < 1:
            raise ValueError(f"data.max_clips must be >= 1 or null, got {self.max_clips}")

    def source_num_frames(self) -> int | None:
        """T that data.num_frames = null stands for: an int where the configuration fixes it,
        None for AVSBench AVSS, whose T comes from each clip's label (v1s/v1m 5, v2 10)."""
        if self.source == "synth":
            return self.synth.avss_num_seconds if self.setting == "avss" else self.synth.num_seconds
        if self.source == "videos":
            return VIDEO_NUM_FRAMES
        return None if self.setting == "avss" else OBJECT_NUM_FRAMES
