"""The 23 SynthAVS object categories: each a distinct shape, a distinct sound and (for the
`easy` preset) its own colour and texture.

Categories are fixed tables, independent of the seed, so that "category 3" means the same
object in every SynthAVS data set: a model trained on one seed can be tested on another.
The first eight (the default K) are the most distinct in both shape and sound.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SoundSpec:
    """How a category sounds. kind is one of:

    tone   harmonic tone: f0, harmonics with amplitude k^-rolloff (odd_only: clarinet-like),
           vibrato (rate_hz, depth as a fraction of f0) and tremolo (rate_hz, depth)
    chirp  repeated pitch sweeps from f0 to f1, `rate_hz` sweeps per second
    noise  band-limited noise between f0 and f1, gated at `rate_hz` with duty `duty` (0 = steady)
    clicks impulse train at `rate_hz`, each click ringing at f0
    bell   strikes at `rate_hz` of inharmonic partials of f0 that decay
    siren  tone whose pitch swings by `depth` around f0 at `rate_hz`
    beep   pure-ish tone switched on and off at `rate_hz`
    """

    kind: str
    f0: float
    f1: float = 0.0
    harmonics: int = 1
    rolloff: float = 1.0
    odd_only: bool = False
    rate_hz: float = 0.0
    depth: float = 0.0
    duty: float = 0.0
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0


@dataclass(frozen=True)
class Category:
    id: int  # 1..23; 0 is background in AVSS label maps
    name: str  # also the shape's name; used as folder name and AVSS label
    sound: SoundSpec
    colour: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))  # RGB 0..255, easy preset
    texture: str = "solid"  # easy preset: solid | stripes | checker | dots | rings
    texture_freq: float = 3.0  # cycles per object radius

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "sound": self.sound.kind, "f0": self.sound.f0,
                "colour": [round(c, 1) for c in self.colour], "texture": self.texture}


_SHAPES_AND_SOUNDS: tuple[tuple[str, SoundSpec], ...] = (
    ("circle", SoundSpec("tone", 220.0, harmonics=6, rolloff=1.5, vibrato_hz=5.0, vibrato_depth=0.01)),
    ("square", SoundSpec("tone", 110.0, harmonics=16, rolloff=1.0)),
    ("triangle", SoundSpec("chirp", 600.0, f1=1200.0, harmonics=2, rate_hz=3.0)),
    ("star", SoundSpec("noise", 2000.0, f1=5000.0, rate_hz=6.0, duty=0.4)),
    ("plus", SoundSpec("clicks", 1500.0, rate_hz=12.0)),
    ("ring", SoundSpec("bell", 880.0, rate_hz=2.0)),
    ("crescent", SoundSpec("siren", 500.0, harmonics=3, rolloff=1.5, rate_hz=0.7, depth=0.3)),
    ("heart", SoundSpec("tone", 330.0, harmonics=9, rolloff=1.0, odd_only=True, rate_hz=6.0, depth=0.5)),
    ("diamond", SoundSpec("noise", 200.0, f1=600.0, rate_hz=2.0, duty=0.6)),
    ("hexagon", SoundSpec("tone", 147.0, harmonics=7, rolloff=1.2, odd_only=True, vibrato_hz=6.0, vibrato_depth=0.02)),
    ("ellipse", SoundSpec("chirp", 2000.0, f1=1000.0, harmonics=1, rate_hz=2.0)),
    ("bar", SoundSpec("clicks", 400.0, rate_hz=30.0)),
    ("arrow", SoundSpec("beep", 1320.0, harmonics=2, rolloff=2.0, rate_hz=4.0, duty=0.5)),
    ("half_disk", SoundSpec("noise", 800.0, f1=1600.0, rate_hz=3.0, duty=0.5)),
    ("trapezoid", SoundSpec("tone", 185.0, harmonics=12, rolloff=0.8, vibrato_hz=3.0, vibrato_depth=0.03)),
    ("l_shape", SoundSpec("bell", 523.0, rate_hz=3.0)),
    ("t_shape", SoundSpec("siren", 900.0, harmonics=2, rolloff=2.0, rate_hz=2.5, depth=0.15)),
    ("hourglass", SoundSpec("beep", 2000.0, harmonics=1, rate_hz=8.0, duty=0.4)),
    ("star4", SoundSpec("noise", 4000.0, f1=7000.0)),
    ("pentagon", SoundSpec("tone", 392.0, harmonics=4, rolloff=2.5, vibrato_hz=5.0, vibrato_depth=0.015)),
    ("hollow_square", SoundSpec("clicks", 3000.0, rate_hz=5.0)),
    ("teardrop", SoundSpec("chirp", 300.0, f1=500.0, harmonics=3, rate_hz=1.0)),
    ("octagon", SoundSpec("tone", 73.0, harmonics=20, rolloff=0.7, rate_hz=4.0, depth=0.4)),
)

_TEXTURES = ("solid", "stripes", "dots", "checker", "rings")


def _category_colour(i: int) -> tuple[float, float, float]:
    # Golden-ratio hue steps spread any prefix of the list evenly round the colour wheel;
    # after 12 categories, saturation and value change so that colours stay tellable.
    hue = (i * 0.618034) % 1.0
    sat, val = (0.9, 0.95) if i < 12 else (0.55, 0.7)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return (255.0 * r, 255.0 * g, 255.0 * b)


CATEGORIES: tuple[Category, ...] = tuple(
    Category(
        id=i + 1,
        name=name,
        sound=sound,
        colour=_category_colour(i),
        texture=_TEXTURES[i % len(_TEXTURES)],
        texture_freq=2.0 + (i % 3),
    )
    for i, (name, sound) in enumerate(_SHAPES_AND_SOUNDS)
)


def categories(k: int) -> tuple[Category, ...]:
    """The first k categories (k = SynthConfig.num_categories)."""
    if not 1 <= k <= len(CATEGORIES):
        raise ValueError(f"number of categories must be in 1..{len(CATEGORIES)}, got {k}")
    return CATEGORIES[:k]
