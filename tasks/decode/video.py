"""Decode any video file FFmpeg can open (through PyAV) into a Clip of T seconds.

Frames: T frames at 1 fps. For second t the frame shown at t + 0.5 s is taken: the decoded
frame whose presentation time is nearest to t + 0.5 s (exact rational arithmetic on the
time stamps; a tie goes to the earlier frame), so any frame rate works, variable ones too.
Times count from the container's start time, which audio and video share, so the two stay
in sync. Frames are converted to RGB, turned upright when the stream carries a display
rotation (phone videos), and resized to frame_size x frame_size (bilinear, aspect ignored,
as AVSBench's 224 x 224).

Audio: the first audio track, resampled by FFmpeg to 16 kHz, averaged over its channels
to mono (as VGGish does), placed on the same time line and cut or zero padded to exactly
T * 16000 samples. Log-mel: :func:`tasks.decode.logmel.log_mel_examples`, one 96 x 64 example
per frame, in VGGish's framing (example t starts at 0.96 t s; see that module).

Clips shorter than T seconds: when at least the first 1 fps sample (0.5 s) exists, the
missing seconds repeat the last frame and the missing audio is silence;
``meta["padded_seconds"]`` and ``meta["audio_padded_seconds"]`` say how much. Shorter than
that, or no video track, no audio track, zero frames, a file FFmpeg cannot read, a stream
that breaks off or is shorter than its container declares: ClipDecodeError with the reason.

FFmpeg's log messages never reach Python here (see :func:`ffmpeg_logs_out_of_python`):
a Python log callback called from FFmpeg's decoder threads can deadlock on a corrupt stream.
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import struct
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image

from infra.storage import Storage, is_remote
from tasks.clip import SAMPLE_RATE, SPLITS, Clip, ClipDecodeError, ClipRef, Reject, Source
from tasks.decode.logmel import log_mel_examples

DEFAULT_SECONDS = 5  # T for a plain video when the config leaves it to the source (AVSBench S4/MS3: 5)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
# Files that may sit beside videos and are not clips: ignored when listing a video folder.
# Anything else that is not a video extension is reported, not skipped.
SIDECAR_EXTENSIONS = (".json", ".csv", ".txt", ".md", ".yaml", ".yml", ".srt", ".vtt")

# The first 1 fps sample of second 0 is at 0.5 s: a clip must reach it to give one frame.
MIN_VIDEO_SECONDS = Fraction(1, 2)
# How far a stream may end before its declared duration and still count as complete.
TRUNCATION_TOLERANCE_S = 0.5

# First bytes of the containers video files come in; a file that starts like one of them
# but cannot be opened is a broken video, not something else.
_CONTAINER_MAGIC = (
    (4, (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")),  # MP4 / MOV / M4V
    (0, (b"\x1a\x45\xdf\xa3",)),  # Matroska / WebM
    (0, (b"RIFF",)),  # AVI (and WAV)
    (0, (b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x30\x26\xb2\x75")),  # Ogg, FLV, MPEG-PS, ASF
)


# -- listing ---------------------------------------------------------------------------
def _relative(root: str, url: str) -> str:
    base = root.rstrip("/")
    if not is_remote(root):
        return os.path.relpath(url, os.path.abspath(base)).replace(os.sep, "/")
    scheme_free = lambda u: u.split("://", 1)[1]  # noqa: E731
    return posixpath.relpath(scheme_free(url), scheme_free(base))


def list_clips(root: str, storage: Storage, extensions: tuple[str, ...]) -> tuple[list[ClipRef], list[Reject]]:
    """Refs for every file below root with a video extension; Rejects for the other files
    (sidecars and hidden files aside). See :func:`tasks.decode.sources.list_videos`."""
    refs: list[ClipRef] = []
    rejects: list[Reject] = []
    files = storage.walk_files(root)
    if not files and not storage.exists(root):
        raise FileNotFoundError(f"video folder {root} does not exist")
    by_id: dict[str, list[str]] = {}
    for url in files:
        rel = _relative(root, url)
        name = posixpath.basename(rel)
        stem, ext = posixpath.splitext(rel)
        if ext.lower() in extensions:
            by_id.setdefault(stem, []).append(url)
        elif name.startswith(".") or ext.lower() in SIDECAR_EXTENSIONS:
            continue
        else:
            why = f"not a video file (extension {ext.lower()})" if ext else "not a video file (no extension)"
            rejects.append(Reject(stem, url, "list", why))
    for stem, urls in sorted(by_id.items()):
        for url in urls:
            # Two files differing only in extension keep it in their id, so ids stay unique.
            clip_id = stem if len(urls) == 1 else _relative(root, url)
            folders = posixpath.dirname(stem).split("/")
            split = next((f for f in reversed(folders) if f in SPLITS), "none")
            refs.append(ClipRef(clip_id=clip_id, kind="video", uri=url, split=split, setting="none"))
    return refs, rejects


# -- decoding --------------------------------------------------------------------------
def decode(ref: ClipRef, storage: Storage, num_frames: int, frame_size: int) -> Clip:
    """The Clip of one video file (local or s3://, copied to a temp file when remote)."""
    with contextlib.ExitStack() as stack:
        if is_remote(ref.uri):
            try:
                path = stack.enter_context(storage.local_path(ref.uri))
            except FileNotFoundError:
                raise ClipDecodeError(ref.clip_id, f"missing file: {ref.uri}") from None
        else:
            path = storage.filesystem(ref.uri)[1]
        frames, audio, meta = read_av(path, ref.clip_id, num_frames, frame_size)
    return Clip(
        clip_id=ref.clip_id,
        frames=frames,
        audio=audio,
        logmel=log_mel_examples(audio, num_frames),
        masks=None,
        gt_frames=[False] * num_frames,
        setting=ref.setting,
        split=ref.split,
        labels=list(ref.labels),
        source_uri=ref.uri,
        meta=meta,
    )


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3], bilinear (aspect ignored)."""
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def read_av(path: str, clip_id: str, num_seconds: int, frame_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Frames uint8 [T, S, S, 3], audio float32 [T * 16000] and meta of one local video file."""
    import av

    ffmpeg_logs_out_of_python()
    container = open_container(path, clip_id)
    with container:
        video_stream, audio_stream = _pick_streams(container, clip_id)
        origin = playback_origin(container)
        picker = _FramePicker(num_seconds, video_stream)
        audio = _AudioTrack(origin, num_seconds)
        try:
            for packet in container.demux(video_stream, audio_stream):
                if packet.stream.index == video_stream.index:
                    if not picker.done:
                        for frame in packet.decode():
                            picker.offer(frame, frame_time(frame), origin)
                elif not audio.done:
                    for frame in packet.decode():
                        audio.add(frame, frame_time(frame))
                if picker.done and audio.done:
                    break
        except av.FFmpegError as e:
            raise ClipDecodeError(
                clip_id,
                f"truncated or corrupt: decoding stopped after {picker.count} video frames "
                f"({float(picker.last_time or 0):.2f} s): {ffmpeg_message(e)}",
            ) from None
        _check_complete(container, video_stream, picker, audio, clip_id)
        frames = picker.frames(frame_size, clip_id)
        samples, audio_seconds = audio.samples(clip_id)
        meta = {
            "reader": "video",
            "container": container.format.name,
            "video_codec": video_stream.codec_context.name,
            "audio_codec": audio_stream.codec_context.name,
            "source_fps": float(video_stream.average_rate) if video_stream.average_rate else None,
            "source_size": [int(video_stream.codec_context.width), int(video_stream.codec_context.height)],
            "source_sample_rate": int(audio_stream.codec_context.sample_rate or 0),
            "source_channels": int(audio_stream.codec_context.layout.nb_channels),
            "frame_times": [round(float(t), 4) for t in picker.best_time],
            "rotation": int(picker.best[0].rotation or 0),
            "video_seconds": round(float(picker.end_time), 3),
            "audio_seconds": round(audio_seconds, 3),
            "padded_seconds": picker.padded_seconds(),
            "audio_padded_seconds": round(max(0.0, num_seconds - audio_seconds), 3),
        }
    return frames, samples, meta


def decode_audio(path: str, clip_id: str, num_seconds: int) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 [num_seconds * 16000] mono 16 kHz audio from any file FFmpeg reads (a wav...).

    Returns the samples and meta (source rate, channels, decoded seconds).
    """
    import av

    ffmpeg_logs_out_of_python()
    container = open_container(path, clip_id)
    with container:
        if not container.streams.audio:
            raise ClipDecodeError(clip_id, f"no audio track in {posixpath.basename(path)}")
        stream = container.streams.audio[0]
        track = _AudioTrack(playback_origin(container), num_seconds)
        try:
            for frame in container.decode(stream):
                track.add(frame, frame_time(frame))
                if track.done:
                    break
        except av.FFmpegError as e:
            raise ClipDecodeError(clip_id, f"truncated or corrupt audio: {ffmpeg_message(e)}") from None
        samples, seconds = track.samples(clip_id)
        meta = {
            "source_sample_rate": int(stream.codec_context.sample_rate or 0),
            "source_channels": int(stream.codec_context.layout.nb_channels),
            "audio_seconds": round(seconds, 3),
            "audio_padded_seconds": round(max(0.0, num_seconds - seconds), 3),
        }
    return samples, meta


def encode_video(
    path: str,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLE_RATE,
    vcodec: str = "libx264",
    acodec: str = "aac",
    frame_times: list[float] | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Write a local video file: frames uint8 [N, H, W, 3] (H, W even) at fps, or at
    frame_times seconds (variable rate, millisecond time base); audio float32 [n] (mono) or
    [channels, n] in [-1, 1] at sample_rate, or None for a file without sound. options go
    to the container muxer (e.g. {"movflags": "faststart"})."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: frames must be uint8 [N, H, W, 3], got {list(frames.shape)}")
    if frame_times is not None and len(frame_times) != len(frames):
        raise ValueError(f"{path}: {len(frame_times)} frame times for {len(frames)} frames")
    with av.open(path, "w", options=options or {}) as out:
        rate = Fraction(fps).limit_denominator(1001)
        vs = out.add_stream(vcodec, rate=rate)
        vs.width, vs.height = int(frames.shape[2]), int(frames.shape[1])
        vs.pix_fmt = "yuv420p"
        time_base = Fraction(1, 1000) if frame_times is not None else 1 / rate
        if frame_times is not None:
            vs.codec_context.time_base = time_base
        aus = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            layout = "mono" if audio.shape[0] == 1 else "stereo" if audio.shape[0] == 2 else audio.shape[0]
            aus = out.add_stream(acodec, rate=sample_rate, layout=layout)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(frame_times[i] * 1000) if frame_times is not None else i
            frame.time_base = time_base
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if aus is not None:
            _encode_audio(out, aus, audio, sample_rate)


def _encode_audio(out, stream, audio: np.ndarray, sample_rate: int) -> None:
    import av

    fmt = stream.codec_context.format.name
    layout = stream.codec_context.layout.name
    step = stream.codec_context.frame_size or 1024
    for start in range(0, audio.shape[1], step):
        chunk = np.clip(audio[:, start : start + step], -1.0, 1.0)
        if fmt.startswith("s16"):
            chunk = (chunk * 32767).astype(np.int16)
        elif fmt.startswith("s32"):
            chunk = (chunk * 2147483647.0).astype(np.int32)
        elif fmt.startswith("dbl"):
            chunk = chunk.astype(np.float64)
        else:
            chunk = chunk.astype(np.float32)
        if not fmt.endswith("p"):  # packed formats interleave the channels in one plane
            chunk = chunk.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = start
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


# -- internals -------------------------------------------------------------------------
_logging_warned = False


def ffmpeg_logs_out_of_python() -> None:
    """Keep FFmpeg's log messages out of Python while we decode, in every process that does.

    With a PyAV log level set, FFmpeg's log callback calls into Python and takes the GIL,
    also from the decoder's own threads. A corrupt H.264 stream logs from those threads
    ("error while decoding MB ..."), and when the stream is freed the thread that holds the
    GIL waits for the decoder threads in ``avcodec_free_context`` while one of them waits
    for the GIL in the callback: a deadlock with no CPU used (PyAV issues 751, 909, 367;
    seen here in our own suite). PyAV's default (level None) installs a callback that never
    touches Python, so we keep that, and restore it if something in the process changed it.
    The price is FFmpeg's detail in error messages ("moov atom not found"); the reasons we
    give are our own (see :func:`_open_failure`).
    """
    import av.logging

    global _logging_warned
    if av.logging.get_level() is not None:
        if not _logging_warned:
            logging.getLogger(__name__).warning(
                "PyAV log level was %s: set back to None while decoding (a Python log callback can "
                "deadlock FFmpeg's decoder threads)", av.logging.get_level())
            _logging_warned = True
        av.logging.set_level(None)


def ffmpeg_message(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def open_container(path: str, clip_id: str):
    import av

    try:
        return av.open(path, metadata_errors="replace")
    except FileNotFoundError:
        raise ClipDecodeError(clip_id, f"missing file: {path}") from None
    except (av.FFmpegError, OSError) as e:
        raise ClipDecodeError(clip_id, _open_failure(path, e)) from None


def _open_failure(path: str, e: Exception) -> str:
    size = os.path.getsize(path) if os.path.exists(path) else -1
    if size == 0:
        return "not a video: empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(16)
    message = ffmpeg_message(e)
    if head[4:8] in _CONTAINER_MAGIC[0][1]:
        missing = _mp4_missing_box(path, size)
        return f"truncated or corrupt: {message}" + (f" ({missing})" if missing else "")
    if any(head[at : at + len(m)] == m for at, magics in _CONTAINER_MAGIC for m in magics):
        return f"truncated or corrupt: {message}"
    if len(head) >= 1 and head[0] == 0x47:  # MPEG-TS sync byte
        return f"truncated or corrupt: {message}"
    return f"not a video: FFmpeg finds no media container in it ({message})"


def _mp4_missing_box(path: str, size: int) -> str | None:
    """What an MP4/MOV file that FFmpeg cannot open lacks, from its top-level boxes: no moov
    (the index, written last unless the file was made "faststart") or a box cut off by the
    end of the file. None when the boxes look whole."""
    boxes: list[bytes] = []
    with open(path, "rb") as f:
        at = 0
        while at + 8 <= size:
            f.seek(at)
            length, kind = struct.unpack(">I4s", f.read(8))
            if length == 1:  # 64-bit size follows
                length = struct.unpack(">Q", f.read(8))[0]
            elif length == 0:  # the box runs to the end of the file
                length = size - at
            if length < 8:
                return f"corrupt box header at byte {at}"
            boxes.append(kind)
            if at + length > size:
                cut = f"the {kind.decode('latin-1')!r} box at byte {at} is cut off at {size} of {at + length} bytes"
                return cut if b"moov" in boxes else f"moov atom not found; {cut}"
            at += length
    return None if b"moov" in boxes else "moov atom not found"


def _pick_streams(container, clip_id: str):
    import av

    videos = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
    audios = list(container.streams.audio)
    fmt = container.format.name
    if not videos and not audios:
        raise ClipDecodeError(clip_id, f"not a video: no video or audio track in the {fmt} container")
    if not videos:
        raise ClipDecodeError(clip_id, f"not a video: no video track (audio only, {audios[0].codec_context.name})")
    if not audios:
        raise ClipDecodeError(clip_id, f"no audio track (video only, {videos[0].codec_context.name} in {fmt})")
    video, audio = videos[0], audios[0]
    video.thread_type = "AUTO"  # frame threads: several cores on long or large videos
    return video, audio


def playback_origin(container) -> Fraction:
    """The instant playback starts, shared by all streams (seconds)."""
    return Fraction(container.start_time, 1_000_000) if container.start_time is not None else Fraction(0)


def frame_time(frame) -> Fraction | None:
    """Presentation time of a decoded frame in seconds, exactly (None without a time stamp)."""
    if frame.pts is not None and frame.time_base is not None:
        return frame.pts * Fraction(frame.time_base)
    return None


class _FramePicker:
    """Keeps, for each second t, the decoded frame nearest to t + 0.5 s."""

    def __init__(self, num_seconds: int, stream):
        self.targets = [Fraction(2 * t + 1, 2) for t in range(num_seconds)]
        self.best: list[Any] = [None] * num_seconds
        self.best_time: list[Fraction] = [Fraction(0)] * num_seconds
        self.count = 0
        self.last_time: Fraction | None = None
        self.end_time = Fraction(0)
        self.done = False
        rate = stream.average_rate or stream.guessed_rate
        self._default_duration = 1 / Fraction(rate) if rate else Fraction(1, 25)

    def offer(self, frame, pts_time: Fraction | None, origin: Fraction) -> None:
        # No time stamp (some raw streams): count frames at the nominal rate.
        t = pts_time - origin if pts_time is not None else self.count * self._default_duration
        self.count += 1
        self.last_time = t if self.last_time is None else max(self.last_time, t)
        duration = frame.duration * Fraction(frame.time_base) if frame.duration and frame.time_base else None
        self.end_time = max(self.end_time, t + (duration or self._default_duration))
        for i, target in enumerate(self.targets):
            if self.best[i] is None or abs(t - target) < abs(self.best_time[i] - target):
                self.best[i] = frame
                self.best_time[i] = t
        # Frames come in presentation order: once past the last target, none can be nearer.
        if t >= self.targets[-1]:
            self.done = True

    def padded_seconds(self) -> int:
        return sum(1 for target in self.targets if target >= self.end_time)

    def frames(self, size: int, clip_id: str) -> np.ndarray:
        if self.count == 0:
            raise ClipDecodeError(clip_id, "zero frames: the video track decodes to no frames")
        if self.end_time <= MIN_VIDEO_SECONDS:
            raise ClipDecodeError(
                clip_id,
                f"too short: {float(self.end_time):.2f} s of video, the first 1 fps sample is at 0.5 s",
            )
        return np.stack([resize_rgb(upright(f), size) for f in self.best])


def upright(frame) -> np.ndarray:
    """uint8 [H, W, 3] RGB of a decoded frame, turned as its display matrix says (phones
    store portrait video sideways and mark the turn; players, and we, apply it)."""
    image = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


class _AudioTrack:
    """Decoded audio, resampled to 16 kHz, placed on the clip's time line."""

    def __init__(self, origin: Fraction, num_seconds: int):
        import av

        self.origin = origin
        self.need = num_seconds * SAMPLE_RATE
        self.offset: int | None = None  # sample index (16 kHz) of the first decoded sample
        self.chunks: list[np.ndarray] = []
        self.length = 0
        self.done = False
        self._resampler = av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE)

    def add(self, frame, t: Fraction | None) -> None:
        if self.offset is None:
            self.offset = round((t - self.origin) * SAMPLE_RATE) if t is not None else 0
        for out in self._resampler.resample(frame):
            self._append(out)
        if self.offset + self.length >= self.need:
            self.done = True

    def _append(self, out) -> None:
        chunk = out.to_ndarray()  # [channels, n], planar float
        mono = chunk.mean(axis=0, dtype=np.float64) if chunk.shape[0] > 1 else chunk[0]
        self.chunks.append(mono.astype(np.float32))
        self.length += mono.shape[0]

    def samples(self, clip_id: str) -> tuple[np.ndarray, float]:
        """float32 [T * 16000] and the seconds of real audio in it."""
        if not self.done:
            for out in self._resampler.resample(None):
                self._append(out)
        if self.offset is None or self.length == 0:
            raise ClipDecodeError(clip_id, "audio track decodes to no samples")
        audio = np.concatenate(self.chunks)
        if self.offset > 0:  # audio starts after the clip does: silence before it
            audio = np.concatenate([np.zeros(self.offset, np.float32), audio])
        elif self.offset < 0:
            audio = audio[-self.offset :]
        real = min(audio.shape[0], self.need) - max(self.offset, 0)
        if audio.shape[0] < self.need:
            audio = np.pad(audio, (0, self.need - audio.shape[0]))
        return np.ascontiguousarray(audio[: self.need], dtype=np.float32), max(real, 0) / SAMPLE_RATE


def _check_complete(container, video_stream, picker: _FramePicker, audio: _AudioTrack, clip_id: str) -> None:
    """A stream that ends well before the duration its container declares was cut off."""
    if picker.done or picker.count == 0:
        return
    decoded = float(picker.end_time)
    declared_video = (
        float(video_stream.duration * Fraction(video_stream.time_base))
        if video_stream.duration and video_stream.time_base
        else None
    )
    if declared_video is not None and declared_video - decoded > TRUNCATION_TOLERANCE_S:
        raise ClipDecodeError(
            clip_id,
            f"truncated or corrupt: the video track declares {declared_video:.2f} s but decodes only "
            f"{decoded:.2f} s ({picker.count} frames)",
        )
    if container.duration and not audio.done:
        declared = container.duration / 1_000_000
        audio_end = ((audio.offset or 0) + audio.length) / SAMPLE_RATE
        if declared - max(decoded, audio_end) > TRUNCATION_TOLERANCE_S:
            raise ClipDecodeError(
                clip_id,
                f"truncated or corrupt: the file declares {declared:.2f} s but decodes only "
                f"{max(decoded, audio_end):.2f} s",
            )


def _list_source(root: str, data, storage: Storage) -> tuple[list[ClipRef], list[Reject]]:
    return list_clips(root, storage, VIDEO_EXTENSIONS)


def _decode_source(ref: ClipRef, storage: Storage, num_frames: int | None, frame_size: int) -> Clip:
    return decode(ref, storage, num_frames or DEFAULT_SECONDS, frame_size)


SOURCE = Source("videos", list=_list_source, decode=_decode_source, kinds=("video",))

