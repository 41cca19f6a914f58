"""Sampling a SynthAVS scene: which objects, which of them sound when, how they look and move.

A scene is a small plain record (no pixels, no samples) drawn from one random generator
seeded by a stable hash of (seed, setting, split, index, attempt); render.py and sound.py
turn it into frames, masks and audio. Nothing here depends on Python's hash() or on the
order in which clips are generated, so clips can be made in parallel, anywhere.

Every on-screen object has a per-second "level" sequence that drives its visible state (size
and brightness). For a sounding object the level IS its loudness; a silent twin of the same
category gets a pattern chosen to be nearly uncorrelated with the sounding one's, so only
synchrony over time tells the two apart. In `hard` a share of clips (twin_clip_prob) holds
twins and every clip has silent distractors of other categories (audio picks the category);
`sync` puts twins in every clip, as a diagnostic of audio-visual synchrony.
"""
from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass, field

import numpy as np

from infra.schema.synth import SynthConfig
from tasks.clip import SETTINGS
from tasks.synthavs.categories import Category, categories

SPLITS = ("train", "val", "test")
RAMP_S = 0.05  # loudness and visible state change between seconds over this ramp (no clicks)
FRAME_OFFSET_S = 0.5  # the 1 fps frame of second t shows the scene at t + 0.5 s
TEXTURES = ("solid", "stripes", "dots", "checker", "rings")
_CANDIDATE_PATTERNS = 32  # twin patterns tried to find one that does not follow the source


def clip_id(setting: str, split: str, index: int) -> str:
    return f"synth_{setting}_{split}_{index:05d}"


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text: the same on every machine and Python run."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def level_envelope(levels: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Per-second levels [T] -> level at each time (s), constant within a second except for a
    RAMP_S smoothstep around each boundary; exactly levels[t] at t + 0.5."""
    levels = np.asarray(levels, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    t_count = levels.shape[0]
    sec = np.clip(np.floor(times).astype(np.int64), 0, t_count - 1)
    out = levels[sec].copy()
    # Within RAMP_S/2 of boundary b (1..T-1), blend levels[b-1] -> levels[b].
    nearest = np.clip(np.rint(times).astype(np.int64), 1, max(1, t_count - 1))
    if t_count > 1:
        x = (times - nearest) / RAMP_S + 0.5
        inside = (x > 0.0) & (x < 1.0)
        s = np.clip(x, 0.0, 1.0)
        s = s * s * (3.0 - 2.0 * s)
        blend = levels[nearest - 1] + (levels[nearest] - levels[nearest - 1]) * s
        out = np.where(inside, blend, out)
    return out


@dataclass
class SceneObject:
    """One object on screen. Geometry is in pixels; times in seconds."""

    index: int  # position in SceneSpec.objects; id in instance maps is index + 1
    category: Category
    role: str  # source | twin | distractor (silent clips keep "source" for the would-be source)
    levels: np.ndarray  # [T] per-second level driving the visible state (= loudness if it sounds)
    sounding: np.ndarray  # [T] bool: does it sound in second t
    colour: tuple[float, float, float]  # RGB 0..255 at full brightness
    texture: str
    texture_freq: float
    texture_angle: float  # radians
    radius: float  # base radius (level 0.5) in pixels
    centre: tuple[float, float]  # (x, y) centre of the path
    amplitude: tuple[float, float]  # path half-extent along x and y
    period_s: tuple[float, float]
    phase: tuple[float, float]
    angle0: float  # base rotation, radians
    sway: float  # rotation swing amplitude, radians
    sway_period_s: float
    z: int  # drawing order: higher is in front
    sound_seed: int = 0
    pitch_factor: float = 1.0

    @property
    def sounds_at_all(self) -> bool:
        return bool(self.sounding.any())


@dataclass
class OffscreenSound:
    """A sound whose source is not on screen: heard, never segmented."""

    category: Category
    levels: np.ndarray  # [T] loudness
    sound_seed: int
    pitch_factor: float


@dataclass
class Occluder:
    """A foreground bar (a pole, a branch) drawn over every object; belongs to no category."""

    point: tuple[float, float]  # a point on the bar's centre line (x, y)
    angle: float  # direction of the bar, radians (near vertical or near horizontal)
    half_width: float  # pixels
    colour: tuple[float, float, float]
    stripe_freq: float  # stripes across the bar, cycles per pixel along it


@dataclass
class BackgroundSpec:
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    pattern: str  # none | stripes | checker | grid | blobs
    pattern_freq: float  # cycles per frame side
    pattern_angle: float
    contrast: float
    seed: int  # for the low-frequency field and grain


@dataclass
class SceneSpec:
    clip_id: str
    setting: str
    split: str
    index: int
    attempt: int
    num_seconds: int
    height: int
    width: int
    objects: list[SceneObject]
    background: BackgroundSpec
    offscreen: OffscreenSound | None = None
    occluder: Occluder | None = None
    silent: bool = False  # no on-screen object sounds in any second
    noise_snr_db: float | None = None  # None: no background noise
    noise_seed: int = 0
    source_rms: float = 0.1
    sync_size_amplitude: float = 0.4
    sync_brightness_amplitude: float = 0.4
    avss_label: str | None = None  # v1s | v1m | v2 for AVSS clips
    primary_category: Category | None = None  # S4 folder category (the would-be source when silent)
    category_table: tuple[Category, ...] = field(default_factory=tuple)

    def sounding_ids(self, t: int) -> list[int]:
        """Instance ids (object index + 1) of objects sounding in second t."""
        return [o.index + 1 for o in self.objects if o.sounding[t]]

    @property
    def sound_sources(self) -> list[SceneObject]:
        return [o for o in self.objects if o.sounds_at_all]


# -- sampling helpers ------------------------------------------------------------------------

def _continuous_levels(rng: np.random.Generator, t: int, lo: float) -> np.ndarray:
    """Per-second loudness in [lo, 1] that really varies (range >= half of what is possible)."""
    for _ in range(100):
        x = rng.uniform(lo, 1.0, size=t)
        if t == 1 or x.max() - x.min() >= 0.5 * (1.0 - lo):
            return x
    return np.linspace(lo, 1.0, t)[rng.permutation(t)]


def _on_off_levels(rng: np.random.Generator, t: int, lo: float, on_prob: float) -> np.ndarray:
    """Levels for an object sounding in some seconds only: 0 when off, [lo, 1] when on, >= 1 on."""
    on = rng.random(t) < on_prob
    if not on.any():
        on[rng.integers(t)] = True
    return np.where(on, rng.uniform(lo, 1.0, size=t), 0.0)


def _abs_corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(abs(np.corrcoef(a, b)[0, 1]))


def _random_colour(rng: np.random.Generator, sat_range: tuple[float, float], val_range: tuple[float, float]):
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat_range), rng.uniform(*val_range))
    return (255.0 * r, 255.0 * g, 255.0 * b)


def _colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b)))


def _sample_background(cfg: SynthConfig, rng: np.random.Generator) -> BackgroundSpec:
    smax = cfg.background_saturation_max
    a = _random_colour(rng, (0.0, smax), (0.3, 0.9))
    b = _random_colour(rng, (0.0, smax), (0.3, 0.9))
    return BackgroundSpec(
        colour_a=a,
        colour_b=b,
        pattern=str(rng.choice(["none", "stripes", "checker", "grid", "blobs"])),
        pattern_freq=float(rng.uniform(3.0, 12.0)),
        pattern_angle=float(rng.uniform(0.0, np.pi)),
        contrast=cfg.background_contrast,
        seed=int(rng.integers(2**63)),
    )


def _object_look(cfg: SynthConfig, rng: np.random.Generator, cat: Category, bg: BackgroundSpec):
    """(colour, texture, freq, angle): from the category (easy) or drawn independently (hard)."""
    if cfg.colour_follows_category:
        colour = cat.colour
    else:
        bg_mean = np.add(bg.colour_a, bg.colour_b) / 2.0
        colour = _random_colour(rng, (0.3, 1.0), (0.45, 1.0))
        for _ in range(20):  # keep the object tellable from the background
            if _colour_distance(colour, bg_mean) >= 70.0:
                break
            colour = _random_colour(rng, (0.3, 1.0), (0.45, 1.0))
    if cfg.texture_follows_category:
        texture, freq = cat.texture, cat.texture_freq
    else:
        texture, freq = str(rng.choice(TEXTURES)), float(rng.uniform(1.5, 4.5))
    return colour, texture, freq, float(rng.uniform(0.0, np.pi))


# -- the scene -------------------------------------------------------------------------------

def num_seconds_for(cfg: SynthConfig, setting: str) -> int:
    return cfg.avss_num_seconds if setting == "avss" else cfg.num_seconds


def sample_scene(cfg: SynthConfig, setting: str, split: str, index: int, attempt: int = 0) -> SceneSpec:
    """Draw one scene; a pure function of (cfg, setting, split, index, attempt)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    rng = np.random.default_rng(stable_seed("synthavs-v1", cfg.seed, setting, split, index, attempt))
    cats = categories(cfg.num_categories)
    k = len(cats)
    t = num_seconds_for(cfg, setting)
    h, w = cfg.frame_height, cfg.frame_width
    lo = cfg.loudness_min

    silent = bool(rng.random() < cfg.silent_clip_prob)
    multi = setting == "ms3" or (setting == "avss" and rng.random() < cfg.avss_multi_source_prob)
    n_sources = int(rng.integers(cfg.ms3_num_sources_min, cfg.ms3_num_sources_max + 1)) if multi else 1
    n_sources = min(n_sources, k)
    source_cats = [cats[i] for i in rng.choice(k, size=n_sources, replace=False)]

    def pattern() -> np.ndarray:
        return _on_off_levels(rng, t, lo, cfg.ms3_on_prob) if multi else _continuous_levels(rng, t, lo)

    # (category, role, levels, sounding)
    specs: list[tuple[Category, str, np.ndarray, np.ndarray]] = []
    for cat in source_cats:
        lv = pattern()
        sounding = np.zeros(t, bool) if silent else lv > 0
        specs.append((cat, "source", lv, sounding))

    has_twins = bool(rng.random() < cfg.twin_clip_prob)
    n_twins = int(rng.integers(cfg.num_twins_min, cfg.num_twins_max + 1)) if has_twins else 0
    for _ in range(n_twins):
        src = specs[int(rng.integers(n_sources))]
        # Redrawn until it does not follow its source (else the least correlated candidate;
        # with T = 2 every pair of patterns correlates +-1).
        best, best_c = None, np.inf
        for _ in range(_CANDIDATE_PATTERNS):
            cand = pattern()
            c = max(_abs_corr(cand, s[2]) for s in specs[:n_sources] if s[0].id == src[0].id)
            if c < best_c:
                best, best_c = cand, c
            if c <= cfg.twin_max_abs_correlation:
                break
        specs.append((src[0], "twin", best, np.zeros(t, bool)))

    # Distractors come from the categories no source has (with K = 8 and at most 3 sources
    # there are always some; with none left, no distractor is drawn).
    others = [c for c in cats if c.id not in {s.id for s in source_cats}]
    for _ in range(int(rng.integers(cfg.num_distractors_min, cfg.num_distractors_max + 1))):
        if not others:
            break
        specs.append((others[int(rng.integers(len(others)))], "distractor", pattern(), np.zeros(t, bool)))

    background = _sample_background(cfg, rng)

    # Geometry: radius, smooth path inside the frame, tilt. Centres are tried until the new
    # object's path keeps clear of the paths placed so far at the frame times (crowded scenes
    # still overlap; masks stay exact either way).
    side = float(min(h, w))
    grow = 1.0 + cfg.sync_size_amplitude / 2.0  # largest radius / base radius
    frame_times = np.arange(t) + FRAME_OFFSET_S
    objects: list[SceneObject] = []
    paths: list[tuple[np.ndarray, np.ndarray, float]] = []  # (xs, ys, radius) at frame times
    rot = np.deg2rad(cfg.max_rotation_deg) / 2.0
    for i, (cat, role, lv, sounding) in enumerate(specs):
        radius = float(rng.uniform(cfg.object_scale_min, cfg.object_scale_max)) * side
        radius = min(radius, 0.45 * side / grow)
        rmax = radius * grow + 1.0
        period = (float(rng.uniform(cfg.motion_period_min_s, cfg.motion_period_max_s)),
                  float(rng.uniform(cfg.motion_period_min_s, cfg.motion_period_max_s)))
        phase = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
        sx = np.sin(2 * np.pi * frame_times / period[0] + phase[0])
        sy = np.sin(2 * np.pi * frame_times / period[1] + phase[1])
        best, best_d = None, -np.inf
        for _ in range(30):
            # Anywhere in the frame; the drift shrinks near the edges so the object stays inside.
            cx, cy = float(rng.uniform(rmax, w - rmax)), float(rng.uniform(rmax, h - rmax))
            ax = max(0.0, min(cfg.motion_amplitude * w, cx - rmax, w - rmax - cx))
            ay = max(0.0, min(cfg.motion_amplitude * h, cy - rmax, h - rmax - cy))
            xs, ys = cx + ax * sx, cy + ay * sy
            d = min((float(np.min(np.hypot(xs - px, ys - py))) - 0.8 * (radius + pr)
                     for px, py, pr in paths), default=np.inf)
            if d > best_d:
                best, best_d = ((cx, cy), (ax, ay), xs, ys), d
            if d >= 0:
                break
        best_c, (ax, ay), xs, ys = best
        paths.append((xs, ys, radius))
        colour, texture, freq, tex_angle = _object_look(cfg, rng, cat, background)
        objects.append(SceneObject(
            index=i, category=cat, role=role, levels=np.asarray(lv, np.float64), sounding=sounding,
            colour=colour, texture=texture, texture_freq=freq, texture_angle=tex_angle,
            radius=radius, centre=best_c, amplitude=(ax, ay), period_s=period, phase=phase,
            angle0=float(rng.uniform(-rot, rot)) / 2.0, sway=float(rng.uniform(0.0, rot)) / 2.0,
            sway_period_s=float(rng.uniform(cfg.motion_period_min_s, cfg.motion_period_max_s)),
            z=0, sound_seed=int(rng.integers(2**63)),
            pitch_factor=float(2.0 ** (rng.uniform(-1.0, 1.0) * cfg.pitch_jitter_semitones / 12.0)),
        ))
    for z, i in enumerate(rng.permutation(len(objects))):
        objects[int(i)].z = int(z)

    offscreen = None
    if rng.random() < cfg.offscreen_sound_prob:
        visible = {o.category.id for o in objects}
        hidden = [c for c in cats if c.id not in visible]
        if hidden:
            offscreen = OffscreenSound(
                category=hidden[int(rng.integers(len(hidden)))],
                levels=_continuous_levels(rng, t, lo),
                sound_seed=int(rng.integers(2**63)),
                pitch_factor=float(2.0 ** (rng.uniform(-1.0, 1.0) * cfg.pitch_jitter_semitones / 12.0)),
            )

    occluder = None
    if rng.random() < cfg.occluder_prob:
        target = objects[int(rng.integers(n_sources))]  # hide part of a (would-be) source
        vertical = bool(rng.random() < 0.5)
        tilt = float(rng.uniform(-0.25, 0.25))
        angle = (np.pi / 2 if vertical else 0.0) + tilt
        across = np.array([-np.sin(angle), np.cos(angle)])  # unit normal of the bar
        offset = float(rng.uniform(-0.8, 0.8)) * target.radius
        occluder = Occluder(
            point=(target.centre[0] + offset * across[0], target.centre[1] + offset * across[1]),
            angle=angle,
            half_width=float(rng.uniform(0.1, 0.3)) * 2.0 * target.radius,
            colour=_random_colour(rng, (0.1, 0.6), (0.2, 0.7)),
            stripe_freq=float(rng.uniform(0.05, 0.2)),
        )

    snr = float(rng.uniform(cfg.noise_snr_db_min, cfg.noise_snr_db_max)) if cfg.background_noise else None
    avss_label = None
    if setting == "avss":
        avss_label = "v2" if t >= 10 else ("v1m" if multi else "v1s")
    return SceneSpec(
        clip_id=clip_id(setting, split, index), setting=setting, split=split, index=index, attempt=attempt,
        num_seconds=t, height=h, width=w, objects=objects, background=background, offscreen=offscreen,
        occluder=occluder, silent=silent, noise_snr_db=snr, noise_seed=int(rng.integers(2**63)),
        source_rms=cfg.source_rms, sync_size_amplitude=cfg.sync_size_amplitude,
        sync_brightness_amplitude=cfg.sync_brightness_amplitude, avss_label=avss_label,
        primary_category=source_cats[0], category_table=cats,
    )
