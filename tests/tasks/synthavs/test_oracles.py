"""Oracles of a SynthAVS test set, against values worked out by hand on a 4x4, 2-second clip."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.synthavs.oracles import OracleScores, oracle_masks


def _tiny_clip():
    # Object 1 (category 3) sounds in second 0 only; object 2 is its silent twin (category 3);
    # object 3 is a silent distractor (category 5); -1 is the occluder bar.
    frame = np.array([
        [1, 1, 0, 0],
        [0, 0, 0, -1],
        [0, 0, 3, 3],
        [2, 2, 3, 3],
    ], dtype=np.int16)
    id_maps = np.stack([frame, frame])
    objects = [
        {"id": 1, "category_id": 3, "sounding": [True, False]},
        {"id": 2, "category_id": 3, "sounding": [False, False]},
        {"id": 3, "category_id": 5, "sounding": [False, False]},
    ]
    gt = np.zeros((2, 4, 4), np.uint8)
    gt[0][frame == 1] = 1
    return id_maps, objects, gt


def _f(p, r, b2=0.3):
    return (1 + b2) * p * r / (b2 * p + r)


def test_oracle_masks_are_what_they_say():
    id_maps, objects, gt = _tiny_clip()
    m = oracle_masks(id_maps, objects, gt)
    assert m["perfect"].sum() == 2 and not m["nothing"].any()
    assert m["every_object"][0].sum() == 8  # 2 + 2 + 4 object pixels; the occluder is no object
    assert m["sounding_categories"][0].sum() == 4  # source and its twin
    assert not m["sounding_categories"][1].any()  # nothing sounds in second 1


def test_oracle_scores_equal_hand_computed_values():
    id_maps, objects, gt = _tiny_clip()
    scores = OracleScores()
    scores.add("clip", id_maps, objects, gt)
    totals = scores.totals()
    # mIoU: mean over the two frames; frame 1 has empty ground truth: correct background / 16.
    assert totals["perfect"]["miou"] == pytest.approx(1.0)
    assert totals["nothing"]["miou"] == pytest.approx((0 / 2 + 16 / 16) / 2)
    assert totals["every_object"]["miou"] == pytest.approx((2 / 8 + 8 / 16) / 2)
    assert totals["sounding_categories"]["miou"] == pytest.approx((2 / 4 + 16 / 16) / 2)
    # F (beta^2 0.3): frame 0 only (frame 1's ground truth is empty); threshold 0 (>=) marks
    # every pixel, so a prediction never scores below P = 2/16, R = 1.
    assert totals["perfect"]["fscore"] == pytest.approx(1.0)
    assert totals["nothing"]["fscore"] == pytest.approx(_f(2 / 16, 1.0), abs=1e-6)
    assert totals["every_object"]["fscore"] == pytest.approx(_f(2 / 8, 1.0), abs=1e-6)
    assert totals["sounding_categories"]["fscore"] == pytest.approx(_f(2 / 4, 1.0), abs=1e-6)
    assert scores.per_clip["every_object"]["clip"]["miou"] == pytest.approx(0.375)


def test_only_annotated_frames_are_scored():
    id_maps, objects, gt = _tiny_clip()
    scores = OracleScores()
    scores.add("clip", id_maps, objects, gt, gt_frames=[True, False])
    assert scores.totals()["nothing"]["miou"] == pytest.approx(0.0)
    empty = OracleScores()
    empty.add("clip", id_maps, objects, gt, gt_frames=[False, False])
    with pytest.raises(RuntimeError, match="no clip was scored"):
        empty.totals()


def test_mismatched_inputs_are_refused():
    id_maps, objects, gt = _tiny_clip()
    with pytest.raises(ValueError, match="ground truth shape"):
        oracle_masks(id_maps, objects, gt[:1])
    with pytest.raises(ValueError, match="seconds of 'sounding'"):
        oracle_masks(id_maps, [{"id": 1, "category_id": 3, "sounding": [True]}], gt)
