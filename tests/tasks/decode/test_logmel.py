"""VGGish-framed log-mel: shapes, padding, and the band a pure tone lands in."""
from __future__ import annotations

import numpy as np

from tasks.decode.logmel import FFT, HOP, LOG_OFFSET, WINDOW, _hz_to_mel, log_mel_examples, mel_matrix


def test_shape_and_padding_of_short_audio():
    out = log_mel_examples(np.zeros(16000 * 2, np.float32), num_seconds=5)
    assert out.shape == (5, 96, 64) and out.dtype == np.float32
    assert np.allclose(out, np.log(LOG_OFFSET))  # silence (and padding) is log(offset)


def test_tone_peaks_in_its_mel_band():
    sr, f0 = 16000, 1000.0
    t = np.arange(sr * 3) / sr
    out = log_mel_examples(0.5 * np.sin(2 * np.pi * f0 * t), num_seconds=3)
    edges = np.linspace(_hz_to_mel(125.0), _hz_to_mel(7500.0), 66)
    expected_band = int(np.argmin(np.abs(edges[1:-1] - _hz_to_mel(f0))))
    assert abs(int(out.mean(axis=(0, 1)).argmax()) - expected_band) <= 1


def test_one_frame_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(16000 * 2) * 0.1
    out = log_mel_examples(audio, num_seconds=2)
    start = 16000 + 7 * HOP  # second 1, frame 7
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)
    spectrum = np.abs(np.fft.rfft(audio[start : start + WINDOW] * window, n=FFT))
    expected = np.log(spectrum @ mel_matrix() + LOG_OFFSET)
    np.testing.assert_allclose(out[1, 7], expected, rtol=1e-5, atol=1e-5)
