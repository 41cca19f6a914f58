"""A checkpoint scored on one split of a shard data set with the AVSBench protocol, and its report.

:func:`evaluate_checkpoint` checks everything it can before the first batch (the data set: its
manifest, schema version, the split, the shards, one sample; the checkpoint: every file's
sha256, ``torch.load(weights_only=True)``, the model it names; and that the two fit each
other), then reads the split once and writes, under ``out_dir`` (local or s3://):

===================  ==========================================================================
``per_video.csv``    clip_id, frames, miou, fscore of every scored video, worst first (miou
                     ascending, then fscore, then clip_id)
``curves.png``       the checkpoint's training history: losses per epoch, val mIoU / F per epoch
``overlays.png``     the ``num_overlays`` best and worst videos with a sounding object, and in a
                     row of its own the worst video where nothing sounds: one annotated frame
                     each, with its ground truth and the prediction overlaid, the clip id and
                     its scores
``metrics.json``     protocol values (``miou``, ``fscore``), the named variants, counts, the
                     checkpoint, the data set and its version, the split, the model; written last,
                     so a folder holding it holds a complete report
===================  ==========================================================================

Resolution: ground truth is scored at ``image_size`` (default: the data set's own frame size,
so masks are scored as they were written). The models need input sizes divisible by 32, so
frames and Maskiges are resized to ``model_size`` (default: ``image_size`` rounded to the
nearest multiple of 32) before the model sees them; predictions come back at the masks'
resolution (:func:`tasks.evaluate.scoring.predict`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import posixpath
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from infra.schema.shards import LoaderConfig
from infra.storage import Storage, join
from tasks.evaluate.scoring import label_map, model_inputs, new_metric, predict, score_clips, to_device, to_model_size
from tasks.shards.loader import make_loader
from tasks.shards.manifest import Manifest, read_manifest
from tasks.shards.schema import SCHEMA_VERSION, ClipSample, decode_sample, read_shard, sample_meta
from tasks.checkpoint import CheckpointMeta, build_from_checkpoint, read_meta

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PER_VIDEO_FILE = "per_video.csv"
CURVES_FILE = "curves.png"
OVERLAYS_FILE = "overlays.png"
PER_VIDEO_ORDER = "worst first: miou ascending, then fscore, then clip_id"
BINARY_SETTINGS = ("s4", "ms3")
IGNORE_ID = 255
THUMB_SIDE = 128  # overlays are drawn at most this many pixels a side
BINARY_COLOUR = (255, 48, 48)  # foreground of S4 / MS3 overlays
OVERLAY_ALPHA = 0.55


class EvaluationError(ValueError):
    """A data set or checkpoint cannot be evaluated as asked; the message says why."""


# -- checks before any work ----------------------------------------------------------------
@dataclass
class DatasetInfo:
    """What the checks found out about the split to score."""

    url: str
    manifest: Manifest
    split: str
    num_clips: int  # clips of the split, from the manifest
    first: ClipSample  # the split's first clip, decoded (setting, frame size, Maskige, labels)

    @property
    def setting(self) -> str:
        return str(self.first.meta.get("setting", "none"))

    @property
    def frame_size(self) -> tuple[int, int]:
        h, w = self.first.frames.shape[1:3]
        return int(h), int(w)


def check_dataset(dataset_url: str, storage: Storage, split: str) -> DatasetInfo:
    """The data set at dataset_url exists, is complete, is of a schema version this code reads,
    holds clips of split with ground truth, and its shards are in place (EvaluationError otherwise)."""
    try:
        manifest = read_manifest(dataset_url, storage)
    except ValueError as e:
        raise EvaluationError(f"data set {dataset_url}: {e}") from None
    if manifest is None:
        raise EvaluationError(f"no manifest.json at {dataset_url}: the data set is missing or unfinished "
                              "(a data set is a folder that flows/preprocess.py wrote)")
    if manifest.schema_version != SCHEMA_VERSION:
        raise EvaluationError(f"data set {dataset_url} has shard schema version {manifest.schema_version}, "
                              f"this code reads version {SCHEMA_VERSION}")
    counts = manifest.split_counts()
    if counts and not counts.get(split):
        held = ", ".join(f"{k} ({v} clips)" for k, v in counts.items() if v) or "none"
        raise EvaluationError(f"data set {dataset_url} has no clip of split {split!r}; its splits: {held}")
    shards = [s for s in sorted(manifest.shards, key=lambda s: s["name"])
              if not s.get("splits") or s["splits"].get(split)]
    if not shards:
        raise EvaluationError(f"data set {dataset_url} lists no shard holding split {split!r}")
    # one listing, not one request per shard
    present = {posixpath.basename(u.rstrip("/")) for u in storage.listdir(manifest.shard_url(dataset_url, ""))}
    missing = [s["name"] for s in shards if s["name"] not in present]
    if missing:
        raise EvaluationError(f"data set {dataset_url}: {len(missing)} shard(s) of split {split!r} listed in its "
                              f"manifest are missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    first = _first_sample(dataset_url, storage, manifest, shards, split)
    if first is None:
        raise EvaluationError(f"data set {dataset_url} has no clip of split {split!r}")
    if first.masks is None or not any(first.gt_frames):
        raise EvaluationError(f"data set {dataset_url}: clip {first.clip_id!r} of split {split!r} carries no ground "
                              f"truth (setting {first.meta.get('setting')!r}): nothing to score")
    num = int(counts.get(split, 0)) if counts else sum(int(s["count"]) for s in shards)
    return DatasetInfo(dataset_url, manifest, split, num, first)


def _first_sample(dataset_url: str, storage: Storage, manifest: Manifest, shards: list[dict],
                  split: str) -> ClipSample | None:
    for entry in shards:
        url = manifest.shard_url(dataset_url, entry["name"])
        try:
            with contextlib.closing(read_shard(url, storage)) as samples:
                for sample in samples:
                    if sample_meta(sample).get("split") == split:
                        return decode_sample(sample)
        except (ValueError, tarfile.TarError) as e:
            raise EvaluationError(f"data set {dataset_url}: shard {entry['name']} cannot be read: {e}") from None
    return None


def _check_fit(meta: CheckpointMeta, model: torch.nn.Module, info: DatasetInfo, uri: str) -> tuple[str, int]:
    """(setting, num_classes) to score with; EvaluationError when the checkpoint cannot score the data set."""
    setting = info.setting
    # what the built model predicts (every model of models/ says); the recorded option otherwise
    num_classes = int(getattr(model, "num_classes", None) or meta.model_options.get("num_classes") or 1)
    where = f"checkpoint {uri} ({meta.model}, {num_classes} class(es){', ' + meta.setting if meta.setting else ''})"
    if setting not in BINARY_SETTINGS + ("avss",):
        raise EvaluationError(f"data set {info.url}: setting {setting!r} has no AVSBench metric (s4, ms3 or avss)")
    if meta.setting and (meta.setting == "avss") != (setting == "avss"):
        raise EvaluationError(f"{where} cannot score data set {info.url} of setting {setting!r}: "
                              "binary (s4 / ms3) and semantic (avss) models are not interchangeable")
    if setting in BINARY_SETTINGS and num_classes != 1:
        raise EvaluationError(f"{where} cannot score data set {info.url} of setting {setting!r}: "
                              "s4 / ms3 need a model with num_classes=1")
    if setting == "avss" and num_classes < 2:
        raise EvaluationError(f"{where} cannot score data set {info.url} of setting 'avss': a semantic model "
                              "needs num_classes >= 2 (num_classes=1 builds a binary model)")
    if meta.setting and meta.setting != setting:
        log.warning("%s was trained on %s, scoring it on %s clips", uri, meta.setting, setting)
    labels = info.first.masks[np.asarray(info.first.gt_frames)]
    top = int(labels[labels != IGNORE_ID].max(initial=0))
    limit = 1 if setting in BINARY_SETTINGS else num_classes
    if top > limit:
        raise EvaluationError(f"data set {info.url}: clip {info.first.clip_id!r} holds class id {top}, but {where} "
                              f"predicts ids 0..{limit}")
    if getattr(model, "use_maskige", False) and info.first.maskiges is None:
        raise EvaluationError(f"{where} needs Maskiges, but data set {info.url} has none "
                              f"(clip {info.first.clip_id!r}); build it with a Maskige source")
    return setting, num_classes


def scoring_sizes(frame_size: tuple[int, int], image_size: int | None, model_size: int | None) -> tuple[int, int]:
    """(image_size, model_size): where ground truth is scored (default: the data set's own frame
    side) and what the model sees (default: image_size rounded to the nearest multiple of 32)."""
    h, w = frame_size
    if image_size is None:
        if h != w:
            raise EvaluationError(f"frames are {h} x {w}, not square: the loader resizes to a square, so give "
                                  "image_size (ground truth is then scored at image_size x image_size)")
        image_size = h
    if image_size < 8:
        raise EvaluationError(f"image_size must be >= 8 pixels, got {image_size}")
    if model_size is None:
        model_size = max(32, 32 * int(image_size / 32 + 0.5))
    if model_size < 32 or model_size % 32:
        raise EvaluationError(f"model_size must be a multiple of 32 (the backbones' stride), got {model_size}")
    return int(image_size), int(model_size)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise EvaluationError(f"device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvaluationError(f"device {device!r} asked for, but torch sees no CUDA device here")
    return dev


# -- the pass over the split -----------------------------------------------------------------
@dataclass
class VideoView:
    """One annotated frame of a scored video, small, for overlays.png."""

    clip_id: str
    miou: float
    fscore: float
    frame: np.ndarray  # uint8 [h, w, 3]
    gt: np.ndarray  # uint8 [h, w] class ids (255 = ignore)
    pred: np.ndarray  # uint8 [h, w] class ids


class Extremes:
    """The k best and k worst videos with a sounding object seen so far, and the ``silent`` worst
    of those whose ground truth is empty on every annotated frame (memory stays bounded on any split
    size). Empty-ground-truth videos are kept apart: one scores 1.0 by marking nothing, so among the
    best they would hide what the model does where something sounds."""

    def __init__(self, k: int, silent: int = 1):
        self.k = k
        self.silent_k = silent if k else 0
        self.best: list[VideoView] = []
        self.worst: list[VideoView] = []
        self.silent: list[VideoView] = []

    @staticmethod
    def _rank(v: VideoView) -> tuple[float, float, str]:
        return (v.miou, v.fscore, v.clip_id)

    def wants(self, miou: float, fscore: float, clip_id: str, sounding: bool = True) -> bool:
        key = (miou, fscore, clip_id)
        if not sounding:
            return self.silent_k > 0 and (len(self.silent) < self.silent_k or key < self._rank(self.silent[-1]))
        if self.k == 0:
            return False
        return (len(self.best) < self.k or key > self._rank(self.best[-1])
                or len(self.worst) < self.k or key < self._rank(self.worst[-1]))

    def add(self, view: VideoView, sounding: bool = True) -> None:
        if not sounding:
            self.silent = sorted(self.silent + [view], key=self._rank)[: self.silent_k]
            return
        self.best = sorted(self.best + [view], key=self._rank, reverse=True)[: self.k]
        self.worst = sorted(self.worst + [view], key=self._rank)[: self.k]

    def chosen(self) -> tuple[list[VideoView], list[VideoView], list[VideoView]]:
        """(best, worst, silent): best first, worst first, silent worst first; a video is shown once."""
        best_ids = {v.clip_id for v in self.best}
        return self.best, [v for v in self.worst if v.clip_id not in best_ids], self.silent


def has_sounding_object(batch: dict[str, Any], i: int) -> bool:
    """Clip i's ground truth marks some pixel (not background, not ignored) on an annotated frame."""
    masks = batch["masks"][i][batch["gt_frames"][i]]
    return bool(((masks != 0) & (masks != IGNORE_ID)).any())


def _thumb(image: np.ndarray, nearest: bool) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = THUMB_SIDE / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def _view(batch: dict[str, Any], pred: torch.Tensor, i: int, row: dict[str, Any], semantic: bool) -> VideoView:
    """The clip's first annotated frame with foreground (else its first annotated frame)."""
    gt_frames = batch["gt_frames"][i]
    masks = batch["masks"][i]
    annotated = [t for t in range(gt_frames.numel()) if bool(gt_frames[t])]
    with_fg = [t for t in annotated if bool(((masks[t] != 0) & (masks[t] != IGNORE_ID)).any())]
    t = (with_fg or annotated)[0]
    frame = (batch["frames"][i, t].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    gt = masks[t].clamp(0, 255).byte().cpu().numpy()
    pr = label_map(pred[i, t], semantic).clamp(0, 255).byte().cpu().numpy()
    return VideoView(row["clip_id"], row["miou"], row["fscore"], _thumb(frame, False), _thumb(gt, True),
                     _thumb(pr, True))


# -- the report --------------------------------------------------------------------------------
def _figure(width_in: float, height_in: float):
    # Figure + Agg canvas directly: no pyplot, no global backend, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def curve_panels(history: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """What curves.png plots of a history (one dict per epoch): every key holding 'loss' in one
    panel, every key holding 'miou' or 'fscore' (``val_miou``, ``val_fscore``,
    ``val_miou_dataset`` ...) in the other; counts and rates are left out."""
    keys = sorted({k for h in history for k, v in h.items() if _number(v) is not None and k != "epoch"})
    return [("loss per epoch", [k for k in keys if "loss" in k]),
            ("validation per epoch", [k for k in keys if "loss" not in k and ("miou" in k or "fscore" in k)])]


def curves_png(history: list[dict[str, Any]], title: str = "") -> bytes:
    """Training curves from a checkpoint's history (:func:`curve_panels`); an empty history gives
    a figure that says so."""
    epochs = [_number(h.get("epoch")) or float(i + 1) for i, h in enumerate(history)]
    panels = curve_panels(history)
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 3.2)
    if not any(names for _, names in panels):
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no training history in this checkpoint\n(no epoch recorded a loss, an mIoU or an F-score)",
                ha="center", va="center", fontsize=11)
    else:
        for j, (name, names) in enumerate(panels):
            ax = fig.add_subplot(1, 2, j + 1)
            for key in names:
                pts = [(e, _number(h.get(key))) for e, h in zip(epochs, history) if _number(h.get(key)) is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=key)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if names:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "nothing recorded", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    if title:
        fig.suptitle(title if len(title) <= 110 else "..." + title[-107:], fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _colours(semantic: bool) -> np.ndarray:
    """uint8 [256, 3]: the colour of each class id in an overlay (AVSS: AVSBench's palette)."""
    from tasks.media import voc_palette

    palette = voc_palette(256)  # id 255 (ignore) gets VOC's (224, 224, 192)
    if not semantic:
        palette = palette.copy()
        palette[1] = BINARY_COLOUR
    return palette


def _overlay(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    out = frame.astype(np.float32)
    on = labels != 0
    out[on] = (1 - OVERLAY_ALPHA) * out[on] + OVERLAY_ALPHA * palette[labels[on]].astype(np.float32)
    return out.round().astype(np.uint8)


def _ids(labels: np.ndarray) -> str:
    ids = [int(i) for i in np.unique(labels) if i not in (0, IGNORE_ID)]
    return ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "") if ids else "none"


def overlays_png(best: list[VideoView], worst: list[VideoView], semantic: bool, title: str = "",
                 silent: list[VideoView] = ()) -> bytes:
    """A grid, one row per video: the best and the worst of the videos with a sounding object (best
    first, then worst first), then the worst of those where nothing sounds (``silent``): frame,
    ground truth overlaid, prediction overlaid; the clip id and its scores above the frame."""
    rows = ([("best", i + 1, v) for i, v in enumerate(best)] + [("worst", i + 1, v) for i, v in enumerate(worst)]
            + [("nothing sounds", i + 1, v) for i, v in enumerate(silent)])
    palette = _colours(semantic)
    fig = _figure(6.6, 0.35 + 1.75 * max(1, len(rows)))
    if not rows:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no video to show (num_overlays = 0)", ha="center", va="center", fontsize=10)
    for r, (tag, rank, v) in enumerate(rows):
        panels = [(v.frame, f"{tag} {rank}: {v.clip_id[:34]}\nmIoU {v.miou:.3f}  F {v.fscore:.3f}")]
        for name, labels in (("ground truth", v.gt), ("prediction", v.pred)):
            caption = f"{name}\nclasses {_ids(labels)}" if semantic else name
            panels.append((_overlay(v.frame, labels, palette), caption))
        for c, (image, label) in enumerate(panels):
            ax = fig.add_subplot(len(rows), 3, 3 * r + c + 1)
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def per_video_csv(rows: list[dict[str, Any]]) -> str:
    """per_video.csv: clip_id, frames, miou, fscore; worst first (see PER_VIDEO_ORDER)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["clip_id", "frames", "miou", "fscore"], lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r["miou"], r["fscore"], r["clip_id"])):
        writer.writerow({"clip_id": row["clip_id"], "frames": row["frames"], "miou": repr(float(row["miou"])),
                         "fscore": repr(float(row["fscore"]))})
    return buf.getvalue()


def _scalars(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items() if torch.is_tensor(v) and v.numel() == 1 and k != "num_videos"
            and k != "num_frames"}


# -- the step ----------------------------------------------------------------------------------
def evaluate_checkpoint(checkpoint_uri: str, dataset_url: str, storage: Storage, out_dir: str, split: str = "test",
                        device: str = "cpu", batch_size: int = 4, expect_model: str | None = None,
                        num_overlays: int = 4, image_size: int | None = None, *, model_size: int | None = None,
                        progress: bool = True,
                        on_predictions: Callable[[list[str], torch.Tensor], None] | None = None,
                        change_batch: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict:
    """Score the checkpoint on split of the data set (AVSBench protocol) and write the report
    (module docstring) under out_dir; returns metrics.json's content plus ``paths`` (name -> URL).

    Raises before any batch is read: EvaluationError for the data set (missing, unfinished,
    unknown schema version, no such split, shards missing, no ground truth) or a mismatch
    (binary vs semantic, classes, Maskiges, sizes, device); CheckpointError
    (tasks.checkpoint) for the checkpoint (missing, truncated, corrupt, unsafe, another
    model than expect_model).

    on_predictions: called after each batch with its clip ids and what ``predict`` gave for
    them (B x T x H x W logits, or B x T x (C + 1) x H x W scores), e.g. to compare the
    predictions of another path (tasks/segment) with the ones scored here.

    change_batch: applied to each batch (on the device) before the model sees it, e.g. to score
    the model with other audio (tasks/evaluate/robustness.py); the ground truth scored is the batch's.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    if num_overlays < 0:
        raise EvaluationError(f"num_overlays must be >= 0, got {num_overlays}")
    dev = resolve_device(device)
    read_meta(checkpoint_uri, storage)  # no checkpoint there: say so before reading the data set
    info = check_dataset(dataset_url, storage, split)
    image_size, model_size = scoring_sizes(info.frame_size, image_size, model_size)
    # checks the model name (expect_model) before reading any weights, then every file's sha256
    model, meta = build_from_checkpoint(checkpoint_uri, storage, expect_model=expect_model, device=dev)
    setting, num_classes = _check_fit(meta, model, info, checkpoint_uri)
    semantic = setting == "avss"
    log.info("evaluating %s (%s, epoch %d) on %s split %s: %d clips, %s, ground truth at %d px, model input %d px, %s",
             checkpoint_uri, meta.model, meta.epoch, dataset_url, split, info.num_clips, setting, image_size,
             model_size, dev)

    loader = make_loader(dataset_url, storage, LoaderConfig(batch_size=batch_size, num_workers=0, shuffle_buffer=0,
                                                            image_size=image_size, augment=False), split=split)
    metric = new_metric(setting, num_classes).to(dev)
    rows: list[dict[str, Any]] = []
    extremes = Extremes(num_overlays)
    clips_seen = 0
    with torch.no_grad():
        for batch in tqdm(loader, total=math.ceil(info.num_clips / batch_size), desc=f"evaluate {split}",
                          unit="batch", disable=not progress):
            batch = to_device(batch, dev)
            if change_batch is not None:
                batch = change_batch(batch)
            clips_seen += len(batch["clip_id"])
            outputs = model(**to_model_size(model_inputs(batch), model_size))
            pred = predict(model, outputs, batch)
            if on_predictions is not None:
                on_predictions(list(batch["clip_id"]), pred)
            new = score_clips(metric, pred, batch)
            index = {clip_id: i for i, clip_id in enumerate(batch["clip_id"])}
            for row in new:
                sounding = has_sounding_object(batch, index[row["clip_id"]])
                if extremes.wants(row["miou"], row["fscore"], row["clip_id"], sounding):
                    extremes.add(_view(batch, pred, index[row["clip_id"]], row, semantic), sounding)
            rows.extend(new)
    if not rows:
        raise EvaluationError(f"no clip of split {split!r} in {dataset_url} carries ground truth: nothing was scored")
    scores = metric.compute()
    values = _scalars(scores)
    protocol = {k: values.pop(k) for k in ("miou", "fscore")}
    num_frames = sum(r["frames"] for r in rows)
    report: dict[str, Any] = {
        **protocol,
        "variants": values,
        "setting": setting,
        "split": split,
        "num_videos": len(rows),
        "num_frames": num_frames,
        "num_clips": clips_seen,
        "clips_without_ground_truth": clips_seen - len(rows),
        "checkpoint": checkpoint_uri,
        "checkpoint_epoch": meta.epoch,
        "model": meta.model,
        "num_classes": num_classes,
        "dataset": dataset_url,
        "dataset_version": info.manifest.dataset_version,
        "trained_on": {"dataset": meta.dataset_url, "dataset_version": meta.dataset_version, "setting": meta.setting},
        "image_size": image_size,
        "model_size": model_size,
        "device": str(dev),
        "per_video_order": PER_VIDEO_ORDER,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    if semantic:
        report["per_class"] = {"iou": [float(x) for x in scores["per_class_iou"]],
                               "fscore": [float(x) for x in scores["per_class_fscore"]]}
    if clips_seen != info.num_clips:
        log.warning("%s: the manifest counts %d clips of split %s, the shards held %d", dataset_url, info.num_clips,
                    split, clips_seen)

    name = f"{meta.model} epoch {meta.epoch} on {split} ({info.manifest.dataset_version})"
    paths = {"per_video": join(out_dir, PER_VIDEO_FILE), "curves": join(out_dir, CURVES_FILE),
             "overlays": join(out_dir, OVERLAYS_FILE), "metrics": join(out_dir, METRICS_FILE)}
    storage.write_text(paths["per_video"], per_video_csv(rows))
    storage.write_bytes(paths["curves"], curves_png(meta.history, f"{meta.model}: {checkpoint_uri}"))
    best, worst, silent = extremes.chosen()
    storage.write_bytes(paths["overlays"], overlays_png(best, worst, semantic, name, silent))
    report["seconds"] = round(time.perf_counter() - start, 3)
    # last: a folder with metrics.json holds a complete report
    storage.write_text(paths["metrics"], json.dumps(report, indent=1, sort_keys=True, allow_nan=False) + "\n")
    log.info("%s: mIoU %.4f, F %.4f over %d videos (%d frames) in %.1f s; report in %s", name, report["miou"],
             report["fscore"], len(rows), num_frames, report["seconds"], out_dir)
    return {**report, "paths": paths}
