"""Windows of T seconds of a video file of any length, decoded in one streaming pass.

Each window is what :func:`tasks.decode.video.read_av` gives for a clip of T seconds, applied
to seconds [k T, (k + 1) T) of the file:

- frames: for second s the decoded frame whose presentation time is nearest to s + 0.5 s
  (exact rational arithmetic, a tie goes to the earlier frame, times from the container's
  start), turned upright and resized to frame_size x frame_size (bilinear, aspect ignored),
  with :func:`tasks.decode.video.upright` and :func:`~tasks.decode.video.resize_rgb`;
- audio: the first audio track resampled by FFmpeg to 16 kHz, averaged over its channels,
  placed on the same time line, samples [16000 k T, 16000 (k + 1) T), zeros where the track
  has none.

So window 0 of a file equals ``read_av(path, T, frame_size)`` sample for sample, and the
frames of all windows together equal ``read_av`` over the whole length (the tests check both).
Unlike ``read_av``, the file is read once whatever its length, window after window, in memory
bounded by one window (``read_av`` keeps every picked frame at full resolution and compares
each decoded frame with every target).

The last window: when the video ends inside it, its missing seconds repeat the last frame, and
hold the audio that is there (else silence), as ``read_av`` pads a short clip; ``Window.real``
counts the seconds that hold video (second s holds video when the video lasts past s + 0.5 s).

A file without an audio track is read too (``VideoFacts.audio_codec`` None, silent windows),
where the clip readers reject it. Everything else that is wrong with a file is a
:class:`~tasks.clip.ClipDecodeError` with the readers' own reasons ("not a video: ...",
"truncated or corrupt: ...", "zero frames: ...", "too short: ...").

For the deadline (:mod:`tasks.decode.deadline`), :class:`WindowStream` runs the reader in a
child process through the module functions :func:`open_reader`, :func:`next_window` and
:func:`close_reader`, which keep the open reader in the child between calls.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from tasks.clip import SAMPLE_RATE, ClipDecodeError
from tasks.decode.deadline import ChildDied, DeadlineExceeded, DeadlineRunner
from tasks.decode.video import (
    MIN_VIDEO_SECONDS,
    TRUNCATION_TOLERANCE_S,
    ffmpeg_logs_out_of_python,
    ffmpeg_message,
    frame_time,
    open_container,
    playback_origin,
    resize_rgb,
    upright,
)

# Sample rates FFmpeg's AAC encoder takes; the overlay keeps the source's rate when it is one.
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


@dataclass
class VideoFacts:
    """What the file is: its container and streams as declared, then what decoding found."""

    container: str
    video_codec: str
    fps: float | None
    width: int  # as stored, before any display rotation
    height: int
    declared_seconds: float | None
    audio_codec: str | None = None  # None: no audio track
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    # filled in as decoding goes
    rotation: int = 0
    display_size: tuple[int, int] | None = None  # (width, height) of the overlay frames
    frames_decoded: int = 0
    video_seconds: float = 0.0  # end of the last decoded frame
    audio_seconds: float = 0.0  # end of the decoded audio (0 without audio)
    num_seconds: int = 0  # seconds holding video (s + 0.5 < video_seconds)

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "container": self.container, "video_codec": self.video_codec, "fps": self.fps,
            "size": [self.width, self.height], "rotation": self.rotation,
            "duration_s": round(self.video_seconds, 3), "declared_duration_s": self.declared_seconds,
            "frames_decoded": self.frames_decoded, "seconds": self.num_seconds,
            "has_audio": self.has_audio, "audio": self.audio_codec or "none",
            "audio_sample_rate": self.audio_sample_rate, "audio_channels": self.audio_channels,
            "audio_seconds": round(self.audio_seconds, 3),
        }


@dataclass
class Window:
    """Seconds [start, start + T) of the file."""

    index: int
    start: int  # first second
    frames: np.ndarray  # uint8 [T, S, S, 3], what the model reads (padded seconds repeat the last frame)
    audio: np.ndarray  # float32 [T * 16000], mono 16 kHz
    real: int  # seconds holding video (T but in the last window)
    frame_times: list[float]  # presentation time (s from the start) of each real second's frame
    audio_seconds: float  # seconds of this window holding decoded audio
    display: np.ndarray | None = None  # uint8 [real, h, w, 3] overlay frames (source aspect), or None
    original_audio: np.ndarray | None = None  # float32 [channels, real * rate] for the overlay, or None
    original_rate: int | None = None


# -- pieces ----------------------------------------------------------------------------------
class _Picker:
    """For each second of one window, the decoded frame nearest to second + 0.5 s (as
    tasks.decode.video's picker, targets counted from the file's start)."""

    def __init__(self, index: int, window_s: int):
        self.index = index
        self.start = index * window_s
        self.targets = [Fraction(2 * (self.start + t) + 1, 2) for t in range(window_s)]
        self.best: list[Any] = [None] * window_s
        self.best_time: list[Fraction] = [Fraction(0)] * window_s
        self.done = False

    def offer(self, frame: Any, t: Fraction) -> None:
        for i, target in enumerate(self.targets):
            if self.best[i] is None or abs(t - target) < abs(self.best_time[i] - target):
                self.best[i] = frame
                self.best_time[i] = t
        if t >= self.targets[-1]:  # frames come in presentation order: none can be nearer now
            self.done = True


class _Track:
    """One decoded audio track, resampled, on the file's time line (sample 0 = the container's
    start), kept from the first sample a window still needs."""

    def __init__(self, origin: Fraction, rate: int, layout: str | None, mix_to_mono: bool):
        import av

        self.origin = origin
        self.rate = rate
        self.mix_to_mono = mix_to_mono
        self.first: int | None = None  # time-line index of the first decoded sample
        self.chunks: list[np.ndarray] = []  # [channels, n] each
        self.kept_from = 0  # time-line index of chunks[0][:, 0]
        self.length = 0  # samples decoded in all
        self.ended = False
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)

    @property
    def end(self) -> int:
        """Time-line index just past the last decoded sample."""
        return (self.first or 0) + self.length

    def add(self, frame: Any) -> None:
        if self.first is None:
            t = frame_time(frame)
            self.first = round((t - self.origin) * self.rate) if t is not None else 0
            self.kept_from = self.first
        for out in self._resampler.resample(frame):
            self._append(out)

    def finish(self) -> None:
        if not self.ended:
            for out in self._resampler.resample(None):
                self._append(out)
            self.ended = True

    def _append(self, out: Any) -> None:
        chunk = out.to_ndarray()  # [channels, n], planar float
        if self.mix_to_mono:  # as tasks.decode.video's audio track: the mean of the channels, in float64
            mono = chunk.mean(axis=0, dtype=np.float64) if chunk.shape[0] > 1 else chunk[0]
            chunk = mono.astype(np.float32)[None]
        self.chunks.append(np.asarray(chunk, dtype=np.float32))
        self.length += chunk.shape[1]

    def covers(self, stop: int) -> bool:
        return self.ended or (self.first is not None and self.end >= stop)

    def take(self, start: int, stop: int, channels: int) -> tuple[np.ndarray, int]:
        """float32 [channels, stop - start] of the time line (zeros where nothing was decoded), and
        how many of those samples were decoded. Samples before stop are let go."""
        out = np.zeros((channels, stop - start), np.float32)
        if self.first is None or not self.chunks:
            return out, 0
        kept = np.concatenate(self.chunks, axis=1) if len(self.chunks) > 1 else self.chunks[0]
        lo, hi = max(start, self.kept_from), min(stop, self.kept_from + kept.shape[1])
        if hi > lo:
            out[:, lo - start : hi - start] = kept[:, lo - self.kept_from : hi - self.kept_from]
        drop = min(max(0, stop - self.kept_from), kept.shape[1])  # windows come in order: none needs these again
        rest = kept[:, drop:]
        self.chunks, self.kept_from = ([rest] if rest.shape[1] else []), self.kept_from + drop
        return out, max(0, hi - lo)


@dataclass
class _Pictures:
    """A window whose frames are final, waiting for its audio."""

    index: int
    start: int
    real: int
    frames: np.ndarray
    display: np.ndarray | None
    frame_times: list[float]


def _display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) of the overlay frames: the source's aspect, longer side <= max_side, even (H.264)."""
    scale = min(1.0, max_side / max(width, height))
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


# -- the reader ------------------------------------------------------------------------------
class WindowReader:
    """Decodes one local video file window by window (module docstring)."""

    def __init__(self, path: str, name: str, window_s: int, frame_size: int, display_max_side: int | None = None,
                 original_audio: bool = False):
        if window_s < 1:
            raise ValueError(f"window_s must be >= 1, got {window_s}")
        ffmpeg_logs_out_of_python()
        self.name = name
        self.window_s = window_s
        self.frame_size = frame_size
        self.display_max_side = display_max_side
        self.container = open_container(path, name)  # ClipDecodeError with the reader's reasons
        try:
            self._setup(original_audio)
        except BaseException:
            self.container.close()
            raise
        self._windows = self._generate()

    def _setup(self, original_audio: bool) -> None:
        import av

        c = self.container
        videos = [s for s in c.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        audios = list(c.streams.audio)
        if not videos and not audios:
            raise ClipDecodeError(self.name, f"not a video: no video or audio track in the {c.format.name} container")
        if not videos:
            raise ClipDecodeError(self.name,
                                  f"not a video: no video track (audio only, {audios[0].codec_context.name})")
        self.video = videos[0]
        self.video.thread_type = "AUTO"
        self.audio = audios[0] if audios else None
        self.origin = playback_origin(c)
        rate = self.video.average_rate or self.video.guessed_rate
        self._default_duration = 1 / Fraction(rate) if rate else Fraction(1, 25)
        vc = self.video.codec_context
        self.facts = VideoFacts(
            container=c.format.name, video_codec=vc.name,
            fps=float(self.video.average_rate) if self.video.average_rate else None,
            width=int(vc.width), height=int(vc.height),
            declared_seconds=round(c.duration / 1_000_000, 3) if c.duration else None,
        )
        self.tracks: list[_Track] = []
        self.model_track = self.overlay_track = None
        if self.audio is not None:
            ac = self.audio.codec_context
            channels = int(ac.layout.nb_channels) if ac.layout else 0
            self.facts.audio_codec = ac.name
            self.facts.audio_sample_rate = int(ac.sample_rate or 0)
            self.facts.audio_channels = channels
            self.model_track = _Track(self.origin, SAMPLE_RATE, None, mix_to_mono=True)
            self.tracks.append(self.model_track)
            if original_audio:
                rate = int(ac.sample_rate or 0)
                self.overlay_channels = 1 if channels == 1 else 2
                self.overlay_track = _Track(self.origin, rate if rate in AAC_RATES else 48000,
                                            "mono" if self.overlay_channels == 1 else "stereo", mix_to_mono=False)
                self.tracks.append(self.overlay_track)

    # -- decoding ---------------------------------------------------------------------------
    def _generate(self) -> Iterator[Window]:
        import av

        t_count = self.window_s
        open_pickers: list[_Picker] = [_Picker(0, t_count)]  # not done yet
        ready: list[_Pictures] = []  # done, waiting for their audio
        created = 1
        previous: tuple[Any, Fraction] | None = None
        count, last_time, end_time = 0, None, Fraction(0)
        streams = [self.video] + ([self.audio] if self.audio is not None else [])
        try:
            for packet in self.container.demux(*streams):
                if packet.stream.index == self.video.index:
                    for frame in packet.decode():
                        pts = frame_time(frame)
                        t = pts - self.origin if pts is not None else count * self._default_duration
                        count += 1
                        last_time = t if last_time is None else max(last_time, t)
                        duration = (frame.duration * Fraction(frame.time_base)
                                    if frame.duration and frame.time_base else None)
                        end_time = max(end_time, t + (duration or self._default_duration))
                        if count == 1:
                            self.facts.rotation = int(frame.rotation or 0)
                        for picker in open_pickers:
                            picker.offer(frame, t)
                        while created * t_count <= t:  # windows that start at or before t
                            picker = _Picker(created, t_count)
                            if previous is not None:  # the last frame before the window starts
                                picker.offer(*previous)
                            picker.offer(frame, t)
                            open_pickers.append(picker)
                            created += 1
                        for picker in open_pickers:
                            if picker.done:  # its frames are final: keep arrays, let the decoded frames go
                                ready.append(self._pictures(picker, t_count))
                        open_pickers = [p for p in open_pickers if not p.done]
                        previous = (frame, t)
                else:
                    for frame in packet.decode():
                        for track in self.tracks:
                            track.add(frame)
                while ready and self._audio_ready(ready[0]):
                    yield self._window(ready.pop(0))
        except av.FFmpegError as e:
            raise ClipDecodeError(
                self.name,
                f"truncated or corrupt: decoding stopped after {count} video frames "
                f"({float(last_time or 0):.2f} s): {ffmpeg_message(e)}",
            ) from None
        for track in self.tracks:
            track.finish()
        self.facts.frames_decoded = count
        self.facts.video_seconds = float(end_time)
        if self.model_track is not None:
            self.facts.audio_seconds = max(0.0, self.model_track.end / SAMPLE_RATE)
        if count == 0:
            raise ClipDecodeError(self.name, "zero frames: the video track decodes to no frames")
        if end_time <= MIN_VIDEO_SECONDS:
            raise ClipDecodeError(self.name, f"too short: {float(end_time):.2f} s of video, the first 1 fps "
                                             "sample is at 0.5 s")
        self._check_complete(end_time, count)
        self.facts.num_seconds = sum(1 for s in range(int(end_time) + 1) if s + Fraction(1, 2) < end_time)
        for picker in open_pickers:
            real = sum(1 for target in picker.targets if target < end_time)
            if real:
                ready.append(self._pictures(picker, real))
        for pictures in ready:
            yield self._window(pictures)

    def _audio_ready(self, pictures: _Pictures) -> bool:
        stop = pictures.start + self.window_s
        return all(track.covers(stop * track.rate) for track in self.tracks)

    def _check_complete(self, end_time: Fraction, count: int) -> None:
        """As tasks.decode.video: a stream that ends well before its declared duration was cut off."""
        decoded = float(end_time)
        v = self.video
        declared_video = float(v.duration * Fraction(v.time_base)) if v.duration and v.time_base else None
        if declared_video is not None and declared_video - decoded > TRUNCATION_TOLERANCE_S:
            raise ClipDecodeError(self.name, f"truncated or corrupt: the video track declares {declared_video:.2f} s "
                                             f"but decodes only {decoded:.2f} s ({count} frames)")
        if self.container.duration:
            declared = self.container.duration / 1_000_000
            audio_end = self.model_track.end / SAMPLE_RATE if self.model_track is not None else 0.0
            if declared - max(decoded, audio_end) > TRUNCATION_TOLERANCE_S:
                raise ClipDecodeError(self.name, f"truncated or corrupt: the file declares {declared:.2f} s but "
                                                 f"decodes only {max(decoded, audio_end):.2f} s")

    def _pictures(self, picker: _Picker, real: int) -> _Pictures:
        """The window's frames as arrays (model input, and overlay frames of its real seconds)."""
        images = [upright(f) for f in picker.best]
        frames = np.stack([resize_rgb(image, self.frame_size) for image in images])
        display = None
        if self.display_max_side is not None:
            if self.facts.display_size is None:
                h, w = images[0].shape[:2]
                self.facts.display_size = _display_size(w, h, self.display_max_side)
            size = self.facts.display_size
            display = np.stack([np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
                                if image.shape[1::-1] != size else image for image in images[:real]])
        return _Pictures(picker.index, picker.start, real, frames, display,
                         [round(float(t), 4) for t in picker.best_time[:real]])

    def _window(self, pictures: _Pictures) -> Window:
        t_count, start = self.window_s, pictures.start
        audio_seconds = 0.0
        if self.model_track is not None:
            audio, decoded = self.model_track.take(start * SAMPLE_RATE, (start + t_count) * SAMPLE_RATE, 1)
            audio, audio_seconds = audio[0], decoded / SAMPLE_RATE
        else:
            audio = np.zeros(t_count * SAMPLE_RATE, np.float32)
        window = Window(index=pictures.index, start=start, frames=pictures.frames, audio=np.ascontiguousarray(audio),
                        real=pictures.real, frame_times=pictures.frame_times, audio_seconds=round(audio_seconds, 3),
                        display=pictures.display)
        if self.overlay_track is not None:
            rate = self.overlay_track.rate
            window.original_audio, _ = self.overlay_track.take(start * rate, (start + pictures.real) * rate,
                                                               self.overlay_channels)
            window.original_rate = rate
        return window

    def next(self) -> Window | None:
        return next(self._windows, None)

    def close(self) -> None:
        self._windows.close()
        self.container.close()


# -- in a child process, under a deadline ----------------------------------------------------
_open_readers: dict[str, WindowReader] = {}


def _error(e: ClipDecodeError) -> tuple[str, str, str]:
    # ClipDecodeError does not survive pickling (its __init__ takes two arguments, its args hold one)
    return ("ClipDecodeError", e.clip_id, e.reason)


def open_reader(path: str, name: str, window_s: int, frame_size: int, display_max_side: int | None,
                original_audio: bool) -> tuple[str, VideoFacts] | tuple[str, str, str]:
    """Open a reader in this process; (handle, facts), or an error tuple."""
    try:
        reader = WindowReader(path, name, window_s, frame_size, display_max_side, original_audio)
    except ClipDecodeError as e:
        return _error(e)
    handle = uuid.uuid4().hex
    _open_readers[handle] = reader
    return handle, reader.facts


def next_window(handle: str) -> tuple[Window | None, VideoFacts] | tuple[str, str, str]:
    """The reader's next window (None after the last) and its facts so far, or an error tuple."""
    reader = _open_readers[handle]
    try:
        return reader.next(), reader.facts
    except ClipDecodeError as e:
        return _error(e)


def close_reader(handle: str) -> None:
    reader = _open_readers.pop(handle, None)
    if reader is not None:
        reader.close()


@dataclass
class WindowStream:
    """Iterate over the windows of a local video file, decoded here or, with deadline_s, in a
    child process that is killed when one window takes longer than deadline_s seconds
    (ClipDecodeError "deadline exceeded"). Use as a context manager; ``facts`` is complete
    after the last window."""

    path: str
    name: str
    window_s: int
    frame_size: int
    display_max_side: int | None = None
    original_audio: bool = False
    deadline_s: float | None = None
    facts: VideoFacts | None = None
    _runner: DeadlineRunner | None = field(default=None, repr=False)
    _handle: str | None = field(default=None, repr=False)

    def _call(self, function: str, *args: Any) -> Any:
        if self.deadline_s is None:
            out = globals()[function](*args)
        else:
            if self._runner is None:
                self._runner = DeadlineRunner()
            try:
                out = self._runner.call(f"{__name__}:{function}", args, self.deadline_s)
            except DeadlineExceeded:
                self._handle = None  # the child, and the reader in it, are gone
                raise ClipDecodeError(self.name, f"deadline exceeded: the decoder gave no answer within "
                                                 f"{self.deadline_s:g} s (segment.decode_deadline_s, per window of "
                                                 f"{self.window_s} s); it was stopped") from None
            except ChildDied as e:
                self._handle = None
                raise ClipDecodeError(self.name, f"decoder crashed: {e}") from None
        if isinstance(out, tuple) and len(out) == 3 and out[0] == "ClipDecodeError":
            raise ClipDecodeError(out[1], out[2])
        return out

    def __enter__(self) -> WindowStream:
        self._handle, self.facts = self._call("open_reader", self.path, self.name, self.window_s, self.frame_size,
                                              self.display_max_side, self.original_audio)
        return self

    def __iter__(self) -> Iterator[Window]:
        while True:
            window, self.facts = self._call("next_window", self._handle)
            if window is None:
                return
            yield window

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._handle is not None:
                handle, self._handle = self._handle, None
                with contextlib.suppress(ClipDecodeError):
                    self._call("close_reader", handle)
        finally:
            if self._runner is not None:
                self._runner.close()
