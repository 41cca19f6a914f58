"""Schema of the `synth:` block in conf/data/synth_*.yaml: every knob of the SynthAVS generator.

Presets: easy | hard | sync. The dataclass defaults are the `hard` preset (the one benchmarks
use). `easy` and `sync` differ only in the fields listed in SYNTH_PRESETS; `sync` is the
synchrony diagnostic (silent twins of a source's category in every clip, which only the level
pattern over time tells apart from the source). conf/data/synth_easy.yaml, synth_hard.yaml and
synth_sync.yaml list every field with its preset value, and a test keeps the YAML files and this
table in step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MAX_CATEGORIES = 23  # as many shapes/sounds as tasks/synthavs/categories.py defines (AVSBench S4 also has 23)


@dataclass
class SynthConfig:
    # -- identity ------------------------------------------------------------------------
    preset: str = "hard"  # a name for humans and metadata; the values below are what count
    seed: int = 0  # every clip is a pure function of (seed, setting, split, index)

    # -- sizes ---------------------------------------------------------------------------
    num_categories: int = 8  # K object categories, 1..23
    frame_height: int = 128  # pixels; even, because H.264 in yuv420p needs even sizes
    frame_width: int = 128
    num_seconds: int = 5  # T of S4 / MS3 clips (AVSBench: 5)
    # T of AVSS clips: < 10 gives labels v1s / v1m, >= 10 gives v2. AVSBench-semantic has 5 (v1s / v1m)
    # and 10 (v2), and its reader lists 5 or 10 frames by label: keep to 5 or 10 for the AVSBench layout.
    avss_num_seconds: int = 5
    num_train_clips: int = 32  # clips per split, for each setting
    num_val_clips: int = 8
    num_test_clips: int = 8

    # -- appearance ----------------------------------------------------------------------
    colour_follows_category: bool = False  # easy: each category has its own colour
    texture_follows_category: bool = False  # easy: each category has its own texture
    background_contrast: float = 0.7  # 0 = flat background, 1 = strong pattern and grain
    background_saturation_max: float = 0.8  # easy keeps backgrounds greyish so colours pop
    object_scale_min: float = 0.06  # object radius as a fraction of min(H, W)
    object_scale_max: float = 0.28
    max_rotation_deg: float = 20.0  # objects tilt and sway within +-max/2 (shapes stay tellable)
    motion_amplitude: float = 0.12  # how far an object drifts, as a fraction of the frame side
    motion_period_min_s: float = 4.0  # objects move on smooth sinusoidal paths with these periods
    motion_period_max_s: float = 12.0

    # -- distractors and synchrony -------------------------------------------------------
    # share of clips that hold twins; in a clip without twins num_twins is 0, in a clip with
    # twins it is drawn from [num_twins_min, num_twins_max]
    twin_clip_prob: float = 0.25
    num_twins_min: int = 1  # silent objects of the SAME category as a sounding one
    num_twins_max: int = 2
    num_distractors_min: int = 1  # silent objects of OTHER categories (>= 1: audio must pick the category)
    num_distractors_max: int = 3
    sync_size_amplitude: float = 0.4  # radius swings by +-amp/2 with the per-second level
    sync_brightness_amplitude: float = 0.4  # brightness = 1 - amp * (1 - level)
    loudness_min: float = 0.2  # per-second loudness of a sounding second is drawn from [min, 1]
    twin_max_abs_correlation: float = 0.3  # a twin's pattern is redrawn (<= 32 times) until |corr| <= this

    # -- sources -------------------------------------------------------------------------
    silent_clip_prob: float = 0.1  # share of clips where nothing on screen sounds (empty masks)
    offscreen_sound_prob: float = 0.3  # a sound whose source is not on screen (never segmented)
    ms3_num_sources_min: int = 2
    ms3_num_sources_max: int = 3
    ms3_on_prob: float = 0.6  # chance that a multi-source object sounds in a given second
    avss_multi_source_prob: float = 0.5  # AVSS clips with several sources (v1m-like) vs one (v1s)

    # -- occlusion -----------------------------------------------------------------------
    occluder_prob: float = 0.4  # a foreground bar that partially hides a sounding object
    min_visible_fraction: float = 0.4  # a sounding object keeps at least this share visible

    # -- audio ---------------------------------------------------------------------------
    source_rms: float = 0.1  # RMS of a source at loudness 1 (16-bit wav, no clipping)
    pitch_jitter_semitones: float = 1.0  # per-object pitch spread within a category
    background_noise: bool = True
    noise_snr_db_min: float = 0.0  # noise level relative to a source at loudness 1
    noise_snr_db_max: float = 20.0

    # -- files ---------------------------------------------------------------------------
    video_fps: int = 10  # mp4 frame rate; even, so a frame falls exactly at t + 0.5 s
    video_crf: int = 20  # libx264 constant rate factor (0 = lossless, 51 = worst)
    jpeg_quality: int = 95  # AVSS frames are JPEG, as in AVSBench-semantic

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"synth.{key} {why}, got {getattr(self, key)!r}")

        if not isinstance(self.preset, str) or not self.preset:
            fail("preset", "must be a non-empty name")
        if not 1 <= self.num_categories <= MAX_CATEGORIES:
            fail("num_categories", f"must be in 1..{MAX_CATEGORIES}")
        for key in ("frame_height", "frame_width"):
            v = getattr(self, key)
            if v < 16 or v % 2:
                fail(key, "must be an even number >= 16 (H.264 yuv420p needs even sizes)")
        for key in ("num_seconds", "avss_num_seconds"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        for key in ("num_train_clips", "num_val_clips", "num_test_clips"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0")
        for key in ("background_contrast", "background_saturation_max", "loudness_min", "silent_clip_prob",
                    "offscreen_sound_prob", "ms3_on_prob", "avss_multi_source_prob", "occluder_prob",
                    "min_visible_fraction", "sync_size_amplitude", "sync_brightness_amplitude",
                    "twin_max_abs_correlation", "motion_amplitude", "twin_clip_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                fail(key, "must be in [0, 1]")
        if self.loudness_min >= 1.0:
            fail("loudness_min", "must be < 1 so that loudness can vary")
        if not 0.0 < self.object_scale_min <= self.object_scale_max <= 0.4:
            raise ValueError(
                "synth.object_scale_min / object_scale_max must satisfy 0 < min <= max <= 0.4, "
                f"got {self.object_scale_min!r} / {self.object_scale_max!r}"
            )
        if not 0.0 <= self.max_rotation_deg <= 40.0:
            fail("max_rotation_deg", "must be in [0, 40] (more and square / diamond look alike)")
        if not 0.0 < self.motion_period_min_s <= self.motion_period_max_s:
            raise ValueError(
                "synth.motion_period_min_s / motion_period_max_s must satisfy 0 < min <= max, "
                f"got {self.motion_period_min_s!r} / {self.motion_period_max_s!r}"
            )
        for lo, hi in (("num_twins_min", "num_twins_max"), ("num_distractors_min", "num_distractors_max"),
                       ("ms3_num_sources_min", "ms3_num_sources_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not 0 <= a <= b:
                raise ValueError(f"synth.{lo} / {hi} must satisfy 0 <= min <= max, got {a!r} / {b!r}")
        if self.ms3_num_sources_min < 1:
            fail("ms3_num_sources_min", "must be >= 1")
        if not 0.0 < self.source_rms <= 0.25:
            fail("source_rms", "must be in (0, 0.25] so that mixes of a few sources stay within [-1, 1]")
        if self.pitch_jitter_semitones < 0:
            fail("pitch_jitter_semitones", "must be >= 0")
        if self.noise_snr_db_min > self.noise_snr_db_max:
            raise ValueError(
                "synth.noise_snr_db_min must be <= noise_snr_db_max, "
                f"got {self.noise_snr_db_min!r} / {self.noise_snr_db_max!r}"
            )
        if self.video_fps < 2 or self.video_fps % 2:
            fail("video_fps", "must be an even number >= 2 (so that a frame falls exactly at t + 0.5 s)")
        if not 0 <= self.video_crf <= 51:
            fail("video_crf", "must be in 0..51")
        if not 1 <= self.jpeg_quality <= 100:
            fail("jpeg_quality", "must be in 1..100")

    def clips_per_split(self) -> dict[str, int]:
        return {"train": self.num_train_clips, "val": self.num_val_clips, "test": self.num_test_clips}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Values that differ from the dataclass defaults (= hard), per preset.
SYNTH_PRESETS: dict[str, dict[str, Any]] = {
    "hard": {},
    "easy": {
        "preset": "easy",
        "colour_follows_category": True,
        "texture_follows_category": True,
        "background_contrast": 0.3,
        "background_saturation_max": 0.25,
        "object_scale_min": 0.12,
        "object_scale_max": 0.2,
        "max_rotation_deg": 10.0,
        "motion_amplitude": 0.1,
        "twin_clip_prob": 0.0,
        "num_twins_min": 0,
        "num_twins_max": 0,
        "num_distractors_min": 1,
        "num_distractors_max": 2,
        "loudness_min": 0.4,
        "silent_clip_prob": 0.05,
        "offscreen_sound_prob": 0.0,
        "occluder_prob": 0.0,
        "min_visible_fraction": 0.6,
        "pitch_jitter_semitones": 0.5,
        "background_noise": False,
        "noise_snr_db_min": 20.0,
        "noise_snr_db_max": 30.0,
    },
    # The synchrony diagnostic: twins in every clip. A twin looks exactly like its source's
    # category, but its size / brightness follow an uncorrelated level pattern, so a model that
    # reads each frame alone cannot tell it from the source.
    "sync": {
        "preset": "sync",
        "twin_clip_prob": 1.0,
        "num_distractors_min": 0,
        "num_distractors_max": 2,
    },
}


def synth_preset(name: str, **overrides: Any) -> SynthConfig:
    """The SynthConfig of a named preset ('easy' | 'hard' | 'sync'), with optional field overrides."""
    if name not in SYNTH_PRESETS:
        raise ValueError(f"synth.preset must be one of {sorted(SYNTH_PRESETS)}, got {name!r}")
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown synth config key(s) {unknown}; known keys: {sorted(known)}")
    return SynthConfig(**{**SYNTH_PRESETS[name], **overrides})
