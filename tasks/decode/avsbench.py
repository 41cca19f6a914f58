"""Read AVSBench folders (S4, MS3, AVSS) as the real data set is laid out; SynthAVS writes
the same layout. Checked against the AVSBench repository (OpenNLPLab/AVSBench, its
dataloaders and preprocess scripts) and COMBO's AVSS loader:

S4 (``AVSBench_object/Single-source/``)
    ``s4_meta_data.csv``, comma separated, columns name, start time, category, split
    (read by name where the header has them, else by position: 0 = name, 2 = category).
    ``s4_data/visual_frames/{split}/{category}/{name}/{name}_{k}.png``, k = 1..5;
    ``s4_data/audio_wav/{split}/{category}/{name}.wav``;
    ``s4_data/audio_log_mel/{split}/{category}/{name}.pkl`` (pickled tensor [5, 1, 96, 64]);
    ``s4_data/gt_masks/{split}/{category}/{name}/{name}_{k}.png``: train k = 1 only, else 1..5.
MS3 (``AVSBench_object/Multi-sources/``)
    ``ms3_meta_data.csv`` (column 0 = name, split); frames
    ``ms3_data/visual_frames/{name}/{name}.mp4_{k}.png`` (not split-nested); wav, log-mel and
    masks under ``ms3_data/{audio_wav,audio_log_mel,gt_masks}/{split}/``; masks k = 1..5.
AVSS (``AVSBench_semantic/``)
    ``metadata.csv`` (uid, label = v1s | v1m | v2, split); ``label2idx.json`` (class names,
    71 entries, background first); per clip ``{label}/{uid}/frames/{i}.jpg`` with i from 0
    (5 frames for v1s / v1m, 10 for v2), ``labels_semantic/{i}.png`` (class ids) or
    ``labels_rgb/{i}.png`` (colour-coded with the VOC-style palette), ``audio.wav``.
    v1s train clips carry ground truth on frame 0 only.

Class ids (AVSS): a class's id is its *position* in ``label2idx.json``'s key order (JSON
object order, which :func:`json.loads` keeps), background first = 0; the values are not
used. This is how AVSBench (``avs_scripts/avss/color_dataloader.py``: the palette row of
class j is colour j, names from ``keys()``) and COMBO (``register_avss_sem.py``:
``stuff_classes`` from ``keys()``) read the file, and the released file has 1-based values
(``"background": 1``), so taking the values as ids would shift every class by one. Values
that are neither 0-based nor 1-based consecutive in key order are warned about (once per
file), never used. labels_semantic pixels hold these 0-based ids, 255 = ignore.

T per clip (``num_frames``): an int decodes every clip to that many frames. ``None`` follows
the clip: S4 / MS3 5; AVSS by its label (``AVSS_FRAMES``: v1s / v1m 5, v2 10; a label we do
not know: the frames listed), as AVSBench and COMBO train and score them (all 10 v2 frames).

Masks: S4/MS3 masks are grayscale 0/255 PNGs, binarised to {0, 1} (>= 128; palette PNGs:
index != 0). AVSS masks hold class ids, 255 = ignore, kept as is. A mask whose size differs
from its frame is rejected, not resized.

Log-mel: S4/MS3 pickles are untrusted and go through :mod:`tasks.decode.safe_pickle`; a
pickle is used as it is (AVSBench made them with ``vggish_input.wavfile_to_examples``:
VGGish framing, examples every 0.96 s). The wav is always read too (for ``Clip.audio``) and
is the log-mel source where no pickle exists, always for AVSS (AVSBench computes AVSS
features from ``audio.wav`` the same way): :func:`tasks.decode.logmel.log_mel_examples` with
its default framing, VGGish's (0.96 s steps, 0.96 s examples, 10 ms hop, 25 ms window, 64
mel bands 125-7500 Hz, log(mel + 0.01)), so wav-made and pickled log-mels agree and a
pretrained VGGish sees what it was trained on. ``meta["logmel_source"]`` says which was used
(pickle | wav | pickle+wav), ``meta["logmel_framing"]`` the framing of the wav-made part.

More frames than T: the first T are used. Fewer: the last frame repeats, without ground
truth, and ``meta["padded_seconds"]`` counts them (AVSBench's own AVSS loader pads with black).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from collections import defaultdict
from typing import Any

import numpy as np
from PIL import Image

from infra.storage import Storage, is_remote, join
from tasks.clip import SAMPLE_RATE, SPLITS, Clip, ClipDecodeError, ClipRef, Reject, Source
from tasks.decode.logmel import DEFAULT_FRAMING, log_mel_examples
from tasks.decode.safe_pickle import UnsafePickleError, load_array
from tasks.decode.video import decode_audio, resize_rgb
from tasks.media import voc_palette

OBJECT_DIR = "AVSBench_object"
SEMANTIC_DIR = "AVSBench_semantic"
S4_DIR = "Single-source"
MS3_DIR = "Multi-sources"
S4_CSV = "s4_meta_data.csv"
MS3_CSV = "ms3_meta_data.csv"
AVSS_CSV = "metadata.csv"
LABEL2IDX = "label2idx.json"
OBJECT_FRAMES = 5  # S4 and MS3 clips: 5 seconds, one frame per second
AVSS_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
IGNORE_ID = 255
_MAX_NAMED_MISSING = 4

log = logging.getLogger(__name__)


# -- where a setting lives --------------------------------------------------------------
def setting_root(root: str, setting: str, storage: Storage) -> str:
    """The folder holding the setting's metadata CSV: root may be the data set's top folder
    (with AVSBench_object/, AVSBench_semantic/) or the setting's own folder."""
    root = root.rstrip("/") if is_remote(root) else os.path.abspath(root)
    if setting == "s4":
        csv_name, candidates = S4_CSV, [join(root, OBJECT_DIR, S4_DIR), join(root, S4_DIR), root]
    elif setting == "ms3":
        csv_name, candidates = MS3_CSV, [join(root, OBJECT_DIR, MS3_DIR), join(root, MS3_DIR), root]
    elif setting == "avss":
        csv_name, candidates = AVSS_CSV, [join(root, SEMANTIC_DIR), root]
    else:
        raise ValueError(f"AVSBench setting must be s4, ms3 or avss, got {setting!r}")
    for base in candidates:
        if storage.exists(join(base, csv_name)):
            return base
    raise FileNotFoundError(f"no AVSBench {setting} metadata ({csv_name}) under {root}; looked in {candidates}")


def _read_csv(storage: Storage, url: str) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = storage.read_bytes(url).decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise ValueError(f"{url} is not UTF-8 text ({e}); save the CSV as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return header, rows


def _column(header: list[str], names: tuple[str, ...], position: int | None, url: str) -> str:
    for name in names:
        if name in header:
            return name
    if position is not None and position < len(header):
        return header[position]
    raise ValueError(f"{url}: no column {' or '.join(names)} in header {header}")


# -- listing ---------------------------------------------------------------------------
def list_clips(
    root: str, setting: str, storage: Storage, splits: list[str] | tuple[str, ...] | None
) -> tuple[list[ClipRef], list[Reject]]:
    """See :func:`tasks.decode.sources.list_avsbench`."""
    wanted = tuple(splits) if splits is not None else SPLITS
    bad = [s for s in wanted if s not in SPLITS]
    if bad:
        raise ValueError(f"splits may hold {SPLITS}, got {bad}")
    base = setting_root(root, setting, storage)
    files: dict[str, set[str]] = defaultdict(set)  # folder -> file names, from one listing
    for url in storage.walk_files(base):
        folder, name = url.rsplit("/", 1) if is_remote(url) else os.path.split(url)
        files[folder].add(name)
    lister = {"s4": _list_s4, "ms3": _list_ms3, "avss": _list_avss}[setting]
    refs, rejects = lister(base, storage, wanted, files)
    return refs, rejects


def _exists(files: dict[str, set[str]], url: str) -> bool:
    folder, name = url.rsplit("/", 1) if is_remote(url) else os.path.split(url)
    return name in files.get(folder, ())


def _rows(base: str, csv_name: str, storage: Storage, wanted: tuple[str, ...], id_names: tuple[str, ...],
          extra: dict[str, tuple[tuple[str, ...], int | None]]):
    """Yield (clip_id, split, extra columns, reject or None) for the CSV rows of the wanted splits."""
    url = join(base, csv_name)
    header, rows = _read_csv(storage, url)
    id_col = _column(header, id_names, 0, url)
    split_col = _column(header, ("split",), None, url)
    extra_cols = {key: _column(header, names, pos, url) for key, (names, pos) in extra.items()}
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        clip_id, split = row.get(id_col, ""), row.get(split_col, "")
        values = {key: row.get(col, "") for key, col in extra_cols.items()}
        where = f"{csv_name} line {line}"
        if split not in SPLITS:
            yield clip_id or f"{csv_name}:{line}", split, values, f"{where}: split {split!r} is not one of {SPLITS}"
            continue
        if split not in wanted:
            continue
        if not clip_id:
            yield f"{csv_name}:{line}", split, values, f"{where}: empty clip name"
            continue
        if clip_id in seen:
            yield clip_id, split, values, f"{where}: clip {clip_id!r} already listed on line {seen[clip_id]}"
            continue
        seen[clip_id] = line
        yield clip_id, split, values, None


def _missing_reason(base: str, members: dict[str, str], required: list[str], files: dict[str, set[str]]) -> str | None:
    missing = [k for k in required if not _exists(files, members[k])]
    if not missing:
        return None
    rel = lambda u: u[len(base) + 1 :] if u.startswith(base) else u  # noqa: E731
    named = ", ".join(f"{k} ({rel(members[k])})" for k in missing[:_MAX_NAMED_MISSING])
    more = f" and {len(missing) - _MAX_NAMED_MISSING} more" if len(missing) > _MAX_NAMED_MISSING else ""
    return f"missing file(s): {named}{more}"


def _object_ref(base, setting, clip_id, split, members, files, required, labels, folder) -> ClipRef | Reject:
    """A ref for an S4/MS3 row, or a Reject naming its missing files; the optional log-mel
    pickle is dropped from members when absent (decoding then computes it from the wav)."""
    reason = _missing_reason(base, members, required, files)
    if reason:
        return Reject(clip_id, folder, "list", reason)
    if not _exists(files, members["logmel"]):
        del members["logmel"]
    return ClipRef(clip_id, f"avsbench_{setting}", folder, split, setting, members, labels)


def _list_s4(base, storage, wanted, files):
    refs, rejects = [], []
    extra = {"category": (("category",), 2)}
    for name, split, values, problem in _rows(base, S4_CSV, storage, wanted, ("name", "vid", "video_id"), extra):
        if problem:
            rejects.append(Reject(name, join(base, S4_CSV), "list", problem))
            continue
        cat = values["category"]
        frames_dir = join(base, "s4_data", "visual_frames", split, cat, name)
        masks_dir = join(base, "s4_data", "gt_masks", split, cat, name)
        members = {f"frame_{i}": join(frames_dir, f"{name}_{i + 1}.png") for i in range(OBJECT_FRAMES)}
        annotated = range(1) if split == "train" else range(OBJECT_FRAMES)  # S4 train: frame 1 only
        members.update({f"mask_{i}": join(masks_dir, f"{name}_{i + 1}.png") for i in annotated})
        members["audio"] = join(base, "s4_data", "audio_wav", split, cat, f"{name}.wav")
        members["logmel"] = join(base, "s4_data", "audio_log_mel", split, cat, f"{name}.pkl")
        required = [k for k in members if k != "logmel"]
        out = _object_ref(base, "s4", name, split, members, files, required, [cat] if cat else [], frames_dir)
        (rejects if isinstance(out, Reject) else refs).append(out)
    return refs, rejects


def _list_ms3(base, storage, wanted, files):
    refs, rejects = [], []
    for name, split, _, problem in _rows(base, MS3_CSV, storage, wanted, ("video_id", "name", "vid", "uid"), {}):
        if problem:
            rejects.append(Reject(name, join(base, MS3_CSV), "list", problem))
            continue
        frames_dir = join(base, "ms3_data", "visual_frames", name)
        masks_dir = join(base, "ms3_data", "gt_masks", split, name)
        members = {f"frame_{i}": join(frames_dir, f"{name}.mp4_{i + 1}.png") for i in range(OBJECT_FRAMES)}
        members.update({f"mask_{i}": join(masks_dir, f"{name}_{i + 1}.png") for i in range(OBJECT_FRAMES)})
        members["audio"] = join(base, "ms3_data", "audio_wav", split, f"{name}.wav")
        members["logmel"] = join(base, "ms3_data", "audio_log_mel", split, f"{name}.pkl")
        required = [k for k in members if k != "logmel"]
        out = _object_ref(base, "ms3", name, split, members, files, required, [], frames_dir)
        (rejects if isinstance(out, Reject) else refs).append(out)
    return refs, rejects


def _list_avss(base, storage, wanted, files):
    label2idx = join(base, LABEL2IDX)
    if not storage.exists(label2idx):
        raise FileNotFoundError(f"AVSS needs {label2idx} (class names and ids), and it is missing")
    refs, rejects = [], []
    extra = {"label": (("label",), None)}
    for uid, split, values, problem in _rows(base, AVSS_CSV, storage, wanted, ("uid",), extra):
        if problem:
            rejects.append(Reject(uid, join(base, AVSS_CSV), "list", problem))
            continue
        label = values["label"]
        folder = join(base, label, uid)
        frames_dir = join(folder, "frames")
        present = files.get(frames_dir, set())
        count = AVSS_FRAMES.get(label)
        if count is None:  # a subset we do not know: as many frames as are numbered from 0
            count = 0
            while f"{count}.jpg" in present or f"{count}.png" in present:
                count += 1
            if count == 0:
                rejects.append(Reject(uid, folder, "list", f"unknown subset {label!r} and no frames in {frames_dir}"))
                continue
        members = {}
        for i in range(count):
            png = join(frames_dir, f"{i}.png")
            members[f"frame_{i}"] = png if f"{i}.jpg" not in present and f"{i}.png" in present else join(frames_dir, f"{i}.jpg")
        annotated = [0] if (label == "v1s" and split == "train") else list(range(count))
        for i in range(count):
            semantic = join(folder, "labels_semantic", f"{i}.png")
            rgb = join(folder, "labels_rgb", f"{i}.png")
            if _exists(files, semantic):
                members[f"mask_{i}"] = semantic
            elif _exists(files, rgb):
                members[f"mask_{i}"] = rgb
            elif i in annotated:
                members[f"mask_{i}"] = semantic  # named in the reject below
        members["audio"] = join(folder, "audio.wav")
        members["label2idx"] = label2idx
        required = [k for k in members if k != "label2idx"]
        reason = _missing_reason(base, members, required, files)
        if reason:
            rejects.append(Reject(uid, folder, "list", reason))
            continue
        refs.append(ClipRef(uid, "avsbench_avss", folder, split, "avss", members, []))
    return refs, rejects


# -- decoding --------------------------------------------------------------------------
def avss_subset(ref: ClipRef) -> str:
    """The AVSS label (v1s | v1m | v2) of a clip: the folder its clip folder lies in."""
    return posixpath.basename(posixpath.dirname(ref.uri.replace(os.sep, "/").rstrip("/")))


def clip_num_frames(ref: ClipRef) -> int:
    """T of one AVSBench clip as the data set has it: S4 / MS3 5; AVSS by its label
    (v1s / v1m 5, v2 10), or the frames listed for a label we do not know."""
    setting = ref.kind.removeprefix("avsbench_")
    if setting == "avss":
        count = AVSS_FRAMES.get(avss_subset(ref))
        return count if count is not None else sum(1 for k in ref.members if k.startswith("frame_"))
    return OBJECT_FRAMES


def decode(ref: ClipRef, storage: Storage, num_frames: int | None, frame_size: int) -> Clip:
    """The Clip of one AVSBench clip: see the module docstring for what is read and how.

    num_frames: T, or None for the clip's own T (:func:`clip_num_frames`).
    """
    setting = ref.kind.removeprefix("avsbench_")
    if setting not in ("s4", "ms3", "avss"):
        raise ClipDecodeError(ref.clip_id, f"unknown AVSBench kind {ref.kind!r}")
    number_base = 0 if setting == "avss" else 1  # how the data set numbers its frames
    source_frames = sum(1 for k in ref.members if k.startswith("frame_"))
    if source_frames == 0:
        raise ClipDecodeError(ref.clip_id, "zero frames: the clip lists no frame files")
    t_from = "config"
    if num_frames is None:
        num_frames, t_from = clip_num_frames(ref), ("label" if setting == "avss" else "setting")
    used = min(num_frames, source_frames)
    classes = _label2idx(storage, ref.members["label2idx"], ref.clip_id) if setting == "avss" else None

    frames, masks, gt = [], [], []
    source_size = None
    for i in range(used):
        image = _read_image(storage, ref.members[f"frame_{i}"], ref.clip_id, f"frame {i + number_base}")
        source_size = source_size or list(image.size)
        frames.append(resize_rgb(np.asarray(image.convert("RGB")), frame_size))
        mask_url = ref.members.get(f"mask_{i}")
        if mask_url is None:
            masks.append(np.zeros((frame_size, frame_size), np.uint8))
            gt.append(False)
            continue
        what = f"mask {i + number_base}"
        mask_image = _read_image(storage, mask_url, ref.clip_id, what)
        if mask_image.size != image.size:
            raise ClipDecodeError(
                ref.clip_id,
                f"{what} is {mask_image.size[0]}x{mask_image.size[1]} but frames are {image.size[0]}x{image.size[1]} "
                f"({posixpath.basename(mask_url)})",
            )
        ids = _class_ids(mask_image, classes, ref.clip_id, what) if classes else _binary(mask_image)
        masks.append(np.asarray(Image.fromarray(ids).resize((frame_size, frame_size), Image.NEAREST)))
        gt.append(True)
    padded = num_frames - used
    frames += [frames[-1]] * padded
    masks += [np.zeros_like(masks[-1])] * padded
    gt += [False] * padded

    with storage.local_path(ref.members["audio"]) as wav:
        audio, audio_meta = decode_audio(wav, ref.clip_id, num_frames)
    logmel, logmel_source = _log_mel(ref, storage, audio, num_frames)

    mask_array = np.stack(masks).astype(np.uint8)
    labels = list(ref.labels)
    if classes:
        names = list(classes)  # id = position
        present = np.unique(mask_array[np.asarray(gt)]) if any(gt) else []
        labels = [names[int(c)] for c in present if int(c) not in (0, IGNORE_ID)]
    meta: dict[str, Any] = {
        "reader": "avsbench",
        "source_frames": source_frames,
        "num_frames_from": t_from,  # config (data.num_frames) | label (AVSS subset) | setting (S4/MS3: 5)
        "source_size": source_size,
        "padded_seconds": padded,
        "logmel_source": logmel_source,
        "logmel_framing": None if logmel_source == "pickle" else DEFAULT_FRAMING,  # None: the pickle as stored
        **audio_meta,
    }
    if setting == "avss":
        meta["avss_subset"] = avss_subset(ref)
    return Clip(
        clip_id=ref.clip_id,
        frames=np.stack(frames),
        audio=audio,
        logmel=logmel,
        masks=mask_array,
        gt_frames=gt,
        setting=setting,
        split=ref.split,
        labels=labels,
        source_uri=ref.uri,
        sample_rate=SAMPLE_RATE,
        meta=meta,
    )


def _read_image(storage: Storage, url: str, clip_id: str, what: str) -> Image.Image:
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ClipDecodeError(clip_id, f"{what} is missing: {url}") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a broken file
        raise ClipDecodeError(clip_id, f"{what} is not a readable image ({posixpath.basename(url)}): {e}") from None
    return image


def _binary(image: Image.Image) -> np.ndarray:
    """uint8 {0, 1} [H, W] from an S4/MS3 mask (AVSBench reads them as bilevel images)."""
    mode = image.mode
    if mode == "P":
        return (np.asarray(image) != 0).astype(np.uint8)
    if mode == "1":
        return np.asarray(image).astype(np.uint8)
    if mode in ("I;16", "I;16B", "I;16L"):
        return (np.asarray(image).astype(np.int64) >= 32768).astype(np.uint8)
    if mode in ("I", "F"):
        return (np.asarray(image) > 0).astype(np.uint8)
    return (np.asarray(image.convert("L")) >= 128).astype(np.uint8)


def _class_ids(image: Image.Image, classes: dict[str, int], clip_id: str, what: str) -> np.ndarray:
    """uint8 class ids [H, W] from an AVSS labels_semantic (ids) or labels_rgb (colours) PNG;
    classes: name -> id (= position in label2idx.json)."""
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        palette = voc_palette(len(classes)).astype(np.int32)
        lookup = {int((r << 16) | (g << 8) | b): i for i, (r, g, b) in enumerate(palette)}
        ids = np.full(code.shape, IGNORE_ID, np.uint8)
        for colour in np.unique(code):
            if int(colour) in lookup:
                ids[code == colour] = lookup[int(colour)]
        unknown = int((ids == IGNORE_ID).sum())
        if unknown == ids.size:
            raise ClipDecodeError(clip_id, f"{what}: no pixel has the colour of a class in {LABEL2IDX}")
        return ids
    ids = np.asarray(image if image.mode in ("L", "P", "I", "I;16") else image.convert("L")).astype(np.int64)
    known = set(range(len(classes))) | {IGNORE_ID}
    bad = sorted(set(np.unique(ids).tolist()) - known)
    if bad:
        raise ClipDecodeError(clip_id, f"{what} holds class id(s) {bad[:5]} that {LABEL2IDX} does not define")
    return ids.astype(np.uint8)


_LABEL2IDX_CACHE: dict[str, dict[str, int]] = {}


def class_ids(table: Any, where: str = LABEL2IDX) -> dict[str, int]:
    """name -> class id from a parsed label2idx.json: the id is the key's position (the
    values are ignored, see the module docstring). Raises ValueError for a table that is
    not a non-empty JSON object of integer values; warns when the values are neither 0-based
    nor 1-based consecutive in key order, or when the first key is not "background"."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{where} must be a non-empty JSON object of class names")
    values = list(table.values())
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where} must map class names to integers")
    n = len(values)
    if values != list(range(n)) and values != list(range(1, n + 1)):
        log.warning("%s: values are neither 0..%d nor 1..%d in key order; class ids are taken from the "
                    "key order (as AVSBench and COMBO do), the values are ignored", where, n - 1, n)
    first = next(iter(table))
    if first != "background":
        log.warning("%s: first key is %r, not 'background'; id 0 (the first key) is taken as background", where, first)
    if n > IGNORE_ID:
        raise ValueError(f"{where} has {n} classes; ids must stay below {IGNORE_ID} (the ignore id)")
    return {name: i for i, name in enumerate(table)}


def _label2idx(storage: Storage, url: str, clip_id: str) -> dict[str, int]:
    if url not in _LABEL2IDX_CACHE:
        try:
            table = json.loads(storage.read_text(url))
        except Exception as e:  # noqa: BLE001
            raise ClipDecodeError(clip_id, f"cannot read {LABEL2IDX} ({url}): {e}") from None
        try:
            _LABEL2IDX_CACHE[url] = class_ids(table, f"{LABEL2IDX} ({url})")
        except ValueError as e:
            raise ClipDecodeError(clip_id, str(e)) from None
    return _LABEL2IDX_CACHE[url]


def _log_mel(ref: ClipRef, storage: Storage, audio: np.ndarray, num_frames: int) -> tuple[np.ndarray, str]:
    """float32 [T, 96, 64]: the precomputed pickle when the clip has one, else from the wav
    (VGGish framing, the default of :func:`log_mel_examples`, as the pickles were made)."""
    url = ref.members.get("logmel")
    if url is None:
        return log_mel_examples(audio, num_frames), "wav"
    name = posixpath.basename(url)
    try:
        array = load_array(storage.read_bytes(url), name)
    except UnsafePickleError as e:
        raise ClipDecodeError(ref.clip_id, str(e)) from None
    except (ValueError, FileNotFoundError) as e:
        raise ClipDecodeError(ref.clip_id, f"log-mel pickle {name}: {e}") from None
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (96, 64) or array.shape[0] == 0:
        raise ClipDecodeError(ref.clip_id, f"log-mel pickle {name} has shape {list(array.shape)}, expected [T, 1, 96, 64]")
    if not np.isfinite(array).all():
        raise ClipDecodeError(ref.clip_id, f"log-mel pickle {name} holds NaN or infinite values")
    if array.shape[0] >= num_frames:
        return np.ascontiguousarray(array[:num_frames], dtype=np.float32), "pickle"
    logmel = log_mel_examples(audio, num_frames)  # seconds past the pickle's end: from the wav
    logmel[: array.shape[0]] = array
    return logmel, "pickle+wav"


def _list_source(root: str, data, storage: Storage) -> tuple[list[ClipRef], list[Reject]]:
    return list_clips(root, data.setting, storage, list(data.splits))


SOURCE = Source("avsbench", list=_list_source, decode=decode, kinds=("avsbench_s4", "avsbench_ms3", "avsbench_avss"))

