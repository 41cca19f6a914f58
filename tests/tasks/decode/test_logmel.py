"""VGGish log-mel: shapes, padding, the band a pure tone lands in, and both framings (VGGish's
0.96 s steps, checked against a transcription of vggish_input's framing, and per-second)."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.decode.logmel import (
    DEFAULT_FRAMING,
    FFT,
    HOP,
    LOG_OFFSET,
    WINDOW,
    _hz_to_mel,
    example_starts,
    log_mel_examples,
    mel_matrix,
)


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


@pytest.mark.parametrize("framing, example_1", [("per_second", 16000), ("vggish", 15360)])
def test_one_frame_matches_a_direct_computation(framing, example_1):
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(16000 * 2) * 0.1
    out = log_mel_examples(audio, num_seconds=2, framing=framing)
    start = example_1 + 7 * HOP  # example 1, frame 7
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)
    spectrum = np.abs(np.fft.rfft(audio[start : start + WINDOW] * window, n=FFT))
    expected = np.log(spectrum @ mel_matrix() + LOG_OFFSET)
    np.testing.assert_allclose(out[1, 7], expected, rtol=1e-5, atol=1e-5)


# -- an independent transcription of VGGish's input pipeline (vggish_input.waveform_to_examples
# with vggish_params: 25 ms window, 10 ms hop, 64 mel bands 125-7500 Hz, log offset 0.01,
# 0.96 s examples every 0.96 s), written from its description, loops where it helps reading.
def _vggish_reference(signal: np.ndarray, sr: int = 16000) -> np.ndarray:
    win = int(round(0.025 * sr))  # 400
    hop = int(round(0.010 * sr))  # 160
    nfft = 2 ** int(np.ceil(np.log2(win)))  # 512
    count = 1 + (len(signal) - win) // hop  # whole windows only, no padding
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic
    spec = np.stack([np.abs(np.fft.rfft(signal[j * hop : j * hop + win] * hann, nfft)) for j in range(count)])
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731  HTK
    bins = mel(np.linspace(0.0, sr / 2, nfft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 64 + 2)
    weights = np.zeros((nfft // 2 + 1, 64))
    for b in range(64):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        weights[:, b] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None)
    weights[0] = 0.0  # no DC
    log_mel = np.log(spec @ weights + 0.01)
    per_example = int(round(0.96 / 0.010))  # 96 frames, and as many between example starts
    examples = 1 + (len(log_mel) - per_example) // per_example
    return np.stack([log_mel[e * per_example : (e + 1) * per_example] for e in range(examples)]).astype(np.float32)


def _test_signal(seconds: int) -> np.ndarray:
    """A chirp over rising noise: every 10 ms looks different, so a shifted framing shows."""
    rng = np.random.default_rng(seconds)
    t = np.arange(seconds * 16000) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 300 * t**2))
    return chirp + rng.standard_normal(t.size) * np.linspace(0.001, 0.2, t.size)


@pytest.mark.parametrize("seconds", [5, 10])
def test_vggish_framing_matches_vggish_input(seconds):
    audio = _test_signal(seconds)
    reference = _vggish_reference(audio)
    assert reference.shape == (seconds, 96, 64)  # 5 s -> 5 examples, 10 s -> 10, as AVSBench gets them
    ours = log_mel_examples(audio, seconds, framing="vggish")
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)
    # the per-second framing is the same spectrogram started elsewhere: equal at t = 0 only
    per_second = log_mel_examples(audio, seconds, framing="per_second")
    np.testing.assert_allclose(per_second[0], reference[0], atol=1e-4)
    assert np.abs(per_second[1:] - reference[1:]).mean(axis=(1, 2)).min() > 0.05


def test_example_hops_and_default_framing():
    assert list(example_starts(4, "vggish")) == [0, 15360, 30720, 46080]  # 0.96 s steps
    assert list(example_starts(4, "per_second")) == [0, 16000, 32000, 48000]
    assert DEFAULT_FRAMING == "vggish"
    audio = _test_signal(3)
    np.testing.assert_array_equal(log_mel_examples(audio, 3), log_mel_examples(audio, 3, framing="vggish"))
    # VGGish's examples lie back to back: example 1 is the 96 frames right after example 0
    long = log_mel_examples(audio, 2, framing="vggish")
    frame_96 = audio[96 * HOP : 96 * HOP + WINDOW] * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW))
    np.testing.assert_allclose(long[1, 0], np.log(np.abs(np.fft.rfft(frame_96, FFT)) @ mel_matrix() + LOG_OFFSET),
                               atol=1e-5)
    with pytest.raises(ValueError, match="framing"):
        log_mel_examples(audio, 3, framing="vggish_exact")
    with pytest.raises(ValueError, match="num_seconds"):
        log_mel_examples(audio, 0)


def test_long_clips_keep_t_examples_and_pad_with_silence():
    # VGGish would give 26 examples from 25 s; we keep T = 25. Short audio is padded with silence.
    assert log_mel_examples(np.zeros(25 * 16000), 25).shape == (25, 96, 64)
    out = log_mel_examples(_test_signal(1), 3)
    assert np.allclose(out[2], np.log(LOG_OFFSET)) and not np.allclose(out[0], np.log(LOG_OFFSET))
