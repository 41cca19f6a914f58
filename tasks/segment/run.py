"""A new video segmented by a trained checkpoint: which pixels of each second make the sound.

:func:`segment_video` reads a video of any length (local or s3://, any container FFmpeg opens)
in windows of T seconds (T: the training data's clips, e.g. 5 for S4/MS3), one frame per
second taken at t + 0.5 s as the readers do, and writes under ``out_dir`` (local or s3://):

====================  =======================================================================
``masks/NNNNNN.png``  one mask per second NNNNNN of the video, at the training data's frame
                      size (square, as the model sees frames): 0 / 255 for S4 / MS3 models,
                      class ids (0 = background) for AVSS models
``overlay.mp4``       the sampled frames, each shown for its second, in the source's aspect
                      (longer side at most ``overlay_max_side``), the predicted pixels
                      tinted and outlined, with the input's audio (H.264 + AAC)
``summary.json``      per second: sounding (any pixel predicted), area fraction, frame time
                      (and per class areas for AVSS); totals; the input (duration, fps, size,
                      audio or "none"); the preprocessing used; written last
====================  =======================================================================

Each window is made into model input exactly as the training data was: frames decoded as
:mod:`tasks.decode.video` decodes a clip (the window's frames are what ``read_av`` gives for a
clip starting at the window's first second); the log-mel of its 16 kHz audio in the data set's
framing; a Maskige from the data set's mask source and settings (computed on the decoded
frames, as preprocessing does); then the window goes through the shard format and the loader
(:func:`tasks.shards.schema.clip_to_sample`, :func:`~tasks.shards.schema.decode_sample`,
:class:`tasks.shards.loader.ClipTransform`), so frames are JPEG-coded at the data set's quality
when its shards hold JPEG and the log-mel is rounded to float16, as the model saw its training
and evaluation data. The model runs as the evaluation runs it (input resized to ``model_size``,
default the frame size rounded to a multiple of 32; predictions at the frame size; foreground
where sigmoid > 0.5, classes by argmax), so a clip of the data set, given as its video, gets the
masks the evaluation scores for it (tests/tasks/segment/test_segment.py shows this).

Where this differs from how the evaluation reads data:

- The last window: when the video does not fill it, its missing seconds repeat the last frame
  and hold the audio that is there (else silence), as the video reader pads a short clip; the
  padded seconds get no mask, no overlay frame and no entry in the summary.
- A video without an audio track (which the readers reject) is segmented with silence (a
  log-mel of zeros, as the readers pad missing audio); the summary says ``"audio": "none"``.
- Training data read from AVSBench folders had its frames extracted by AVSBench's own tools; a
  new video is sampled at t + 0.5 s by our reader.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from infra.storage import Storage, join
from tasks.clip import Clip, ClipDecodeError
from tasks.decode.logmel import log_mel_examples
from tasks.evaluate.report import resolve_device, scoring_sizes
from tasks.evaluate.scoring import label_map, model_inputs, predict, to_device, to_model_size
from tasks.media import png_bytes
from tasks.segment.overlay import OverlayWriter, highlight, palette
from tasks.segment.reader import Window, WindowStream
from tasks.segment.recipe import Recipe, RecipeError, check_framing, training_recipe
from tasks.shards.loader import ClipTransform, collate_clips
from tasks.shards.schema import clip_to_sample, decode_sample
from tasks.checkpoint import build_from_checkpoint, read_meta

log = logging.getLogger(__name__)

MASKS_DIR = "masks"
SUMMARY_FILE = "summary.json"
OVERLAY_FILE = "overlay.mp4"
PROGRESS_EVERY_S = 60  # a log line per this many seconds of video
LAST_WINDOW = "padded: seconds past the end repeat the last frame (audio as there, else silence); no output for them"


class SegmentError(ValueError):
    """A video or checkpoint cannot be segmented as asked; the message names it and says why."""


def mask_name(second: int) -> str:
    return f"{second:06d}.png"


def video_name(uri: str) -> str:
    """The file name of a video without its extension (the default output folder's last part)."""
    base = posixpath.basename(uri.split("://", 1)[-1].rstrip("/"))
    return os.path.splitext(base)[0] or "video"


# -- one window -> labels ----------------------------------------------------------------------
class WindowModel:
    """A window of the reader -> label maps uint8 [T, S, S], through the training data's recipe."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, device: torch.device, model_size: int,
                 storage: Storage, semantic: bool):
        self.model, self.recipe, self.device, self.model_size = model, recipe, device, model_size
        self.semantic = semantic
        self.transform = ClipTransform(recipe.frame_size, augment=False)
        self.maker = None
        if getattr(model, "use_maskige", False):
            if recipe.maskige is None:
                raise SegmentError(f"the model needs Maskiges but its training data ({recipe.origin}) has none")
            from tasks.enrich.maskige import MaskigeMaker

            try:
                self.maker = MaskigeMaker(recipe.maskige, storage, device=device)
            except Exception as e:  # noqa: BLE001 - a missing or unreadable SAM checkpoint, names it
                raise SegmentError(f"cannot make Maskiges as the training data had them ({recipe.origin}): {e}; "
                                   "segment.sam_checkpoint=<path or s3://> gives the SAM checkpoint's place") from None
            want = recipe.maskige_sha256
            if recipe.maskige.source == "sam" and want and self.maker.checkpoint_sha256 != want:
                raise SegmentError(f"SAM checkpoint {recipe.maskige.sam.checkpoint} has sha256 "
                                   f"{str(self.maker.checkpoint_sha256)[:12]}..., the training data's Maskiges were "
                                   f"made with {want[:12]}...: another SAM would give other Maskiges")

    def example(self, window: Window, name: str) -> dict[str, Any]:
        """The window as one loader example: through the shard format, as training data went."""
        r = self.recipe
        clip = Clip(clip_id=f"{name}@{window.start}s", frames=window.frames, audio=window.audio,
                    logmel=log_mel_examples(window.audio, r.window_s, framing=r.logmel_framing), setting=r.setting,
                    source_uri=name, meta={"window": window.index})
        maskige = self.maker(window.frames)[0] if self.maker is not None else None
        sample = clip_to_sample(clip, maskiges=maskige, frame_format=r.frame_format, jpeg_quality=r.jpeg_quality)
        return self.transform(decode_sample(sample, with_audio=False, with_dino=False), np.random.default_rng(0))

    @torch.no_grad()
    def __call__(self, windows: list[Window], name: str) -> np.ndarray:
        batch = to_device(collate_clips([self.example(w, name) for w in windows]), self.device)
        outputs = self.model(**to_model_size(model_inputs(batch), self.model_size))
        pred = predict(self.model, outputs, batch)  # B x T x [C + 1 x] S x S
        return np.stack([np.stack([label_map(pred[b, t], self.semantic).byte().cpu().numpy()
                                   for t in range(pred.shape[1])]) for b in range(pred.shape[0])])


# -- the summary ---------------------------------------------------------------------------------
def second_entry(second: int, time_s: float, labels: np.ndarray, semantic: bool) -> dict[str, Any]:
    area = float((labels != 0).mean())
    entry: dict[str, Any] = {"second": second, "time_s": time_s, "sounding": area > 0, "area": round(area, 6)}
    if semantic:
        ids, counts = np.unique(labels[labels != 0], return_counts=True)
        entry["classes"] = {str(int(i)): round(float(c) / labels.size, 6) for i, c in zip(ids, counts)}
    return entry


def totals(seconds: list[dict[str, Any]]) -> dict[str, Any]:
    sounding = [s for s in seconds if s["sounding"]]
    out = {
        "seconds": len(seconds),
        "sounding_seconds": len(sounding),
        "mean_area": round(float(np.mean([s["area"] for s in seconds])), 6) if seconds else 0.0,
        "mean_area_sounding": round(float(np.mean([s["area"] for s in sounding])), 6) if sounding else 0.0,
    }
    if seconds and "classes" in seconds[0]:
        classes: dict[str, int] = {}
        for s in seconds:
            for c in s["classes"]:
                classes[c] = classes.get(c, 0) + 1
        out["class_seconds"] = dict(sorted(classes.items(), key=lambda kv: int(kv[0])))
    return out


def found_message(total: dict[str, Any], has_audio: bool) -> str:
    """One line: what was found ("sounding object in 4 of 5 seconds, mean area 12% ...")."""
    n, k = total["seconds"], total["sounding_seconds"]
    if k == 0:
        text = f"nothing sounding found in {n} second{'s' if n != 1 else ''}"
    else:
        text = (f"sounding object in {k} of {n} second{'s' if n != 1 else ''}, mean area "
                f"{total['mean_area_sounding']:.0%} of the frame in those seconds")
        if "class_seconds" in total:
            text += f" (class ids {', '.join(total['class_seconds'])})"
    return text if has_audio else f"no audio track (segmented with silence): {text}"


# -- the step ------------------------------------------------------------------------------------
def segment_video(video_uri: str, checkpoint_uri: str, storage: Storage, out_dir: str, *, device: str = "auto",
                  expect_model: str | None = None, dataset: str | None = None, window_s: int | None = None,
                  model_size: int | None = None, batch_size: int = 1, overlay: bool = True,
                  overlay_max_side: int = 480, decode_deadline_s: float | None = 120.0,
                  sam_checkpoint: str | None = None) -> dict[str, Any]:
    """Segment the video at video_uri with the checkpoint; write masks/, overlay.mp4 and
    summary.json under out_dir (module docstring). Returns summary.json's content plus
    ``paths`` (name -> URL) and ``message`` (what was found, in one line).

    Raises SegmentError for a video that is missing or unreadable (the readers' reasons: not a
    video, truncated or corrupt, zero frames, too short, no video track, deadline exceeded) or
    a checkpoint that is missing; CheckpointError for a checkpoint that cannot be loaded.
    """
    start_time = time.perf_counter()
    if batch_size < 1:
        raise SegmentError(f"batch_size must be >= 1, got {batch_size}")
    if not storage.exists(video_uri):
        raise SegmentError(f"cannot segment {video_uri}: missing file (no such file or object)")
    if not storage.exists(checkpoint_uri):
        raise SegmentError(f"checkpoint {checkpoint_uri} does not exist (a checkpoint folder written by the "
                           "training flow, local or s3://)")
    read_meta(checkpoint_uri, storage)  # CheckpointError naming it when there is no usable meta.json
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise SegmentError(str(e)) from None
    model, meta = build_from_checkpoint(checkpoint_uri, storage, expect_model=expect_model, device=dev)
    try:
        recipe = training_recipe(meta, checkpoint_uri, storage, dataset=dataset, window_s=window_s,
                                 sam_checkpoint=sam_checkpoint)
        check_framing(recipe)
    except RecipeError as e:
        raise SegmentError(str(e)) from None
    num_classes = int(getattr(model, "num_classes", None) or meta.model_options.get("num_classes") or 1)
    semantic = num_classes > 1
    image_size, model_size = scoring_sizes((recipe.frame_size, recipe.frame_size), None, model_size)
    trained_at = ((meta.config.get("train") or {}).get("loader") or {}).get("image_size")
    if trained_at and trained_at != model_size:
        log.warning("%s was trained on %d px input (train.loader.image_size); like the evaluation, segment feeds it "
                    "%d px (the data set's frame size rounded to 32); segment.model_size=%d gives the training size",
                    checkpoint_uri, trained_at, model_size, trained_at)
    runner = WindowModel(model, recipe, dev, model_size, storage, semantic)
    name = video_name(video_uri)
    log.info("segmenting %s with %s (%s, epoch %d) on %s: windows of %d s, %d px frames, model input %d px, "
             "preprocessing from %s", video_uri, checkpoint_uri, meta.model, meta.epoch, dev, recipe.window_s,
             recipe.frame_size, model_size, recipe.origin)

    colours = palette(semantic)
    seconds: list[dict[str, Any]] = []
    padded = 0
    windows_done = 0
    paths = {"masks": join(out_dir, MASKS_DIR), "summary": join(out_dir, SUMMARY_FILE)}
    if overlay:
        paths["overlay"] = join(out_dir, OVERLAY_FILE)
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(storage.local_path(video_uri))
        except FileNotFoundError:
            raise SegmentError(f"cannot segment {video_uri}: missing file") from None
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="avs-segment-"))
        stream = WindowStream(local, video_uri, recipe.window_s, recipe.frame_size,
                              display_max_side=overlay_max_side if overlay else None, original_audio=overlay,
                              deadline_s=decode_deadline_s)
        writer: OverlayWriter | None = None
        try:
            stack.enter_context(stream)
            facts = stream.facts
            pending: list[Window] = []

            def flush() -> None:
                nonlocal writer, padded, windows_done
                labels = runner(pending, name)
                for window, window_labels in zip(pending, labels):
                    windows_done += 1
                    padded += recipe.window_s - window.real
                    if overlay and writer is None:
                        w, h = stream.facts.display_size
                        writer = OverlayWriter(os.path.join(tmp, OVERLAY_FILE), w, h, window.original_rate,
                                               window.original_audio.shape[0] if window.original_audio is not None
                                               else 1)
                    for i in range(window.real):
                        second = window.start + i
                        out = window_labels[i] if semantic else window_labels[i] * np.uint8(255)
                        storage.write_bytes(join(paths["masks"], mask_name(second)), png_bytes(out))
                        seconds.append(second_entry(second, window.frame_times[i], window_labels[i], semantic))
                        if writer is not None:
                            writer.add_frame(highlight(window.display[i], window_labels[i], colours))
                    if writer is not None and window.original_audio is not None:
                        writer.add_audio(window.original_audio)
                    if windows_done % max(1, PROGRESS_EVERY_S // recipe.window_s) == 0:
                        log.info("%s: %d s segmented", video_uri, window.start + window.real)
                pending.clear()

            for window in stream:
                pending.append(window)
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
            facts = stream.facts
        except ClipDecodeError as e:
            raise SegmentError(f"cannot segment {video_uri}: {e.reason}") from None
        finally:
            if writer is not None:
                writer.close()
        if writer is not None:
            storage.put_file(writer.path, paths["overlay"])

    total = totals(seconds)
    message = found_message(total, facts.has_audio)
    summary: dict[str, Any] = {
        "video": video_uri,
        "input": facts.to_dict(),
        "checkpoint": checkpoint_uri,
        "checkpoint_epoch": meta.epoch,
        "model": meta.model,
        "setting": recipe.setting,
        "num_classes": num_classes,
        "masks": "0 / 255 (255: sounding)" if not semantic else "class ids (0: background)",
        "preprocessing": {**recipe.to_dict(), "model_size": model_size, "image_size": image_size},
        "device": str(dev),
        "window_s": recipe.window_s,
        "windows": windows_done,
        "last_window": LAST_WINDOW,
        "padded_seconds": padded,
        "seconds": seconds,
        "totals": total,
        "message": message,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "elapsed_s": round(time.perf_counter() - start_time, 3),
    }
    storage.write_text(paths["summary"], json.dumps(summary, indent=1, sort_keys=True, allow_nan=False) + "\n")
    log.info("%s: %s (%d window%s of %d s, %.1f s); results in %s", video_uri, message, windows_done,
             "" if windows_done == 1 else "s", recipe.window_s, summary["elapsed_s"], out_dir)
    return {**summary, "paths": paths}
