"""WebDataset shards of clips: the sample schema, deterministic tar writing, and decoding.

One WebDataset sample is one clip of T frames (schema version :data:`SCHEMA_VERSION`):

==============  =====================================================================
member          content
==============  =====================================================================
``meta.json``   schema version, clip id, key, source URI, content hash, split, setting,
                labels, T, fps, frame size, gt_frames, provenance of each enrichment,
                and the clip's own ``meta``
``f000.jpg`` …  frames, RGB (JPEG at ``jpeg_quality``, or ``f000.png`` when lossless)
``g000.png`` …  Maskige per frame (palette PNG, written by :mod:`tasks.enrich.maskige`)
``m000.png`` …  ground-truth mask of each annotated frame only (8-bit grey PNG holding the
                raw values: 0/1 for S4/MS3, class ids for AVSS)
``logmel.npy``  float16 [T, 96, 64]
``wav.flac``    the audio, 16 kHz mono, FLAC PCM_16 (lossless for 16-bit audio)
``dino.npy``    float16 [T, D], when embeddings were computed
==============  =====================================================================

Tar members are named ``{key}.{member}``. WebDataset splits a member name at the first
dot, so keys (see :func:`sample_key`) never hold one.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import re
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from infra.storage import Storage
from tasks.clip import Clip
from tasks.media import jpeg_bytes, png_bytes

SCHEMA_VERSION = 1
FPS = 1
MAX_FRAMES = 1000  # members are numbered with three digits
FRAME_FORMATS = ("jpg", "png")

# Fixed tar header fields: the same samples always give the same bytes (and sha256), so a
# resumed run can tell a finished shard from a stale one by its checksum alone.
_TAR_MTIME = 0
_TAR_MODE = 0o644

_KEY_SLUG_MAX = 48
_KEY_HASH_CHARS = 12  # 48 bits of the id's sha256: collisions are negligible below ~10^6 clips


# -- keys ------------------------------------------------------------------------------
def sample_key(clip_id: str) -> str:
    """A WebDataset-safe key for clip_id: readable ASCII slug + '-' + short hash of the id.

    The slug keeps letters, digits, '_' and '-' (accents folded, dots, slashes and spaces
    become '_'); the hash keeps keys of different ids distinct even when their slugs agree.
    The original id is kept in meta.json.
    """
    if not isinstance(clip_id, str) or not clip_id:
        raise ValueError(f"clip id must be a non-empty string, got {clip_id!r}")
    folded = unicodedata.normalize("NFKD", clip_id).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", folded).strip("_-")[:_KEY_SLUG_MAX].strip("_-") or "clip"
    digest = hashlib.sha256(clip_id.encode("utf-8")).hexdigest()[:_KEY_HASH_CHARS]
    return f"{slug}-{digest}"


def shard_name(index: int) -> str:
    """File name of shard number index: shard-000012.tar."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"shard-{index:06d}.tar"


# -- encoding --------------------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _flac(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0).astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _json_safe(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from None


def clip_to_sample(
    clip: Clip,
    maskiges: np.ndarray | None = None,
    dino: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    frame_format: str = "jpg",
    jpeg_quality: int = 95,
) -> dict[str, Any]:
    """Encode one clip as a WebDataset sample: {"__key__": str, member name: bytes}.

    maskiges:   uint8 [T, H, W] Maskige indices, or None.
    dino:       float [T, D] embeddings, or None (stored as float16).
    provenance: how each enrichment was made, e.g. {"maskige": {"source": "sam", "model": ...,
                "checkpoint_sha256": ..., "config_hash": ...}, "embed": {...}}.
    """
    clip.validate()
    where = f"clip {clip.clip_id!r}"
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"{where}: frame_format must be one of {FRAME_FORMATS}, got {frame_format!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"{where}: jpeg_quality must be in [1, 100], got {jpeg_quality}")
    t, h, w = clip.frames.shape[:3]
    if t > MAX_FRAMES:
        raise ValueError(f"{where}: {t} frames, a shard sample holds at most {MAX_FRAMES}")
    if maskiges is not None:
        if maskiges.shape != (t, h, w) or maskiges.dtype != np.uint8:
            raise ValueError(
                f"{where}: maskiges must be uint8 [{t}, {h}, {w}], got {maskiges.dtype} {list(maskiges.shape)}"
            )
    if dino is not None:
        if dino.ndim != 2 or dino.shape[0] != t:
            raise ValueError(f"{where}: dino must be [{t}, D], got {list(dino.shape)}")
        if not np.all(np.isfinite(dino)):
            raise ValueError(f"{where}: dino holds NaN or infinite values")
    gt_frames = [bool(g) for g in clip.gt_frames] if clip.masks is not None else [False] * t
    if clip.masks is not None and clip.masks.dtype != np.uint8:
        raise ValueError(f"{where}: masks must be uint8, got {clip.masks.dtype}")

    key = sample_key(clip.clip_id)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "clip_id": clip.clip_id,
        "key": key,
        "source_uri": clip.source_uri,
        "content_hash": clip.content_hash(),
        "split": clip.split,
        "setting": clip.setting,
        "labels": list(clip.labels),
        "num_frames": int(t),
        "fps": FPS,
        "frame_size": [int(h), int(w)],
        "frame_format": frame_format,
        "sample_rate": int(clip.sample_rate),
        "num_audio_samples": int(clip.audio.shape[0]),
        "has_masks": clip.masks is not None,
        "gt_frames": gt_frames,
        "has_maskige": maskiges is not None,
        "dino_dim": int(dino.shape[1]) if dino is not None else None,
        "provenance": _json_safe(provenance or {}, f"{where}: provenance"),
        "meta": _json_safe(clip.meta, f"{where}: meta"),
    }
    sample: dict[str, Any] = {"__key__": key}
    sample["meta.json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    for i in range(t):
        frame = np.ascontiguousarray(clip.frames[i])
        sample[f"f{i:03d}.{frame_format}"] = png_bytes(frame) if frame_format == "png" else jpeg_bytes(frame, int(jpeg_quality), subsampling="4:4:4")
    if maskiges is not None:
        from tasks.enrich.maskige import maskige_png  # owned by the Maskige step; the palette lives there

        for i in range(t):
            sample[f"g{i:03d}.png"] = maskige_png(np.ascontiguousarray(maskiges[i]))
    if clip.masks is not None:
        for i in range(t):
            if gt_frames[i]:
                sample[f"m{i:03d}.png"] = png_bytes(clip.masks[i])
    sample["logmel.npy"] = _npy(clip.logmel.astype(np.float16))
    sample["wav.flac"] = _flac(clip.audio, clip.sample_rate)
    if dino is not None:
        sample["dino.npy"] = _npy(np.asarray(dino).astype(np.float16))
    return sample


# -- decoding --------------------------------------------------------------------------
@dataclass
class ClipSample:
    """A decoded shard sample.

    frames:   uint8 [T, H, W, 3]
    maskiges: uint8 [T, H, W] Maskige indices, or None
    masks:    uint8 [T, H, W] or None; frames without ground truth hold zeros
    gt_frames: list[bool], T entries
    logmel:   float32 [T, 96, 64]
    audio:    float32 [N], mono, meta["sample_rate"] Hz; None when decoded without audio
    dino:     float32 [T, D] or None
    """

    key: str
    meta: dict[str, Any]
    frames: np.ndarray
    maskiges: np.ndarray | None
    masks: np.ndarray | None
    gt_frames: list[bool]
    logmel: np.ndarray
    audio: np.ndarray | None
    dino: np.ndarray | None = None

    @property
    def clip_id(self) -> str:
        return self.meta["clip_id"]

    def to_clip(self) -> Clip:
        """The Clip this sample was written from (frames as decoded, so JPEG-lossy)."""
        if self.audio is None:
            raise ValueError(f"sample {self.key!r} was decoded without its audio (with_audio=False)")
        m = self.meta
        return Clip(
            clip_id=m["clip_id"], frames=self.frames, audio=self.audio, logmel=self.logmel, masks=self.masks,
            gt_frames=list(self.gt_frames) if self.masks is not None else [], setting=m["setting"],
            split=m["split"], labels=list(m["labels"]), source_uri=m["source_uri"],
            sample_rate=int(m["sample_rate"]), meta=dict(m["meta"]),
        )


def _absent(value: Any) -> bool:
    # Ray Data puts rows with different members into one table: missing cells come back as
    # None or NaN.
    return value is None or (isinstance(value, float) and math.isnan(value))


def _image(value: Any, what: str) -> np.ndarray:
    """A member as an array: raw PNG/JPEG bytes, or an array some reader already decoded."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(value))) as im:
            if im.mode == "P":  # keep palette indices: a Maskige written without tasks.enrich.maskige
                return np.asarray(im)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im)
    if isinstance(value, Image.Image):
        return np.asarray(value)
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{what}: expected image bytes or an array, got {type(value).__name__}")


def _array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.load(io.BytesIO(bytes(value)), allow_pickle=False)
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"{what}: expected .npy bytes or an array, got {type(value).__name__}")


def _meta(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return json.loads(bytes(value).decode("utf-8"))
    if isinstance(value, str):
        return json.loads(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise ValueError(f"{what}: expected meta.json bytes or a dict, got {type(value).__name__}")


def sample_meta(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The meta.json of a raw or reader-decoded sample, without decoding anything else."""
    key = sample.get("__key__", "?")
    if _absent(sample.get("meta.json")):
        raise ValueError(f"sample {key!r} has no meta.json member")
    return _meta(sample["meta.json"], f"sample {key!r} meta.json")


def decode_sample(sample: Mapping[str, Any], with_audio: bool = True, with_dino: bool = True) -> ClipSample:
    """Decode one sample into arrays.

    with_audio / with_dino False leave ``wav.flac`` / ``dino.npy`` undecoded (None): training
    reads neither, and the FLAC decode is a real share of a clip's decoding time.

    Accepts raw samples (member name -> bytes, as the stock ``webdataset`` reader yields with
    no decoder, and as ``ray.data.read_webdataset(..., decoder=None)`` yields) and rows that
    Ray Data's default decoder already turned into arrays and dicts (images as numpy arrays,
    palette PNGs as their indices, ``.npy`` as arrays, ``meta.json`` as a dict).
    """
    key = str(sample.get("__key__", "?"))
    meta = sample_meta(sample)
    where = f"sample {key!r} (clip {meta.get('clip_id')!r})"
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{where}: shard schema version {version!r}, this code reads version {SCHEMA_VERSION}")
    t = int(meta["num_frames"])
    h, w = (int(x) for x in meta["frame_size"])
    fmt = meta.get("frame_format", "jpg")

    def member(name: str) -> Any:
        value = sample.get(name)
        if _absent(value):
            raise ValueError(f"{where}: member {name!r} is missing")
        return value

    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        f = _image(member(f"f{i:03d}.{fmt}"), f"{where} f{i:03d}.{fmt}")
        if f.shape != (h, w, 3):
            raise ValueError(f"{where}: frame {i} is {list(f.shape)}, meta.json says [{h}, {w}, 3]")
        frames[i] = f

    maskiges = None
    if meta.get("has_maskige"):
        maskiges = np.empty((t, h, w), np.uint8)
        for i in range(t):
            value = member(f"g{i:03d}.png")
            if isinstance(value, (bytes, bytearray, memoryview)):
                from tasks.enrich.maskige import read_maskige_png

                g = read_maskige_png(bytes(value))
            else:
                g = _image(value, f"{where} g{i:03d}.png")
            if g.shape != (h, w):
                raise ValueError(f"{where}: Maskige {i} is {list(g.shape)}, expected [{h}, {w}]")
            maskiges[i] = g

    gt_frames = [bool(g) for g in meta["gt_frames"]]
    masks = None
    if meta.get("has_masks"):
        masks = np.zeros((t, h, w), np.uint8)
        for i in range(t):
            if gt_frames[i]:
                m = _image(member(f"m{i:03d}.png"), f"{where} m{i:03d}.png")
                if m.shape != (h, w):
                    raise ValueError(f"{where}: mask {i} is {list(m.shape)}, expected [{h}, {w}]")
                masks[i] = m

    logmel = _array(member("logmel.npy"), f"{where} logmel.npy").astype(np.float32)
    if logmel.shape != (t, 96, 64):
        raise ValueError(f"{where}: logmel is {list(logmel.shape)}, expected [{t}, 96, 64]")

    audio = None
    if with_audio:
        import soundfile as sf

        flac = member("wav.flac")
        if not isinstance(flac, (bytes, bytearray, memoryview)):
            raise ValueError(f"{where}: wav.flac must be FLAC bytes, got {type(flac).__name__}")
        audio, _ = sf.read(io.BytesIO(bytes(flac)), dtype="float32", always_2d=False)
        audio = np.asarray(audio, np.float32)

    dino = None
    if with_dino and meta.get("dino_dim") is not None:
        dino = _array(member("dino.npy"), f"{where} dino.npy").astype(np.float32)
        if dino.shape != (t, int(meta["dino_dim"])):
            raise ValueError(f"{where}: dino is {list(dino.shape)}, expected [{t}, {meta['dino_dim']}]")

    return ClipSample(key=key, meta=meta, frames=frames, maskiges=maskiges, masks=masks, gt_frames=gt_frames,
                      logmel=logmel, audio=audio, dino=dino)


# -- tars ------------------------------------------------------------------------------
@dataclass
class ShardInfo:
    """One written shard. splits counts its samples per split (lets readers skip shards)."""

    name: str
    url: str
    count: int
    sha256: str
    nbytes: int
    keys: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, Any]:
        """What manifest.json records of this shard (no URL: shards live beside the manifest)."""
        return {"name": self.name, "count": self.count, "sha256": self.sha256, "nbytes": self.nbytes,
                "splits": dict(sorted(self.splits.items()))}


def shard_bytes(samples: list[Mapping[str, Any]]) -> bytes:
    """A tar of samples, sorted by key, members of a sample sorted by name; byte-for-byte
    deterministic (fixed mtime, owner and mode), uncompressed (JPEG/PNG/FLAC are already)."""
    by_key: dict[str, Mapping[str, Any]] = {}
    for s in samples:
        key = s.get("__key__")
        if not isinstance(key, str) or not key:
            raise ValueError(f"shard sample without a '__key__': members {sorted(s)[:6]}")
        if "." in key or "/" in key or key.startswith("__"):
            raise ValueError(f"shard sample key {key!r} must hold no '.' or '/' and not start with '__'")
        if key in by_key:
            raise ValueError(f"two samples with key {key!r} in one shard")
        by_key[key] = s
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key in sorted(by_key):
            s = by_key[key]
            for name in sorted(n for n in s if not n.startswith("__")):
                data = s[name]
                if not isinstance(data, (bytes, bytearray)):
                    raise ValueError(f"sample {key!r} member {name!r} must be bytes, got {type(data).__name__}")
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                info.mtime = _TAR_MTIME
                info.mode = _TAR_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.type = tarfile.REGTYPE
                tar.addfile(info, io.BytesIO(bytes(data)))
    return buf.getvalue()


def write_shard(samples: list[Mapping[str, Any]], url: str, storage: Storage) -> ShardInfo:
    """Write samples as one tar at url, in a single atomic write; return what was written."""
    if not samples:
        raise ValueError(f"no samples to write to shard {url}")
    data = shard_bytes(samples)
    storage.write_bytes(url, data)
    splits = Counter(str(sample_meta(s).get("split", "none")) for s in samples)
    return ShardInfo(
        name=posixpath.basename(url.rstrip("/")), url=url, count=len(samples),
        sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data),
        keys=sorted(s["__key__"] for s in samples), splits=dict(sorted(splits.items())),
    )


def read_shard(url: str, storage: Storage) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard, in tar order, read with the stock webdataset tar iterators."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with storage.open(url, "rb") as stream:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
