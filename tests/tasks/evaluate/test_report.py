"""evaluate_checkpoint: a checkpoint scored on a shard split equals an independent AVSBench
computation over the same clips; the report (metrics.json, per_video.csv, curves.png,
overlays.png) is written locally or to s3://; every bad input is a clear error before any batch."""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_eval import HISTORY, NUM_CATEGORIES, make_checkpoint, synth_clips, write_dataset

from infra.storage import Storage
from models.metrics import BinaryAVSMetric, SemanticAVSMetric
from tasks.enrich.maskige import maskige_rgb
from tasks.evaluate import report as report_module
from tasks.evaluate.report import EvaluationError, curve_panels, curves_png, evaluate_checkpoint
from tasks.shards.schema import shard_name
from tasks.checkpoint import MODEL_FILE, CheckpointError

torch.set_num_threads(1)



def reference(model: torch.nn.Module, clips: list[tuple], setting: str, model_size: int,
              batch_size: int) -> tuple[dict, dict]:
    """The AVSBench metric computed straight from the clips (no shards, no loader, no scoring
    helpers), one video at a time. The model runs on the same groups of clips as the evaluation's
    batches, in the same memory layout: on CPU a convolution's last bits can depend on both, and with
    logits near 0 one flipped pixel already changes a score in the 6th decimal."""
    semantic = setting == "avss"
    total = SemanticAVSMetric(NUM_CATEGORIES + 1) if semantic else BinaryAVSMetric()
    rows = {}
    with torch.no_grad():
        for j in range(0, len(clips), batch_size):
            group = clips[j:j + batch_size]
            # contiguous: a permuted (NHWC-strided) input would make the convolutions take another path
            frames = torch.stack([torch.from_numpy(c.frames).permute(0, 3, 1, 2) for c, _ in group]).contiguous()
            frames = frames.float() / 255
            maskige = torch.stack([torch.from_numpy(np.stack([maskige_rgb(m) for m in g])).permute(0, 3, 1, 2)
                                   for _, g in group]).contiguous().float() / 255
            b, t, _, size, _ = frames.shape
            if model_size != size:
                frames = F.interpolate(frames.flatten(0, 1), size=(model_size, model_size), mode="bilinear",
                                       align_corners=False, antialias=True).reshape(b, t, 3, model_size, model_size)
                maskige = F.interpolate(maskige.flatten(0, 1), size=(model_size, model_size),
                                        mode="nearest-exact").reshape(b, t, 3, model_size, model_size)
            # shards hold the log-mel as float16
            logmel = torch.stack([torch.from_numpy(c.logmel.astype(np.float16).astype(np.float32)) for c, _ in group])
            out = model(frames=frames, logmel=logmel, maskige=maskige)
            preds = model.segment(out, (size, size)).reshape(b, t, *(() if not semantic else (NUM_CATEGORIES + 1,)),
                                                              size, size)
            for (clip, _), pred in zip(group, preds):
                gt = torch.tensor(clip.gt_frames)
                labels = torch.from_numpy(clip.masks).long()
                total.update(pred[gt].float(), labels[gt])
                alone = SemanticAVSMetric(NUM_CATEGORIES + 1) if semantic else BinaryAVSMetric()
                alone.update(pred[gt].float(), labels[gt])
                s = alone.compute()
                rows[clip.clip_id] = {"frames": int(gt.sum()), "miou": float(s["miou"]), "fscore": float(s["fscore"])}
    return {k: v for k, v in total.compute().items()}, rows


def read_csv(storage: Storage, url: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(storage.read_text(url))))


def assert_png(storage: Storage, url: str, min_side: int = 200) -> Image.Image:
    data = storage.read_bytes(url)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert min(image.size) >= min_side and max(image.size) <= 2000 and len(data) < 1_000_000
    assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something is drawn
    return image


def assert_report_matches(result: dict, storage: Storage, ref: dict, ref_rows: dict, setting: str) -> None:
    paths = result["paths"]
    saved = json.loads(storage.read_text(paths["metrics"]))
    assert saved == {k: v for k, v in result.items() if k != "paths"}
    assert saved["setting"] == setting and saved["split"] == "test" and saved["dataset_version"] == "v-evaltest"
    assert saved["miou"] == pytest.approx(float(ref["miou"]), abs=1e-12)
    assert saved["fscore"] == pytest.approx(float(ref["fscore"]), abs=1e-12)
    variants = {k: float(v) for k, v in ref.items() if v.numel() == 1 and k not in ("miou", "fscore", "num_videos",
                                                                                   "num_frames")}
    assert set(saved["variants"]) == set(variants) and "miou_dataset" in variants
    for k, v in variants.items():
        assert saved["variants"][k] == pytest.approx(v, abs=1e-12), k
    assert saved["num_videos"] == len(ref_rows) and saved["num_frames"] == sum(r["frames"] for r in ref_rows.values())
    rows = read_csv(storage, paths["per_video"])
    assert {r["clip_id"] for r in rows} == set(ref_rows)
    for r in rows:
        want = ref_rows[r["clip_id"]]
        assert int(r["frames"]) == want["frames"]
        assert float(r["miou"]) == pytest.approx(want["miou"], abs=1e-12)
        assert float(r["fscore"]) == pytest.approx(want["fscore"], abs=1e-12)
    keys = [(float(r["miou"]), float(r["fscore"]), r["clip_id"]) for r in rows]
    assert keys == sorted(keys)  # worst first
    assert_png(storage, paths["curves"])
    assert_png(storage, paths["overlays"])


# -- the report equals an independent computation ------------------------------------------------
def test_binary_report_matches_an_independent_computation(tmp_path):
    storage = Storage()
    clips = synth_clips("s4", "test", 5, 64)
    ds = str(tmp_path / "ds")
    write_dataset(storage, ds, clips + synth_clips("s4", "val", 2, 64))
    model = make_checkpoint(str(tmp_path / "run" / "ckpt"), "tpavi_tiny", "s4", clip=clips[1][0])
    out = str(tmp_path / "report")
    result = evaluate_checkpoint(str(tmp_path / "run" / "ckpt"), ds, storage, out, batch_size=2,
                                 expect_model="tpavi_tiny", num_overlays=2, progress=False)
    ref, ref_rows = reference(model, clips, "s4", 64, batch_size=2)
    assert_report_matches(result, storage, ref, ref_rows, "s4")
    assert sorted(os.listdir(out)) == ["curves.png", "metrics.json", "overlays.png", "per_video.csv"]
    assert result["image_size"] == result["model_size"] == 64 and result["model"] == "tpavi_tiny"
    assert result["num_clips"] == 5 and result["checkpoint_epoch"] == 3
    # 5 videos, 2 best + 2 worst: 4 rows of (frame, ground truth, prediction)
    assert Image.open(result["paths"]["overlays"]).size[1] > 4 * 150


@pytest.mark.parametrize("name", ["tpavi_tiny", "combo_tiny"])
def test_semantic_report_scores_native_size_not_divisible_by_32(tmp_path, name):
    """AVSS (TPAVI; COMBO with Maskiges); 48 px frames: the model sees 64 px, ground truth is scored at 48."""
    storage = Storage()
    clips = synth_clips("avss", "test", 3, 48)
    ds = str(tmp_path / "ds")
    write_dataset(storage, ds, clips)
    model = make_checkpoint(str(tmp_path / "ckpt"), name, "avss", clip=clips[0][0] if name == "tpavi_tiny" else None)
    result = evaluate_checkpoint(str(tmp_path / "ckpt"), ds, storage, str(tmp_path / "report"), batch_size=2,
                                 num_overlays=1, progress=False)
    assert result["image_size"] == 48 and result["model_size"] == 64
    ref, ref_rows = reference(model, clips, "avss", 64, batch_size=2)
    assert_report_matches(result, storage, ref, ref_rows, "avss")
    assert "miou_drop_ignore" in result["variants"] and "miou_dataset_drop_ignore" in result["variants"]
    assert result["per_class"]["iou"] == pytest.approx([float(x) for x in ref["per_class_iou"]], abs=1e-12)
    assert len(result["per_class"]["fscore"]) == NUM_CATEGORIES + 1
    if name == "tpavi_tiny":  # the comparison is not between two all-background answers
        assert sum(x > 0 for x in result["per_class"]["iou"]) >= 2


def test_report_on_s3(tmp_path, s3_storage):
    storage, bucket = s3_storage
    clips = synth_clips("ms3", "test", 3, 64)
    ds = f"{bucket}/datasets/v-evaltest"
    write_dataset(storage, ds, clips)
    local = str(tmp_path / "ckpt")
    model = make_checkpoint(local, "tpavi_tiny", "ms3", history=[], clip=clips[0][0])
    ckpt = f"{bucket}/runs/r1/checkpoint_000000"
    for name in os.listdir(local):
        storage.put_file(os.path.join(local, name), f"{ckpt}/{name}")
    out = f"{bucket}/evaluations/r1"
    result = evaluate_checkpoint(ckpt, ds, storage, out, batch_size=4, num_overlays=4, progress=False)
    assert result["paths"]["metrics"] == f"{out}/metrics.json"
    assert sorted(u.rsplit("/", 1)[1] for u in storage.listdir(out)) == ["curves.png", "metrics.json",
                                                                        "overlays.png", "per_video.csv"]
    ref, ref_rows = reference(model, clips, "ms3", 64, batch_size=4)
    assert_report_matches(result, storage, ref, ref_rows, "ms3")  # empty history: a placeholder figure


def test_curves_plot_losses_and_validation_and_say_when_there_is_none():
    assert curve_panels(HISTORY) == [("loss per epoch", ["train_loss", "train_loss_mask"]),
                                     ("validation per epoch", ["val_fscore", "val_miou"])]
    for history in ([], HISTORY, [{"epoch": 1, "val_miou": float("nan"), "note": "x"}]):
        image = Image.open(io.BytesIO(curves_png(history)))
        assert image.size == (900, 320)


# -- bad input: a clear error before any batch is read ----------------------------------------------
@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if the split is ever read."""
    def refuse(*args, **kwargs):
        raise AssertionError("the loader was started: the error came too late")

    monkeypatch.setattr(report_module, "make_loader", refuse)


@pytest.fixture()
def s4_case(tmp_path):
    storage = Storage()
    ds = str(tmp_path / "ds")
    write_dataset(storage, ds, synth_clips("s4", "test", 2, 64) + synth_clips("s4", "val", 1, 64))
    make_checkpoint(str(tmp_path / "ckpt"), "tpavi_tiny", "s4")
    return storage, ds, str(tmp_path / "ckpt"), str(tmp_path / "report")


def test_another_models_checkpoint_is_refused(s4_case, no_work):
    storage, ds, ckpt, out = s4_case
    with pytest.raises(CheckpointError, match="made for model 'tpavi_tiny', not 'combo_tiny'"):
        evaluate_checkpoint(ckpt, ds, storage, out, expect_model="combo_tiny", progress=False)
    assert not os.path.exists(out)


def test_truncated_and_missing_checkpoints_are_refused(s4_case, tmp_path, no_work):
    storage, ds, ckpt, out = s4_case
    with pytest.raises(CheckpointError, match="no meta.json"):
        evaluate_checkpoint(str(tmp_path / "nothing"), ds, storage, out, progress=False)
    path = os.path.join(ckpt, MODEL_FILE)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"model.pt is \d+ bytes, meta.json says \d+ \(truncated"):
        evaluate_checkpoint(ckpt, ds, storage, out, progress=False)
    assert not os.path.exists(out)


def test_missing_split_and_missing_dataset_are_refused(s4_case, tmp_path, no_work):
    storage, ds, ckpt, out = s4_case
    with pytest.raises(EvaluationError, match=r"no clip of split 'train'; its splits: test \(2 clips\), val \(1"):
        evaluate_checkpoint(ckpt, ds, storage, out, split="train", progress=False)
    with pytest.raises(EvaluationError, match="no manifest.json at .*missing or unfinished"):
        evaluate_checkpoint(ckpt, str(tmp_path / "no-such-dataset"), storage, out, progress=False)
    os.remove(os.path.join(ds, "shards", shard_name(0)))
    with pytest.raises(EvaluationError, match="split 'test' listed in its manifest are missing: shard-000000"):
        evaluate_checkpoint(ckpt, ds, storage, out, progress=False)
    assert not os.path.exists(out)


def test_a_checkpoint_that_cannot_score_the_data_set_is_refused(s4_case, tmp_path, no_work):
    storage, ds, _, out = s4_case
    make_checkpoint(str(tmp_path / "avss"), "tpavi_tiny", "avss")
    with pytest.raises(EvaluationError, match="binary .* and semantic .* are not interchangeable"):
        evaluate_checkpoint(str(tmp_path / "avss"), ds, storage, out, progress=False)
    make_checkpoint(str(tmp_path / "combo"), "combo_tiny", "s4")  # needs Maskiges: write a data set without
    bare = str(tmp_path / "bare")
    write_dataset(storage, bare, [(c, None) for c, _ in synth_clips("s4", "test", 1, 64)])
    with pytest.raises(EvaluationError, match="needs Maskiges"):
        evaluate_checkpoint(str(tmp_path / "combo"), bare, storage, out, progress=False)
    with pytest.raises(EvaluationError, match="model_size must be a multiple of 32"):
        evaluate_checkpoint(str(tmp_path / "combo"), ds, storage, out, model_size=48, progress=False)
    assert not os.path.exists(out)


def test_overlays_show_best_and_worst_of_sounding_videos_and_silent_ones_apart():
    """A video whose ground truth is empty scores mIoU 1.0 by marking nothing: among the 'best' it
    would hide what the model does where something sounds, so it gets a row of its own."""
    from tasks.evaluate.report import Extremes, VideoView, has_sounding_object

    def view(clip_id, miou):
        return VideoView(clip_id, miou, 0.5, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8),
                         np.zeros((4, 4), np.uint8))

    videos = [("silent-perfect", 1.0, False), ("silent-marked", 0.4, False), ("a", 0.9, True), ("b", 0.2, True),
              ("c", 0.6, True), ("d", 0.7, True)]
    extremes = Extremes(2)
    for clip_id, miou, sounding in videos:
        if extremes.wants(miou, 0.5, clip_id, sounding):
            extremes.add(view(clip_id, miou), sounding)
    best, worst, silent = extremes.chosen()
    assert [v.clip_id for v in best] == ["a", "d"] and [v.clip_id for v in worst] == ["b", "c"]
    assert [v.clip_id for v in silent] == ["silent-marked"]  # the worst of them: pixels marked under silence

    masks = torch.zeros(2, 2, 4, 4, dtype=torch.long)
    masks[1, 1, 0, 0] = 1
    batch = {"masks": masks, "gt_frames": torch.tensor([[True, True], [True, False]])}
    assert not has_sounding_object(batch, 0)
    assert not has_sounding_object(batch, 1)  # its object is on a frame without ground truth
    batch["gt_frames"][1, 1] = True
    assert has_sounding_object(batch, 1)
