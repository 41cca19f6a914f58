"""Sources and decoding: where clips come from, and how each becomes one in-memory Clip.

The sources are registered in :mod:`tasks.decode.registry`; each lists its clips and decodes
one into the same result (:class:`~tasks.clip.Clip`). Those of today:

- an AVSBench folder (S4, MS3 or AVSS, laid out as released; SynthAVS writes the same
  layout): :func:`list_avsbench`, decoded by :mod:`tasks.decode.avsbench`;
- any folder or bucket of video files FFmpeg can open: :func:`list_videos`, decoded by
  :mod:`tasks.decode.video` (T frames at 1 fps, 16 kHz mono audio, VGGish log-mel).

Listing is cheap and finds what is missing (a CSV row whose files are absent, a file that
is not a video by its name); decoding reads the bytes and finds what is broken (truncated
or corrupt video, no audio track, zero frames, masks that do not fit their frames). Both
return :class:`~tasks.clip.Reject` records with the clip id and the reason; nothing is
silently dropped, and one bad clip never stops a run.

Nor does it stall one: with a deadline (``preprocess.decode_deadline_s`` in the preprocess
flow), each clip is decoded in a child process that is killed when the clip takes longer,
and the clip becomes a Reject "deadline exceeded" (:func:`decode_or_reject`). FFmpeg's own
logging stays out of Python in every process that decodes (see :mod:`tasks.decode.video`),
which removes the known cause of decoder hangs.

Every path goes through :class:`infra.storage.Storage`, so local folders and s3:// alike.
"""
from __future__ import annotations

import logging

from infra.storage import Storage
from tasks.clip import Clip, ClipDecodeError, ClipRef, Reject
from tasks.decode import avsbench, video
from tasks.decode.deadline import ChildDied, DeadlineExceeded, DeadlineRunner
from tasks.decode.registry import known_kinds, source_of_kind
from tasks.decode.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


def list_avsbench(
    root: str, setting: str, storage: Storage, splits: list[str] | tuple[str, ...] | None = None
) -> tuple[list[ClipRef], list[Reject]]:
    """Clips of one AVSBench setting ("s4" | "ms3" | "avss") under root, and the rows that
    cannot be used (stage "list", naming the missing files).

    root may be the folder holding AVSBench_object/ and AVSBench_semantic/, or the setting's
    own folder (Single-source/, Multi-sources/, AVSBench_semantic/). splits: None = all.
    """
    return avsbench.list_clips(root, setting, storage, splits)


def list_videos(
    root: str, storage: Storage, extensions: tuple[str, ...] = VIDEO_EXTENSIONS
) -> tuple[list[ClipRef], list[Reject]]:
    """Every video file below root (recursive), as refs; every other file that is not a
    known sidecar (json, csv, txt ...) or hidden file as a Reject "not a video file".

    clip_id is the path below root without its extension ('/'-separated); split is the
    nearest enclosing folder named train/val/test, else "none".
    """
    return video.list_clips(root, storage, tuple(e.lower() for e in extensions))


def decode_clip(ref: ClipRef, storage: Storage, num_frames: int | None, frame_size: int) -> Clip:
    """Decode one clip into T = num_frames frames of frame_size x frame_size.

    num_frames None: as many as the clip's source says (AVSBench-semantic: 5 for v1s/v1m,
    10 for v2; S4/MS3: 5), and :data:`tasks.decode.video.DEFAULT_SECONDS` for plain videos.
    Raises ClipDecodeError(clip_id, reason) when the clip is unusable; ValueError for
    arguments that no clip could satisfy.
    """
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 (or None: the source decides), got {num_frames}")
    if frame_size < 8:
        raise ValueError(f"frame_size must be >= 8, got {frame_size}")
    src = source_of_kind(ref.kind)
    if src is None:
        raise ClipDecodeError(ref.clip_id, f"unknown source kind {ref.kind!r} (known: {', '.join(known_kinds())})")
    clip = src.decode(ref, storage, num_frames, frame_size)
    try:
        clip.validate()
    except ValueError as e:
        raise ClipDecodeError(ref.clip_id, str(e)) from None
    return clip


_runner: DeadlineRunner | None = None  # this process's decoding child, started on first use


def decode_or_reject(ref: ClipRef, storage: Storage, num_frames: int | None, frame_size: int,
                     deadline_s: float | None = None) -> Clip | Reject:
    """decode_clip, with every failure of this one clip turned into a Reject(stage="decode").

    deadline_s: None decodes here, in this process. A number decodes in this process's
    decoding child (:mod:`tasks.decode.deadline`): a clip with no result after deadline_s
    seconds (listing aside, its download included) becomes a Reject "deadline exceeded" and
    the child is replaced, and a crash in native code becomes a Reject too, so no clip can
    stall or kill the worker that decodes it.
    """
    global _runner
    if deadline_s is None:
        return _decode_here(ref, storage, num_frames, frame_size)
    if _runner is None:
        _runner = DeadlineRunner()
    try:
        return _runner.call(f"{__name__}:_decode_here", (ref, storage, num_frames, frame_size), deadline_s)
    except DeadlineExceeded:
        log.warning("clip %s: no result within %g s, rejected (%s)", ref.clip_id, deadline_s, ref.uri)
        return Reject(ref.clip_id, ref.uri, "decode",
                      f"deadline exceeded: not decoded within {deadline_s:g} s (preprocess.decode_deadline_s)")
    except ChildDied as e:
        return Reject(ref.clip_id, ref.uri, "decode", f"decoder crashed: {e}")


def _decode_here(ref: ClipRef, storage: Storage, num_frames: int | None, frame_size: int) -> Clip | Reject:
    try:
        return decode_clip(ref, storage, num_frames, frame_size)
    except ClipDecodeError as e:
        return Reject(e.clip_id, ref.uri, "decode", e.reason)
    except Exception as e:  # noqa: BLE001 - one clip's failure, whatever it is, must not stop a run
        log.debug("decoding %s failed", ref.uri, exc_info=True)
        return Reject(ref.clip_id, ref.uri, "decode", f"{type(e).__name__}: {e}")


def decode_many(
    refs: list[ClipRef], storage: Storage, num_frames: int | None, frame_size: int, deadline_s: float | None = None
) -> tuple[list[Clip], list[Reject]]:
    """Decode refs in order; the clips that decode, and a Reject for each one that does not."""
    clips: list[Clip] = []
    rejects: list[Reject] = []
    for ref in refs:
        out = decode_or_reject(ref, storage, num_frames, frame_size, deadline_s)
        (rejects if isinstance(out, Reject) else clips).append(out)
    if rejects:
        log.info("decoded %d clips, rejected %d", len(clips), len(rejects))
    return clips, rejects
