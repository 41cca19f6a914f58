"""SynthAVS audio: category sounds, per-second loudness envelopes, off-screen sounds, noise.

Every waveform is made at 16 kHz, mono, and normalised to unit RMS before the loudness
envelope scales it, so the per-second level of a source is its loudness (up to the small
ripple of its own rhythm). The mix is scaled down as a whole if it would clip, which keeps
every within-clip loudness relation intact.
"""
from __future__ import annotations

import numpy as np

from tasks.clip import SAMPLE_RATE
from tasks.synthavs.categories import SoundSpec
from tasks.synthavs.scene import SceneSpec, level_envelope

_BELL_PARTIALS = ((1.0, 1.0, 0.35), (2.76, 0.6, 0.2), (5.40, 0.4, 0.12), (8.93, 0.25, 0.08))  # ratio, amp, decay s
_EDGE_S = 0.005  # on/off gates ramp over 5 ms so they do not click


def _harmonic_stack(phase: np.ndarray, spec: SoundSpec, f_max: float, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics k of a running phase, amplitude k^-rolloff, below f_max (no aliasing)."""
    out = np.zeros_like(phase)
    ks = range(1, 2 * spec.harmonics, 2) if spec.odd_only else range(1, spec.harmonics + 1)
    nyquist = 0.45 * SAMPLE_RATE
    for k in ks:
        if k * f_max >= nyquist:
            break
        out += k ** -spec.rolloff * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def _phase(freq: np.ndarray) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE


def _gate(t: np.ndarray, rate_hz: float, duty: float, start: float) -> np.ndarray:
    """Smoothed on/off gate in [0, 1]: on for `duty` of every 1/rate_hz period."""
    pos = np.mod(t * rate_hz + start, 1.0) / rate_hz  # seconds into the current period
    on_s = duty / rate_hz
    edge = min(_EDGE_S, on_s / 2)
    rise = np.clip(pos / edge, 0.0, 1.0)
    fall = np.clip((on_s - pos) / edge, 0.0, 1.0)
    return np.minimum(rise, fall)


def _band_noise(n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spectrum[(freqs < lo) | (freqs > min(hi, 0.49 * SAMPLE_RATE))] = 0.0
    return np.fft.irfft(spectrum, n)


def _struck(n: int, rate_hz: float, kernel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Impulse train at rate_hz (random start) convolved with a strike kernel."""
    start = rng.uniform(0, 1.0 / rate_hz)
    hits = np.arange(start, n / SAMPLE_RATE, 1.0 / rate_hz)
    train = np.zeros(n + kernel.size)
    train[(hits * SAMPLE_RATE).astype(np.int64)] = 1.0
    size = 1 << int(np.ceil(np.log2(train.size + kernel.size)))
    out = np.fft.irfft(np.fft.rfft(train, size) * np.fft.rfft(kernel, size), size)
    return out[:n]


def category_waveform(spec: SoundSpec, num_samples: int, pitch_factor: float, rng: np.random.Generator) -> np.ndarray:
    """float64 [num_samples] of one category's sound at unit RMS (before any loudness envelope)."""
    n = num_samples
    t = np.arange(n) / SAMPLE_RATE
    f0 = spec.f0 * pitch_factor
    kind = spec.kind
    if kind in ("tone", "siren", "beep"):
        depth = spec.depth if kind == "siren" else spec.vibrato_depth
        rate = spec.rate_hz if kind == "siren" else spec.vibrato_hz
        freq = f0 * (1.0 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        wave = _harmonic_stack(_phase(freq), spec, f0 * (1 + depth), rng)
        if kind == "tone" and spec.rate_hz > 0 and spec.depth > 0:  # tremolo
            wave *= 1.0 - spec.depth * (0.5 + 0.5 * np.sin(2 * np.pi * spec.rate_hz * t + rng.uniform(0, 2 * np.pi)))
        if kind == "beep":
            wave *= _gate(t, spec.rate_hz, spec.duty, rng.random())
    elif kind == "chirp":
        frac = np.mod(t * spec.rate_hz + rng.random(), 1.0)
        f1 = spec.f1 * pitch_factor
        freq = f0 * (f1 / f0) ** frac
        wave = _harmonic_stack(_phase(freq), spec, max(f0, f1), rng)
    elif kind == "noise":
        wave = _band_noise(n, f0, spec.f1 * pitch_factor, rng)
        if spec.rate_hz > 0 and spec.duty > 0:
            wave *= _gate(t, spec.rate_hz, spec.duty, rng.random())
    elif kind == "clicks":
        kt = np.arange(int(0.03 * SAMPLE_RATE)) / SAMPLE_RATE
        kernel = np.sin(2 * np.pi * f0 * kt) * np.exp(-kt / 0.006)
        wave = _struck(n, spec.rate_hz, kernel, rng)
    elif kind == "bell":
        kt = np.arange(int(SAMPLE_RATE / spec.rate_hz)) / SAMPLE_RATE
        kernel = sum(a * np.sin(2 * np.pi * f0 * r * kt) * np.exp(-kt / d)
                     for r, a, d in _BELL_PARTIALS if f0 * r < 0.45 * SAMPLE_RATE)
        wave = _struck(n, spec.rate_hz, kernel, rng)
    else:
        raise ValueError(f"unknown SynthAVS sound kind {kind!r}")
    rms = float(np.sqrt(np.mean(wave * wave)))
    return wave / rms if rms > 0 else wave


def pink_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """float64 [num_samples], 1/f power spectrum, unit RMS: an ambient background."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(freqs[1:] / freqs[1])
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, num_samples)
    return noise / float(np.sqrt(np.mean(noise * noise)))


def source_track(spec: SoundSpec, levels: np.ndarray, sound_seed: int, pitch_factor: float,
                 rms: float, num_samples: int) -> np.ndarray:
    """float64 [num_samples]: a category's sound under its per-second loudness envelope."""
    rng = np.random.default_rng(sound_seed)
    env = level_envelope(levels, np.arange(num_samples) / SAMPLE_RATE)
    return rms * env * category_waveform(spec, num_samples, pitch_factor, rng)


def render_audio(scene: SceneSpec) -> np.ndarray:
    """float32 [T * 16000] in [-1, 1]: sounding objects + off-screen sound + background noise."""
    n = scene.num_seconds * SAMPLE_RATE
    mix = np.zeros(n)
    for obj in scene.objects:
        if obj.sounds_at_all:
            levels = np.where(obj.sounding, obj.levels, 0.0)
            mix += source_track(obj.category.sound, levels, obj.sound_seed, obj.pitch_factor, scene.source_rms, n)
    if scene.offscreen is not None:
        off = scene.offscreen
        mix += source_track(off.category.sound, off.levels, off.sound_seed, off.pitch_factor, scene.source_rms, n)
    if scene.noise_snr_db is not None:
        noise_rms = scene.source_rms / 10.0 ** (scene.noise_snr_db / 20.0)
        mix += noise_rms * pink_noise(n, np.random.default_rng(scene.noise_seed))
    peak = float(np.max(np.abs(mix))) if n else 0.0
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32)


def per_second_rms(audio: np.ndarray, num_seconds: int) -> np.ndarray:
    """float64 [T]: RMS of each second of audio (what 'loudness per second' is measured as)."""
    x = np.asarray(audio, dtype=np.float64)[: num_seconds * SAMPLE_RATE].reshape(num_seconds, SAMPLE_RATE)
    return np.sqrt(np.mean(x * x, axis=1))
