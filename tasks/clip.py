"""The records every step of the road passes on: where a clip lives (:class:`ClipRef`), the
decoded clip (:class:`Clip`), and why a clip was dropped (:class:`Reject`).

A clip is T frames at 1 fps with their audio. Every reader (AVSBench folders, plain
video files, SynthAVS) produces the same :class:`Clip`, so everything downstream
(Maskige, embeddings, shards, training) sees one shape of data.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000  # Hz, mono: what VGGish and AVSBench use
SETTINGS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")


@dataclass
class ClipRef:
    """Where one clip lives, before any byte of it is read.

    kind:    avsbench_s4 | avsbench_ms3 | avsbench_avss | video (which reader decodes it).
    uri:     the video file, or the AVSBench clip folder.
    members: named files of the clip (frame_0, mask_0, audio, logmel, label2idx ...), as URIs.
    labels:  categories known at listing time (S4's category column), else empty.
    """

    clip_id: str
    kind: str
    uri: str
    split: str = "none"
    setting: str = "none"
    members: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)


class ClipDecodeError(Exception):
    """One clip cannot be decoded; reason says what is wrong with it in plain words."""

    def __init__(self, clip_id: str, reason: str):
        self.clip_id = clip_id
        self.reason = reason
        super().__init__(f"clip {clip_id!r}: {reason}")

    def __reduce__(self):  # pickles (a child process, a Ray task) with both arguments
        return (ClipDecodeError, (self.clip_id, self.reason))


def check_frames(frames: np.ndarray) -> None:
    """Raise ValueError unless frames is uint8 [N, H, W, 3] (what every enrichment step takes)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        what = f"{frames.dtype} {list(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {what}")


@dataclass
class Clip:
    """One clip of T seconds.

    frames:   uint8 [T, H, W, 3], RGB, one frame per second.
    audio:    float32 [N], mono, 16 kHz, N = T * 16000 (zero padded when the source is shorter).
    logmel:   float32 [T, 96, 64], VGGish log-mel, one example per frame (framing: tasks.decode.logmel).
    masks:    uint8 [T, H, W] or None. Binary {0, 1} for S4/MS3, class ids (0 = background)
              for AVSS. Frames without ground truth hold zeros and are marked False in gt_frames.
    gt_frames: which of the T frames carry ground truth.
    """

    clip_id: str
    frames: np.ndarray
    audio: np.ndarray
    logmel: np.ndarray
    masks: np.ndarray | None = None
    gt_frames: list[bool] = field(default_factory=list)
    setting: str = "none"  # s4 | ms3 | avss | none (unlabelled video)
    split: str = "none"
    labels: list[str] = field(default_factory=list)  # categories present / sounding, if known
    source_uri: str = ""
    sample_rate: int = SAMPLE_RATE
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def validate(self) -> None:
        """Raise ValueError naming the clip and what is wrong with its arrays."""
        where = f"clip {self.clip_id!r} ({self.source_uri})"
        f = self.frames
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise ValueError(f"{where}: frames must be uint8 [T, H, W, 3], got {f.dtype} {list(f.shape)}")
        t = f.shape[0]
        if t == 0:
            raise ValueError(f"{where}: zero frames")
        if self.logmel.shape != (t, 96, 64):
            raise ValueError(f"{where}: logmel must be [{t}, 96, 64], got {list(self.logmel.shape)}")
        if self.audio.ndim != 1:
            raise ValueError(f"{where}: audio must be mono [N], got {list(self.audio.shape)}")
        if self.masks is not None:
            if self.masks.shape != f.shape[:3]:
                raise ValueError(
                    f"{where}: masks {list(self.masks.shape)} do not match frames {list(f.shape[:3])}"
                )
            if len(self.gt_frames) != t:
                raise ValueError(f"{where}: gt_frames has {len(self.gt_frames)} entries for {t} frames")

    def content_hash(self) -> str:
        """sha256 over the decoded arrays: the identity of what was read, whatever the container."""
        h = hashlib.sha256()
        for a in (self.frames, self.audio, self.logmel) + ((self.masks,) if self.masks is not None else ()):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


@dataclass
class Reject:
    """A clip that could not be used, and why. Runs collect these and report them."""

    clip_id: str
    source_uri: str
    stage: str  # list | decode | maskige | embed | write ...
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"clip_id": self.clip_id, "source_uri": self.source_uri, "stage": self.stage, "reason": self.reason}


@dataclass(frozen=True)
class Source:
    """A kind of data source (``data.source``), declared by the module that reads it and named in
    :data:`tasks.decode.registry.REGISTRY`.

    list: ``(root, data config, storage) -> (refs, rejects)``, every clip under root;
    decode: ``(ref, storage, num_frames or None, frame_size) -> Clip`` for refs of ``kinds``
        (None: the refs it lists are of another source's kinds and decoded there);
    kinds: the ``ClipRef.kind`` values this source decodes;
    prepare: ``(config, storage) -> (root, summary, made)`` for a source that is made before it
        is read (SynthAVS, generated when missing), run by the preprocess flow as a task named
        ``prepare_name``; None for sources that are simply there.
    """

    name: str
    list: Callable[..., tuple[list[ClipRef], list[Reject]]]
    decode: Callable[..., Clip] | None = None
    kinds: tuple[str, ...] = ()
    prepare: Callable[..., tuple[str, dict, bool]] | None = None
    prepare_name: str = ""

