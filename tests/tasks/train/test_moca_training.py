"""MoCA training from mined pairs (tasks/train/moca.py) on the tiny SynthAVS data set
(conftest.train_dataset): no mask is ever read in training; a Ray Train run writes a checkpoint
that the evaluate step scores; the same run name resumes; bad input fails before Ray starts.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from infra.config import compose
from infra.storage import Storage, join
from tasks.shards.manifest import read_manifest
from tasks.shards.schema import decode_sample, read_shard, sample_meta, write_shard
from tasks.train.moca import (
    PAIRS_FILE, FrameStore, PairBatches, pair_index, rank_anchors, run_moca_training, strip_ground_truth, train_pairs,
)
from tasks.train.run import TrainSetupError

FAST = ["model=moca_tiny", "train.loader.image_size=64", "train.loader.batch_size=4", "train.num_workers=1",
        "train.cpus_per_worker=1", "train.epochs=1", "train.val_split=null", "train.evaluate=false", "seed=0"]
MASK = re.compile(r"^m\d{3}\.png$")


class MaskRead(AssertionError):
    pass


class Guarded(dict):
    """A raw sample that fails on any read of a ground-truth mask member."""

    def _check(self, key):
        if isinstance(key, str) and MASK.match(key):
            raise MaskRead(f"training read the ground-truth mask {key!r} of {dict.get(self, '__key__')}")

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def values(self):
        return [self[k] for k in self.keys()]


def _guard_shards(monkeypatch):
    import tasks.shards.schema as schema

    real = schema.read_shard
    monkeypatch.setattr(schema, "read_shard", lambda url, storage: (Guarded(s) for s in real(url, storage)))


def _copy_dataset(src: str, dst: Path, strip_train_masks: bool = False, pairs: bool = True) -> str:
    """A copy of the data set; optionally its train samples without their mask members (meta.json
    still says they have masks, so any reader that looks for one fails)."""
    storage = Storage()
    shutil.copytree(src, dst)
    if not pairs:
        (dst / PAIRS_FILE).unlink()
    if strip_train_masks:
        manifest = read_manifest(str(dst), storage)
        for url in manifest.shard_urls(str(dst)):
            samples = [{k: v for k, v in s.items() if not (MASK.match(k) and sample_meta(s)["split"] == "train")}
                       for s in read_shard(url, storage)]
            samples = [{k: v for k, v in s.items() if k not in ("__url__", "__local_path__")} for s in samples]
            write_shard(samples, url, storage)
    return str(dst)


@pytest.fixture(scope="module")
def maskless(train_dataset, tmp_path_factory):
    """The tiny data set with every train sample's masks removed (val / test keep theirs: scoring)."""
    _, url = train_dataset
    return _copy_dataset(url, tmp_path_factory.mktemp("moca") / "maskless", strip_train_masks=True)


def test_the_frame_store_and_batches_never_read_a_mask(train_dataset, monkeypatch):
    _, url = train_dataset
    storage = Storage()
    _guard_shards(monkeypatch)
    import tasks.shards.schema as schema

    # the guard works: decoding a train sample as it is reads its masks and trips it
    manifest = read_manifest(url, storage)
    raw = next(s for u in manifest.shard_urls(url) for s in schema.read_shard(u, storage)
               if sample_meta(s)["split"] == "train")
    with pytest.raises(MaskRead):
        decode_sample(raw, with_audio=False, with_dino=False)
    clip = decode_sample(strip_ground_truth(raw), with_audio=False, with_dino=False)
    assert clip.masks is None and clip.maskiges is None and not any(clip.gt_frames)

    store = FrameStore.load(url, storage, image_size=32)
    t = clip.frames.shape[0]
    assert store.frames.shape == (6 * t, 3, 32, 32) and store.frames.dtype == torch.uint8  # 6 train clips
    assert store.logmel.shape == (6 * t, 96, 64) and store.nbytes == 6 * t * (3 * 32 * 32 + 96 * 64 * 2)
    df = train_pairs(join(url, PAIRS_FILE), storage)
    assert set(store.keys) < set(df["key"])  # the file holds every split's frames; the store the train split's
    pairs = pair_index(df, store.index)
    assert len(pairs) == len(store.keys) and pairs.positives.shape[1] == 2 and pairs.negatives.shape[1] == 2
    batches = PairBatches(store, pairs, batch_size=4, image_size=32, augment=True, seed=0)
    batch = next(batches.epoch(0, rank=0, world=1))
    assert batch["frames"].shape == (4, 3, 32, 32) and batch["logmel"].shape == (4, 96, 64)
    assert batch["positive_frames"].shape == (4, 2, 3, 32, 32) and batch["negative_frames"].shape == (4, 2, 3, 32, 32)
    assert batch["positive_valid"].dtype == torch.bool and 0 <= float(batch["frames"].max()) <= 1
    assert "masks" not in batch and "maskige" not in batch

    # the step the loop takes: the loss through forward, gradients only for trainable parameters
    from models.build import build_model

    model = build_model("moca_tiny", num_classes=1)
    losses = model(**{k: v for k, v in batch.items() if torch.is_tensor(v)})
    losses["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None for p in model.adapters.parameters())


def test_padding_and_rank_split():
    import pandas as pd

    index = {"a": 0, "b": 1, "c": 2}
    df = pd.DataFrame({"key": ["a", "b", "c", "gone"], "positives": [["b"], [], ["a", "gone"], ["a"]],
                       "negatives": [["c", "gone"], ["gone"], ["b"], ["b"]]})
    pairs = pair_index(df, index)
    assert pairs.anchors.tolist() == [0, 2]  # b has no negative in the store, "gone" is no frame
    assert pairs.positives.tolist() == [[1, -1], [0, -1]] and pairs.negatives.tolist() == [[2, -1], [1, -1]]
    shares = [rank_anchors(5, r, 2, seed=0, epoch=3) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3] and set(torch.cat(shares).tolist()) == set(range(5))


@pytest.fixture(scope="module")
def first_run(maskless, tmp_path_factory, ray_local):
    """One epoch of moca_tiny on Ray Train (1 worker) on the data set without train masks."""
    out = tmp_path_factory.mktemp("moca-run")
    cfg = compose([*FAST, f"output={out}", "train.run_name=moca"])
    return run_moca_training(cfg, Storage(), maskless, logging.getLogger("test.moca")), out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*send logs to the API without a flow run id")
def test_moca_trains_on_ray_without_train_masks_and_its_checkpoint_is_scored(first_run, maskless, tmp_path):
    from tasks.evaluate.report import evaluate_checkpoint
    from tasks.train import moca
    from tasks.checkpoint import load_checkpoint

    result, out = first_run
    storage = Storage()
    assert [r[0]["epoch"] for r in result.reports] == [1]
    assert result.checkpoint_uri == f"{out}/train/moca/checkpoint_epoch0001"
    m = result.metrics
    assert m["samples"] == 30 and m["anchors"] == 30 and m["step"] == 8  # 6 train clips x 5 frames, batches of 4
    assert {"train_loss", "train_loss_contrastive", "train_positive_score", "train_negative_score", "test_miou"} <= set(m)
    ckpt = load_checkpoint(result.checkpoint_uri, storage, expect_model="moca_tiny", with_train_state=True)
    assert ckpt.meta.epoch == 1 and ckpt.meta.dataset_url == maskless and ckpt.train_state["optimizer"] is not None
    # the inference threshold: chosen on val after the last epoch, never worse there than the given one
    assert m["threshold"] in moca.THRESHOLD_GRID and ckpt.meta.model_options["threshold"] == m["threshold"]
    assert m["threshold_given"] == 0.0 and m["val_miou_at_threshold"] >= m["val_miou_at_threshold_given"]

    # scored as any model's checkpoint is, on the test split with its masks
    report = tmp_path / "report"
    metrics = evaluate_checkpoint(result.checkpoint_uri, maskless, storage, str(report), split="test",
                                  expect_model="moca_tiny", num_overlays=1, progress=False)
    assert (report / "metrics.json").exists() and isinstance(metrics["miou"], float) and 0 <= metrics["miou"] <= 1


@pytest.mark.slow
def test_the_same_run_name_trains_only_the_missing_epoch(first_run, maskless):
    result, out = first_run
    again = compose([*FAST, f"output={out}", "train.run_name=moca", "train.epochs=2"])
    resumed = run_moca_training(again, Storage(), maskless, logging.getLogger("test.moca"))
    assert [r[0]["epoch"] for r in resumed.reports] == [2]
    assert resumed.checkpoint_uri.endswith("checkpoint_epoch0002") and len(resumed.history) == 2
    assert resumed.history[0]["train_loss"] == pytest.approx(result.history[0]["train_loss"])
    assert resumed.metrics["step"] == 2 * result.metrics["step"]


@pytest.mark.slow
def test_two_ddp_workers_take_equal_steps_and_every_anchor_once(maskless, tmp_path, ray_local):
    cfg = compose([*FAST, "model.name=moca_baseline_similarity", "train.num_workers=2", "train.test_split=null",
                   "train.hooks.report_clip_ids=true", f"output={tmp_path}/out", "train.run_name=ddp"])
    result = run_moca_training(cfg, Storage(), maskless, logging.getLogger("test.moca"))
    per_rank = result.reports[0]
    assert [(m["rank"], m["rank_batches"], m["rank_samples"]) for m in per_rank] == [(0, 4, 15), (1, 4, 15)]
    keys = [k for m in per_rank for k in m["clip_ids"]]  # anchor frame keys
    assert len(keys) == len(set(keys)) == 30 and result.metrics["step"] == 4
    assert result.checkpoint_uri.endswith("checkpoint_epoch0001")


def test_bad_input_fails_before_ray_starts(train_dataset, tmp_path, monkeypatch):
    from tasks.train import moca

    monkeypatch.setattr("infra.ray_runtime.init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr("ray.train.torch.TorchTrainer", lambda *a, **k: pytest.fail("Ray Train was started"))
    _, url = train_dataset
    storage = Storage()
    out = [f"output={tmp_path}/out", "train.run_name=bad"]
    with pytest.raises(TrainSetupError, match="model 'combo_tiny'.*is not one: pass model=moca_tiny"):
        moca.run_moca_training(compose([*FAST, "model=combo_tiny", *out]), storage, url)
    nopairs = _copy_dataset(url, tmp_path / "nopairs", pairs=False)
    with pytest.raises(TrainSetupError, match=f"has no {PAIRS_FILE}: MoCA trains on mined pairs"):
        moca.run_moca_training(compose([*FAST, *out]), storage, nopairs)
    with pytest.raises(TrainSetupError, match="no manifest.json there"):
        moca.run_moca_training(compose([*FAST, *out]), storage, str(tmp_path / "missing"))


def test_the_saliency_baseline_gets_a_run_without_ray_and_is_scored_as_any_model(train_dataset, tmp_path, monkeypatch):
    """It learns nothing: one checkpoint of its frozen weights (epoch 0), no Ray, no pairs read;
    the evaluate step scores it; a rerun reuses it."""
    from tasks.evaluate.report import evaluate_checkpoint
    from tasks.train import moca
    from tasks.checkpoint import read_meta

    monkeypatch.setattr("infra.ray_runtime.init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.setattr(moca, "train_pairs", lambda *a, **k: pytest.fail("pairs were read"))
    _, url = train_dataset
    storage = Storage()
    cfg = compose([*FAST, "model=moca_tiny", "model.name=moca_baseline_saliency", f"output={tmp_path}/out",
                   "train.run_name=saliency"])
    result = run_moca_training(cfg, storage, url, logging.getLogger("test.moca"))
    assert result.checkpoint_uri.endswith("saliency/checkpoint_epoch0000") and result.model == "moca_baseline_saliency_tiny"
    meta = read_meta(result.checkpoint_uri, storage)
    assert meta.epoch == 0 and meta.metrics["trained"] is False
    scores = evaluate_checkpoint(result.checkpoint_uri, url, storage, str(tmp_path / "report"), split="test",
                                 device="cpu", batch_size=2, expect_model="moca_baseline_saliency_tiny", num_overlays=0)
    assert 0.0 <= scores["miou"] <= 1.0 and (tmp_path / "report" / "metrics.json").exists()
    again = run_moca_training(cfg, storage, url, logging.getLogger("test.moca"))
    assert again.checkpoint_uri == result.checkpoint_uri
