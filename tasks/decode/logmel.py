"""VGGish log-mel features: T examples of 96 x 64 for a clip of T seconds.

The spectrogram is VGGish's (``vggish_input.waveform_to_examples`` with ``vggish_params``):
16 kHz mono, 25 ms (400-sample) periodic-Hann windows every 10 ms (160 samples), the
magnitude of a 512-point FFT, 64 HTK-mel bands between 125 and 7500 Hz (DC bin excluded),
log(mel + 0.01), 96 frames (0.96 s) per example. Where the examples start is the framing:

``"vggish"`` (the default)
    VGGish's own: examples follow each other without gap or overlap, so example t starts
    at 0.96 * t s (sample 15360 * t). This is what ``vggish_input`` gives, what a pretrained
    VGGish was trained on, and how AVSBench made every log-mel it uses: the S4/MS3 pickles
    (``preprocess_scripts/preprocess_s4.py``, ``preprocess_ms3.py``: ``wavfile_to_examples``
    on the 16 kHz wav) and the AVSS features (computed from ``audio.wav`` at train/test time
    in ``avs_scripts/avss/torchvggish/vggish.py``; COMBO pickles the same to ``audio.pkl`` in
    ``avs_tools/preprocess_avss_audio.py``). A 5 s clip gives 5 examples, a 10 s clip 10
    (VGGish itself would give T + 1 from T >= 25 s; we keep the first T). Example t then
    covers [0.96 t, 0.96 t + 0.975] s, drifting 0.04 s per second ahead of frame t of a
    1 fps clip (0.16 s at t = 4, 0.36 s at t = 9).
``"per_second"``
    Example t starts at second t (sample 16000 * t), so it lies within second t of a 1 fps
    clip whatever T is. Same spectrogram, other start times: use it for models whose audio
    encoder is trained from scratch on long clips, never with a pretrained VGGish or beside
    AVSBench's pickles.

Audio shorter than the examples need is zero padded (a missing second is silence,
log(0.01) in every band); AVSBench instead pads missing *examples* with zeros (AVSS) or
with the last example (S4 preprocessing). Equal wherever the audio is long enough.
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
FRAMINGS = ("vggish", "per_second")
DEFAULT_FRAMING = "vggish"
EXAMPLE_STEP = {"vggish": NUM_FRAMES * HOP, "per_second": SAMPLE_RATE}  # samples between example starts


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


def example_starts(num_seconds: int, framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """int64 [num_seconds]: the first sample of each example under framing."""
    if framing not in FRAMINGS:
        raise ValueError(f"log-mel framing must be one of {FRAMINGS}, got {framing!r}")
    return np.arange(num_seconds, dtype=np.int64) * EXAMPLE_STEP[framing]


def log_mel_examples(audio: np.ndarray, num_seconds: int, sample_rate: int = SAMPLE_RATE,
                     framing: str = DEFAULT_FRAMING) -> np.ndarray:
    """float32 [num_seconds, 96, 64] log-mel examples from mono 16 kHz audio (see the module
    docstring for the two framings). Audio shorter than the examples need is zero padded,
    so every clip yields exactly num_seconds examples."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"log-mel needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz (resample first)")
    if num_seconds < 1:
        raise ValueError(f"num_seconds must be >= 1, got {num_seconds}")
    starts = example_starts(num_seconds, framing)
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    need = int(starts[-1]) + EXAMPLE_SAMPLES
    if audio.size < need:
        audio = np.pad(audio, (0, need - audio.size))
    offsets = (np.arange(NUM_FRAMES) * HOP)[None, :, None] + np.arange(WINDOW)[None, None, :]
    frames = audio[starts[:, None, None] + offsets] * _WINDOW  # [T, 96, 400]
    spectrum = np.abs(np.fft.rfft(frames, n=FFT, axis=-1))  # [T, 96, 257]
    return np.log(spectrum @ _MEL + LOG_OFFSET).astype(np.float32)


def silence(num_seconds: int) -> np.ndarray:
    """float32 [num_seconds, 96, 64]: the log-mel examples of a silent clip (every bin is
    log(LOG_OFFSET), whatever the framing), rounded through float16 as the shards store them."""
    return log_mel_examples(np.zeros(1), num_seconds).astype(np.float16).astype(np.float32)
