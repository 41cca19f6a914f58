"""A loader batch -> model inputs, targets, predictions at mask resolution, AVSBench scores."""
from __future__ import annotations

import pytest
import torch

from models.build import build_model
from models.metrics import BinaryAVSMetric
from tasks.evaluate.scoring import model_inputs, new_metric, predict, score_clips, set_targets


def _batch(b=2, t=3, s=32, classes=1, maskige=True):
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, classes + 1, (b, t, s, s), generator=g)
    gt = torch.ones(b, t, dtype=torch.bool)
    gt[1, 1:] = False  # clip 1: first frame annotated only (as S4 training clips)
    return {"frames": torch.rand(b, t, 3, s, s, generator=g), "maskige": torch.rand(b, t, 3, s, s, generator=g),
            "masks": masks, "gt_frames": gt, "logmel": torch.randn(b, t, 96, 64, generator=g),
            "has_maskige": torch.tensor([maskige] * b), "clip_id": [f"c{i}" for i in range(b)]}


def test_inputs_targets_and_binary_scores():
    batch = _batch()
    inputs = model_inputs(batch)
    assert inputs["maskige"] is batch["maskige"]
    assert model_inputs(_batch(maskige=False))["maskige"] is None
    targets = set_targets(batch, 1)
    assert len(targets) == 6 and targets[4] is None and targets[3] is not None  # clip 1 frame 1: no gt
    model = build_model("tpavi_tiny", num_classes=1).eval()
    with torch.no_grad():
        out = model(**inputs)
    pred = predict(model, out, batch)
    assert pred.shape == (2, 3, 32, 32)
    metric = new_metric("s4", 1)
    rows = score_clips(metric, pred, batch)
    assert [(r["clip_id"], r["frames"]) for r in rows] == [("c0", 3), ("c1", 1)]
    total = metric.compute()
    assert int(total["num_videos"]) == 2
    assert float(total["miou"]) == pytest.approx(sum(r["miou"] for r in rows) / 2)
    one = BinaryAVSMetric()
    one.update(pred[1][:1].float(), batch["masks"][1][:1])
    assert rows[1]["miou"] == pytest.approx(float(one.compute()["miou"]))


def test_semantic_scores_have_background_and_classes():
    batch = _batch(classes=3)
    model = build_model("tpavi_tiny", num_classes=3).eval()
    with torch.no_grad():
        pred = predict(model, model(**model_inputs(batch)), batch)
    assert pred.shape == (2, 3, 4, 32, 32)
    metric = new_metric("avss", 3)
    rows = score_clips(metric, pred, batch)
    assert len(rows) == 2 and 0.0 <= rows[0]["miou"] <= 1.0
    with pytest.raises(ValueError, match="no AVSBench metric"):
        new_metric("moca", 1)
