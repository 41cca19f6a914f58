"""Robustness to wrong audio: which frames count as marked, silence and swapped audio reach the
model, and the measurement over a tiny data set equals a count done by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_eval import make_checkpoint, synth_clips, write_dataset

from infra.schema.shards import LoaderConfig
from infra.storage import Storage
from tasks.decode.logmel import LOG_OFFSET, silence
from tasks.evaluate.robustness import Swapper, marked, measure_robustness, silence_batch
from tasks.shards.loader import ClipTransform, make_loader

torch.set_num_threads(1)


def test_marked_frames_binary_and_semantic():
    logits = torch.full((2, 3, 4, 4), -1.0)
    logits[0, 1, 2, 2] = 0.5  # one pixel above the 0.5 probability threshold
    logits[1, 2, 0, 0] = 0.0  # exactly 0.5: not marked (the metric thresholds > 0.5)
    assert marked(logits).tolist() == [[False, True, False], [False, False, False]]
    scores = torch.zeros(1, 2, 3, 4, 4)
    scores[0, :, 0] = 1.0  # background wins everywhere ...
    scores[0, 1, 2, 3, 3] = 2.0  # ... but one pixel of frame 1, class 2
    assert marked(scores).tolist() == [[False, True]]


def test_silence_is_the_log_of_the_offset_as_the_shards_store_it():
    s = silence(4)
    assert s.shape == (4, 96, 64) and np.all(s == np.float32(np.float16(np.log(LOG_OFFSET))))
    batch = {"logmel": torch.randn(2, 4, 96, 64), "clip_id": ["a", "b"]}
    assert torch.equal(silence_batch(batch)["logmel"], torch.from_numpy(s).expand(2, 4, 96, 64))


def test_swapped_audio_comes_from_another_clip_even_in_a_batch_of_one():
    a, b, c = (torch.full((1, 2, 96, 64), v) for v in (1.0, 2.0, 3.0))
    swap = Swapper()
    first = swap({"logmel": torch.cat([a, b])})["logmel"]
    second = swap({"logmel": c})["logmel"]
    assert first[:, 0, 0, 0].tolist() == [2.0, 1.0] and second[:, 0, 0, 0].tolist() == [2.0]


def test_silent_audio_in_training_empties_the_masks_and_leaves_the_rest(tmp_path):
    storage, ds = Storage(), str(tmp_path / "ds")
    write_dataset(storage, ds, synth_clips("s4", "train", 4, 32), per_shard=4)

    def batch(prob: float) -> dict:
        cfg = LoaderConfig(batch_size=4, num_workers=0, shuffle_buffer=0, image_size=32, silent_audio_prob=prob)
        return next(iter(make_loader(ds, storage, cfg, "train")))

    plain, quiet, never = batch(0.0), batch(1.0), batch(1e-9)  # never: the same draws as quiet, none silent
    assert never["masks"].sum() > 0 and quiet["masks"].sum() == 0
    assert torch.equal(quiet["logmel"], torch.from_numpy(silence(plain["logmel"].shape[1])).expand_as(plain["logmel"]))
    for key in ("frames", "maskige", "gt_frames"):  # only audio and masks change
        assert torch.equal(quiet[key], never[key])
    assert torch.equal(plain["logmel"], never["logmel"]) and not torch.equal(plain["logmel"], quiet["logmel"])
    assert ClipTransform(32, augment=False, silent_audio_prob=1.0).silent_audio_prob == 1.0  # evaluation: never


@pytest.fixture()
def tiny_case(tmp_path):
    storage, ds = Storage(), str(tmp_path / "ds")
    clips = synth_clips("s4", "test", 5, 64)
    write_dataset(storage, ds, clips)
    make_checkpoint(str(tmp_path / "ckpt"), "tpavi_tiny", "s4", clip=clips[0][0])  # predictions vary per pixel
    return storage, ds, str(tmp_path / "ckpt"), str(tmp_path / "out")


def test_robustness_counts_equal_a_count_by_hand(tiny_case):
    from tasks.evaluate.scoring import model_inputs, predict, to_device
    from tasks.checkpoint import build_from_checkpoint

    storage, ds, ckpt, out = tiny_case
    result = measure_robustness(ckpt, ds, storage, out, batch_size=2, progress=False)
    model, _ = build_from_checkpoint(ckpt, storage, device=torch.device("cpu"))
    loader = make_loader(ds, storage, LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=0, image_size=64,
                                                   augment=False), split="test")
    frames = silent_marked = 0
    with torch.no_grad():
        for b in loader:
            b = silence_batch(to_device(b, torch.device("cpu")))
            pred = predict(model, model(**model_inputs(b)), b)
            frames += pred.shape[0] * pred.shape[1]
            silent_marked += int((pred > 0).flatten(2).any(-1).sum())
    assert result["frames"] == frames == 5 * 3
    assert result["silent_false_positive_rate"] == pytest.approx(silent_marked / frames)
    assert 0 < silent_marked  # the case is not degenerate
    for condition in ("true", "silent", "swapped"):
        assert storage.exists(f"{out}/{condition}/metrics.json")
