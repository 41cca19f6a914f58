"""VGGish-compatible log-mel features: one 96 x 64 example per second of audio.

Framing follows VGGish: 16 kHz mono, 25 ms periodic-Hann windows every 10 ms, a
512-point FFT magnitude, 64 HTK-mel bands between 125 and 7500 Hz, log(mel + 0.01),
96 frames (0.96 s) per example. VGGish itself steps examples by 0.96 s; we start
example t at second t instead, so that it lines up with frame t of a 1 fps clip
(the choice matters only for clips longer than a few seconds).
"""
from __future__ import annotations

import numpy as np

from tasks.clip import SAMPLE_RATE

WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512
NUM_BANDS = 64
NUM_FRAMES = 96
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_SAMPLES = (NUM_FRAMES - 1) * HOP + WINDOW  # 15600 samples cover 96 frames


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[FFT//2 + 1, 64] triangular HTK-mel weights, zero on the DC bin, as VGGish builds them."""
    bins = FFT // 2 + 1
    bin_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2.0, bins))
    edges = np.linspace(_hz_to_mel(MEL_LOW_HZ), _hz_to_mel(MEL_HIGH_HZ), NUM_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (center - lower)
    falling = (upper - bin_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


_MEL = mel_matrix()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)).astype(np.float64)  # periodic Hann


def log_mel_examples(audio: np.ndarray, num_seconds: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [num_seconds, 96, 64] log-mel examples from mono 16 kHz audio.

    Audio shorter than num_seconds is zero padded, so every clip yields exactly T examples.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"log-mel needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz (resample first)")
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    need = (num_seconds - 1) * sample_rate + EXAMPLE_SAMPLES
    if audio.size < need:
        audio = np.pad(audio, (0, need - audio.size))
    starts = (np.arange(num_seconds) * sample_rate)[:, None, None]
    offsets = (np.arange(NUM_FRAMES) * HOP)[None, :, None] + np.arange(WINDOW)[None, None, :]
    frames = audio[starts + offsets] * _WINDOW  # [T, 96, 400]
    spectrum = np.abs(np.fft.rfft(frames, n=FFT, axis=-1))  # [T, 96, 257]
    return np.log(spectrum @ _MEL + LOG_OFFSET).astype(np.float32)
