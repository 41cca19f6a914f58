"""The video reader: any container / codec / frame rate / sample rate -> T frames at 1 fps + 16 kHz mono."""
from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from infra.storage import Storage
from tasks.decode.logmel import log_mel_examples
from tasks.decode.sources import decode_clip, list_videos
from tasks.decode.video import encode_video

SR = 16_000


def marker(i: int, width: int, height: int) -> np.ndarray:
    """A flat frame whose colour encodes its index i (R: i % 16, G: i // 16), robust to lossy codecs."""
    img = np.empty((height, width, 3), np.uint8)
    img[...] = [(i % 16) * 16 + 8, (i // 16) * 16 + 8, 128]
    return img


def read_marker(frame: np.ndarray) -> int:
    r, g = frame[..., 0].mean(), frame[..., 1].mean()
    return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))


def write_video(
    path: str,
    fps: float = 25,
    seconds: float = 5.0,
    size: tuple[int, int] = (96, 64),
    sample_rate: int = 44_100,
    channels: int = 2,
    vcodec: str = "libx264",
    acodec: str | None = "aac",
    tone_hz: float = 440.0,
    frame_times: list[float] | None = None,
) -> None:
    """A test video: frame i shows marker(i); a sine tone on every audio channel.

    frame_times (seconds) gives a variable frame rate instead of fps.
    """
    count = len(frame_times) if frame_times is not None else int(round(seconds * fps))
    frames = np.stack([marker(i, *size) for i in range(count)])
    audio = None
    if acodec:
        wave = 0.3 * np.sin(2 * np.pi * tone_hz * np.arange(int(seconds * sample_rate)) / sample_rate)
        audio = np.repeat(wave[None].astype(np.float32), channels, axis=0)
    encode_video(path, frames, fps, audio, sample_rate, vcodec=vcodec, acodec=acodec or "aac", frame_times=frame_times)


def expected_index(second: int, fps: float) -> int:
    """Index of the frame nearest to second + 0.5 s at a constant rate; a tie goes to the earlier frame."""
    x = Fraction(2 * second + 1, 2) * Fraction(fps).limit_denominator(1000)
    lower = math.floor(x)
    return lower if x - lower <= Fraction(1, 2) else lower + 1


def nearest_in_file(path: str, target: float) -> int:
    """Marker of the frame nearest to target by the time stamps stored in the file (ties: earlier)."""
    with av.open(path) as c:
        frames = [(f.pts * Fraction(f.time_base), read_marker(f.to_ndarray(format="rgb24"))) for f in c.decode(video=0)]
    target = Fraction(target).limit_denominator(1000)
    return min(frames, key=lambda tf: (abs(tf[0] - target), tf[0]))[1]


def peak_hz(audio: np.ndarray) -> int:
    return int(np.argmax(np.abs(np.fft.rfft(audio[:SR]))))  # 1 s at 16 kHz: 1 Hz bins


def decode_file(path: str, num_frames: int = 5, frame_size: int = 64):
    storage = Storage()
    refs, rejects = list_videos(os.path.dirname(path), storage)
    assert rejects == []
    (ref,) = [r for r in refs if r.uri == os.path.abspath(path)]
    return decode_clip(ref, storage, num_frames, frame_size)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("h264_aac_25fps.mp4", dict(fps=25)),
        ("h264_aac_7fps.mp4", dict(fps=7, tone_hz=1000)),
        ("mpeg4_opus_30fps.mkv", dict(fps=30, vcodec="mpeg4", acodec="libopus", sample_rate=48_000)),
        ("vp8_opus_mono.webm", dict(fps=10, vcodec="libvpx", acodec="libopus", sample_rate=48_000, channels=1)),
        ("mpeg4_mp3_22k.avi", dict(fps=12, vcodec="mpeg4", acodec="libmp3lame", sample_rate=22_050)),
        ("h264_pcm_8k.mov", dict(fps=24, acodec="pcm_s16le", sample_rate=8_000, channels=1, tone_hz=700)),
    ],
)
def test_containers_codecs_rates_decode_to_one_clip(tmp_path, name, kwargs):
    path = str(tmp_path / name)
    write_video(path, **kwargs)
    clip = decode_file(path, num_frames=5, frame_size=48)
    assert clip.frames.shape == (5, 48, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (5 * SR,) and clip.audio.dtype == np.float32
    assert clip.logmel.shape == (5, 96, 64) and clip.masks is None
    assert clip.setting == "none" and clip.gt_frames == [False] * 5
    picked = [read_marker(f) for f in clip.frames]
    assert picked == [nearest_in_file(path, t + 0.5) for t in range(5)]
    if not name.endswith(".avi"):  # AVI implies times from packet order; our writer leaves a gap after frame 0
        assert picked == [expected_index(t, kwargs["fps"]) for t in range(5)]
    assert abs(peak_hz(clip.audio) - kwargs.get("tone_hz", 440)) <= 1
    assert clip.meta["padded_seconds"] == 0 and clip.meta["audio_padded_seconds"] < 0.1
    assert clip.meta["source_sample_rate"] == kwargs.get("sample_rate", 44_100)
    np.testing.assert_allclose(clip.logmel, log_mel_examples(clip.audio, 5))


def test_stereo_is_averaged_to_mono_at_full_level(tmp_path):
    path = str(tmp_path / "stereo.mkv")
    write_video(path, fps=10, vcodec="mpeg4", acodec="pcm_s16le", sample_rate=44_100, channels=2)
    clip = decode_file(path)
    # same tone on both channels: the mean keeps amplitude 0.3 (an FFmpeg downmix would not)
    assert abs(np.abs(clip.audio[SR : 2 * SR]).max() - 0.3) < 0.01


def test_variable_frame_rate_picks_nearest_to_half_second(tmp_path):
    times = [0.0, 0.1, 0.45, 0.58, 1.2, 1.55, 1.61, 2.0, 2.47, 2.9, 3.3, 3.52, 3.9, 4.6, 4.95]
    path = str(tmp_path / "vfr.mkv")
    write_video(path, vcodec="mpeg4", acodec="pcm_s16le", sample_rate=16_000, frame_times=times)
    clip = decode_file(path)
    expected = [min(range(len(times)), key=lambda i: abs(times[i] - (t + 0.5))) for t in range(5)]
    assert expected == [2, 5, 8, 11, 13]
    assert [read_marker(f) for f in clip.frames] == expected
    assert clip.meta["frame_times"] == [times[i] for i in expected]


def test_clip_shorter_than_t_is_padded_and_says_so(tmp_path):
    path = str(tmp_path / "short.mp4")
    write_video(path, fps=25, seconds=2.3)
    clip = decode_file(path, num_frames=5)
    markers = [read_marker(f) for f in clip.frames]
    assert markers[:2] == [12, 37]
    assert markers[2:] == [56, 56, 56]  # the last frame (2.24 s) repeats for seconds 2, 3, 4
    assert clip.meta["padded_seconds"] == 3
    assert 2.6 < clip.meta["audio_padded_seconds"] < 2.75
    assert np.abs(clip.audio[int(2.4 * SR) :]).max() == 0.0  # silence past the end
    assert np.abs(clip.audio[: 2 * SR]).max() > 0.25


def test_more_seconds_than_t_takes_the_first_t(tmp_path):
    path = str(tmp_path / "long.mp4")
    write_video(path, fps=5, seconds=8)
    clip = decode_file(path, num_frames=3, frame_size=32)
    assert clip.frames.shape == (3, 32, 32, 3) and clip.audio.shape == (3 * SR,)
    assert [read_marker(f) for f in clip.frames] == [2, 7, 12]


def test_list_videos_ids_splits_and_sidecars(tmp_path):
    for rel in ("train/a.mp4", "val/sub/b.MKV", "loose.webm"):
        os.makedirs(os.path.dirname(str(tmp_path / rel)), exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "train" / "a.json").write_text("{}")
    (tmp_path / ".DS_Store").write_bytes(b"")
    (tmp_path / "notes.docx").write_bytes(b"PK")
    refs, rejects = list_videos(str(tmp_path), Storage())
    assert [(r.clip_id, r.split, r.kind) for r in refs] == [
        ("loose", "none", "video"), ("train/a", "train", "video"), ("val/sub/b", "val", "video")
    ]
    assert [(r.clip_id, r.stage, r.reason) for r in rejects] == [
        ("notes", "list", "not a video file (extension .docx)")
    ]


def test_display_rotation_is_applied(tmp_path):
    """A phone-style portrait video: stored landscape, marked 'turn 90 degrees clockwise' in tkhd."""
    import struct

    frames = np.zeros((10, 32, 64, 3), np.uint8)
    frames[:, :, :32] = 255  # left half white as stored
    path = str(tmp_path / "portrait.mp4")
    encode_video(path, frames, 10, np.zeros((1, 16_000), np.float32), 16_000)
    data = bytearray(open(path, "rb").read())
    matrix = data.find(b"tkhd") + 4 + 40  # after version/flags, times, ids, duration, layer, volume
    assert struct.unpack(">9i", data[matrix : matrix + 36])[:5] == (65536, 0, 0, 0, 65536)
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    open(path, "wb").write(bytes(data))
    clip = decode_file(path, num_frames=1, frame_size=32)
    assert clip.meta["rotation"] == -90
    top, bottom = clip.frames[0, :14].mean(), clip.frames[0, 18:].mean()
    assert top > 240 and bottom < 15  # turned clockwise: the stored left half is now on top
