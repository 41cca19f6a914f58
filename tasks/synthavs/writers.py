"""Writing SynthAVS clips: the AVSBench folder layout (as the real data set has it) and mp4 files.

Everything is written through infra.storage (local paths and s3:// alike) and is
byte-deterministic: the same clip always gives the same bytes (PNG, JPEG, wav, pickle, mp4).

AVSBench facts mirrored here (from OpenNLPLab/AVSBench's loaders and preprocessing and
COMBO-AVS's dataset registration):
- S4: s4_meta_data.csv, comma separated, columns name, start_time, category, split (loaders
  read name and category by position 0 and 2, split by name). Frames PNG `{vid}_{1..T}.png`;
  masks grayscale PNG with values 0 / 255 (`// 255` gives 0/1); train annotated on frame 1 only.
- MS3: ms3_meta_data.csv with the video name first and a `split` column; frames
  `visual_frames/{vid}/{vid}.mp4_{i}.png`; every frame annotated, masks 0 / 255.
- Log-mel pickles: a torch float tensor [T, 1, 96, 64] pickled with plain pickle.
- AVSS: metadata.csv columns vid, uid, s_min, s_sec, a_obj, split, label (label = v1s | v1m | v2);
  `{label}/{uid}/frames/{i}.jpg` from i = 0; `labels_semantic/{i}.png` single channel, value =
  class id (0 = background); `labels_rgb/{i}.png` RGB colours of AVSBench's bit-interleaved
  palette; v1s train clips carry labels for frame 0 only.
- label2idx.json, as released: a JSON object indented by 4 spaces, no newline at the end,
  "background" first, values 1-based (`"background": 1`). Readers (AVSBench's
  color_dataloader.py, COMBO's register_avss_sem.py, ours) take a class's id from its key's
  position, never from the value. So the keys go in id order: background, then our
  categories by id (the release lists its 70 classes alphabetically; for us the position is
  the id the masks hold).
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
import wave

import numpy as np

from infra.storage import Storage, join
from tasks.clip import SAMPLE_RATE
from tasks.media import voc_palette
from tasks.media import jpeg_bytes, png_bytes

OBJECT_ROOT = "AVSBench_object"
SEMANTIC_ROOT = "AVSBench_semantic"
VIDEO_ROOT = "videos"
S4_COLUMNS = ("name", "start_time", "category", "split")
MS3_COLUMNS = ("video_id", "split")
AVSS_COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


# -- encoders --------------------------------------------------------------------------------

def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono wav of float audio in [-1, 1]."""
    pcm = np.clip(np.rint(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def logmel_pickle_bytes(logmel: np.ndarray) -> bytes:
    """A pickled torch float tensor [T, 1, 96, 64], as AVSBench's preprocessing stored log-mels.

    Plain pickle.dumps(tensor) embeds torch's legacy storage blob, whose storage key is the
    storage's memory address: the same tensor would pickle to different bytes on every run.
    We pickle the same structure with the key set to "0", so the bytes are deterministic; any
    reader that unpickles AVSBench's files reads these too.
    """
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(logmel, dtype=np.float32)[:, None, :, :].copy())

    raw_size = 8 + tensor.numel() * tensor.element_size()  # legacy blob tail: count + raw data

    class _StableStoragePickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
                fn, (blob,) = obj.__reduce__()  # (torch.storage._load_from_bytes, (legacy blob,))
                return fn, (_stable_legacy_blob(blob, raw_size),)
            return NotImplemented

    buf = io.BytesIO()
    _StableStoragePickler(buf, protocol=pickle.DEFAULT_PROTOCOL).dump(tensor)
    return buf.getvalue()


def _stable_legacy_blob(blob: bytes, raw_size: int) -> bytes:
    """torch's legacy save blob with its storage key replaced by "0".

    The blob is five pickles (magic number, protocol version, system info, the object whose
    persistent ids name the key, the list of keys) followed by the raw storage (raw_size
    bytes). The key is read from the key list and replaced in the pickle part only.
    """
    head, raw = blob[: len(blob) - raw_size], blob[len(blob) - raw_size:]
    f = io.BytesIO(head)
    for _ in range(3):
        pickle.load(f)
    unpickler = pickle.Unpickler(f)
    unpickler.persistent_load = lambda pid: None
    unpickler.load()
    keys = pickle.load(f)
    if len(keys) != 1 or f.tell() != len(head):
        raise RuntimeError(f"unexpected torch legacy storage layout (keys {keys!r}); cannot pickle log-mel stably")
    key = keys[0].encode("ascii")
    old = b"X" + len(key).to_bytes(4, "little") + key  # BINUNICODE opcode, uint32 length, text
    if head.count(old) < 2:
        raise RuntimeError("unexpected torch legacy storage layout (storage key not found twice)")
    return head.replace(old, b"X" + (1).to_bytes(4, "little") + b"0") + raw


def write_mp4(path: str, frames, num_frames: int, audio: np.ndarray, fps: int, crf: int,
              height: int, width: int) -> None:
    """H.264 (libx264, yuv420p) + AAC mp4 at a local path; byte-deterministic. frames: an
    iterable of uint8 [H, W, 3].

    What it takes for the same clip to give the same bytes on one machine:
    - x264 on one thread (with several, frame threads change the bitstream);
    - x264's macroblock-tree rate control off (``mbtree=0``): its float SIMD code (AVX-512
      where the CPU has it) gave one of two bitstreams for the same frames depending on the
      alignment of its buffers, i.e. on what the process had allocated before (about 1 encode
      in 4 when the heap was shifted between encodes; x264 core 165). Without mbtree, or
      without x264's assembly, 200 encodes in a row gave one bitstream. The price: at CRF 20
      the video track is 10-20 % larger (measured: +10 % at 224 px, +20 % at 64 px);
    - the muxer's ``+bitexact`` (no encoder version string or creation time in the file).
    The frame conversion (swscale, RGB -> yuv420p) and FFmpeg's AAC encoder were checked
    separately and give identical output from run to run. Machines with other SIMD may
    still write other bytes (not checked); the promise is per machine.
    """
    import av

    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even frame size, got {height}x{width}")
    container = av.open(path, mode="w", format="mp4", options={"fflags": "+bitexact"})
    try:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.thread_count = 1  # x264 with several threads is not bit-reproducible
        vs.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        aus = container.add_stream("aac", rate=SAMPLE_RATE)
        aus.layout = "mono"
        count = 0
        for frame in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
            count += 1
        if count != num_frames:
            raise ValueError(f"{path}: expected {num_frames} video frames, got {count}")
        for packet in vs.encode():
            container.mux(packet)
        chunk = 1024  # AAC frame size
        samples = np.asarray(audio, dtype=np.float32)
        for start in range(0, samples.size, chunk):
            af = av.AudioFrame.from_ndarray(samples[None, start:start + chunk], format="fltp", layout="mono")
            af.sample_rate = SAMPLE_RATE
            af.pts = start
            for packet in aus.encode(af):
                container.mux(packet)
        for packet in aus.encode():
            container.mux(packet)
    finally:
        container.close()


# -- layout ----------------------------------------------------------------------------------

def s4_paths(out: str, split: str, category: str, vid: str) -> dict[str, str]:
    base = join(out, OBJECT_ROOT, "Single-source", "s4_data")
    return {
        "frames": join(base, "visual_frames", split, category, vid),
        "wav": join(base, "audio_wav", split, category, f"{vid}.wav"),
        "logmel": join(base, "audio_log_mel", split, category, f"{vid}.pkl"),
        "masks": join(base, "gt_masks", split, category, vid),
    }


def ms3_paths(out: str, split: str, vid: str) -> dict[str, str]:
    base = join(out, OBJECT_ROOT, "Multi-sources", "ms3_data")
    return {
        "frames": join(base, "visual_frames", vid),
        "wav": join(base, "audio_wav", split, f"{vid}.wav"),
        "logmel": join(base, "audio_log_mel", split, f"{vid}.pkl"),
        "masks": join(base, "gt_masks", split, vid),
    }


def avss_dir(out: str, label: str, uid: str) -> str:
    return join(out, SEMANTIC_ROOT, label, uid)


def video_path(out: str, setting: str, split: str, clip_id: str) -> str:
    return join(out, VIDEO_ROOT, setting, split, f"{clip_id}.mp4")


def write_avsbench_clip(scene, out: str, storage: Storage, jpeg_quality: int) -> dict[str, str]:
    """Write one SynthScene in the AVSBench layout; returns its metadata-CSV row."""
    clip, spec = scene.clip, scene.spec
    vid, split, t_count = clip.clip_id, clip.split, clip.num_frames
    if clip.setting == "s4":
        category = spec.primary_category.name
        p = s4_paths(out, split, category, vid)
        for t in range(t_count):
            storage.write_bytes(join(p["frames"], f"{vid}_{t + 1}.png"), png_bytes(clip.frames[t]))
        for t in range(1 if split == "train" else t_count):  # AVSBench: S4 train has frame 1 only
            storage.write_bytes(join(p["masks"], f"{vid}_{t + 1}.png"), png_bytes(clip.masks[t] * np.uint8(255)))
        storage.write_bytes(p["wav"], wav_bytes(clip.audio))
        storage.write_bytes(p["logmel"], logmel_pickle_bytes(clip.logmel))
        return {"name": vid, "start_time": "0", "category": category, "split": split}
    if clip.setting == "ms3":
        p = ms3_paths(out, split, vid)
        for t in range(t_count):
            storage.write_bytes(join(p["frames"], f"{vid}.mp4_{t + 1}.png"), png_bytes(clip.frames[t]))
            storage.write_bytes(join(p["masks"], f"{vid}_{t + 1}.png"), png_bytes(clip.masks[t] * np.uint8(255)))
        storage.write_bytes(p["wav"], wav_bytes(clip.audio))
        storage.write_bytes(p["logmel"], logmel_pickle_bytes(clip.logmel))
        return {"video_id": vid, "split": split}
    if clip.setting == "avss":
        label = spec.avss_label
        base = avss_dir(out, label, vid)
        palette = voc_palette(len(spec.category_table) + 1)
        for t in range(t_count):
            storage.write_bytes(join(base, "frames", f"{t}.jpg"), jpeg_bytes(clip.frames[t], jpeg_quality))
        for t in range(1 if (label == "v1s" and split == "train") else t_count):
            storage.write_bytes(join(base, "labels_semantic", f"{t}.png"), png_bytes(clip.masks[t]))
            storage.write_bytes(join(base, "labels_rgb", f"{t}.png"), png_bytes(palette[clip.masks[t]]))
        storage.write_bytes(join(base, "audio.wav"), wav_bytes(clip.audio))
        return {"vid": vid, "uid": vid, "s_min": "0", "s_sec": "0", "a_obj": ";".join(clip.labels),
                "split": split, "label": label}
    raise ValueError(f"clip {vid!r}: cannot write setting {clip.setting!r} in the AVSBench layout")


def write_video_clip(scene, out: str, storage: Storage, fps: int, crf: int) -> str:
    """Render the clip at `fps` and write it as H.264 + AAC mp4; returns its URI."""
    clip = scene.clip
    t_count = clip.num_frames
    n = t_count * fps
    frames = (scene.render_at(i / fps) for i in range(n))
    url = video_path(out, clip.setting, clip.split, clip.clip_id)
    fd, tmp = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        write_mp4(tmp, frames, n, clip.audio, fps, crf, scene.spec.height, scene.spec.width)
        storage.put_file(tmp, url)
    finally:
        os.unlink(tmp)
    return url


def _csv_text(columns: tuple[str, ...], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row[c] for c in columns})
    return buf.getvalue()


def metadata_paths(out: str) -> dict[str, str]:
    return {
        "s4": join(out, OBJECT_ROOT, "Single-source", "s4_meta_data.csv"),
        "ms3": join(out, OBJECT_ROOT, "Multi-sources", "ms3_meta_data.csv"),
        "avss": join(out, SEMANTIC_ROOT, "metadata.csv"),
        "label2idx": join(out, SEMANTIC_ROOT, "label2idx.json"),
    }


def label2idx_text(category_names: list[str]) -> str:
    """label2idx.json in the released form (see the module docstring): background first,
    then the categories in id order, values 1-based (position + 1)."""
    names = ["background", *category_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be distinct, got {names}")
    return json.dumps({name: i + 1 for i, name in enumerate(names)}, indent=4)


def write_avsbench_metadata(out: str, storage: Storage, rows: dict[str, list[tuple[str, int, dict]]],
                            category_names: list[str]) -> dict[str, str]:
    """Write the metadata CSVs (rows sorted by split, then index) and label2idx.json.

    rows: setting -> [(split, index, csv row)]. Written after the clips, so that a reader
    listing the CSV never meets a clip that is not there yet.
    """
    paths = metadata_paths(out)
    columns = {"s4": S4_COLUMNS, "ms3": MS3_COLUMNS, "avss": AVSS_COLUMNS}
    written = {}
    for setting, items in rows.items():
        ordered = [r for _, _, r in sorted(items, key=lambda x: (SPLIT_ORDER[x[0]], x[1]))]
        storage.write_text(paths[setting], _csv_text(columns[setting], ordered))
        written[setting] = paths[setting]
        if setting == "avss":
            storage.write_text(paths["label2idx"], label2idx_text(category_names))
            written["label2idx"] = paths["label2idx"]
    return written
