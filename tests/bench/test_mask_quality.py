"""Best-match IoU of Maskige segments against exact objects, and the SynthAVS measurement."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from infra.schema.enrich import MaskigeConfig
from infra.schema.synth import synth_preset

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, BENCH)
from mask_quality import best_match_iou, match_objects, measure_mask_sources, segment_count  # noqa: E402

sys.path.remove(BENCH)


def test_object_that_is_exactly_one_segment_scores_one():
    ids = np.zeros((4, 4), dtype=np.int16)
    ids[1:3, 1:3] = 1
    maskige = np.zeros((4, 4), dtype=np.uint8)
    maskige[1:3, 1:3] = 1
    maskige[0] = 2  # another segment elsewhere changes nothing
    assert best_match_iou(maskige, ids) == [1.0]


def test_object_split_in_two_halves_scores_half():
    ids = np.zeros((4, 4), dtype=np.int16)
    ids[:, :2] = 1  # 8 pixels
    maskige = np.zeros((4, 4), dtype=np.uint8)
    maskige[:2, :2] = 1  # 4 of them
    maskige[2:, :2] = 2  # the other 4
    maskige[:, 2:] = 3  # the background
    assert best_match_iou(maskige, ids) == [0.5]


def test_segment_covering_object_and_as_much_background_scores_half():
    ids = np.zeros((2, 4), dtype=np.int16)
    ids[:, :1] = 1  # 2 pixels
    maskige = np.zeros((2, 4), dtype=np.uint8)
    maskige[:, :2] = 5  # the object's 2 pixels + 2 background pixels
    assert best_match_iou(maskige, ids) == [0.5]


def test_absent_objects_and_the_occluder_are_not_scored():
    ids = np.array([
        [1, 1, -1, -1],
        [1, 1, -1, -1],
        [0, 0, 3, 3],
    ], dtype=np.int16)  # object 2 is absent (hidden); -1 is the occluder bar
    maskige = np.array([
        [1, 1, 1, 1],  # segment 1 = object 1 (4 px) + the occluder (4 px): IoU 0.5
        [1, 1, 1, 1],
        [0, 0, 2, 0],  # segment 2 = half of object 3: IoU 0.5
    ], dtype=np.uint8)
    assert best_match_iou(maskige, ids) == [0.5, 0.5]
    obj, best, area = match_objects(maskige, ids)
    assert obj.tolist() == [1, 3]
    assert area.tolist() == [4, 2]
    np.testing.assert_allclose(best, [0.5, 0.5])


def test_best_of_several_overlapping_segments_and_no_segments():
    ids = np.zeros((3, 3), dtype=np.int16)
    ids[:, 0] = 1  # 3 pixels
    maskige = np.zeros((3, 3), dtype=np.uint8)
    maskige[0, 0] = 1  # IoU 1/3
    maskige[1:, :] = 2  # inter 2, union 6 + 3 - 2 = 7: IoU 2/7
    assert best_match_iou(maskige, ids) == pytest.approx([1 / 3])
    assert best_match_iou(np.zeros((3, 3), dtype=np.uint8), ids) == [0.0]
    assert best_match_iou(maskige, np.zeros((3, 3), dtype=np.int16)) == []


def test_vectorised_iou_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    maskige = rng.integers(0, 150, size=(40, 50)).astype(np.uint8)
    ids = rng.integers(-1, 7, size=(40, 50)).astype(np.int16)
    ids[ids == 4] = 0  # one id absent
    want = []
    for k in range(1, 7):
        obj = ids == k
        if not obj.any():
            continue
        want.append(max(((maskige == s) & obj).sum() / ((maskige == s) | obj).sum() for s in range(1, 150)))
    assert best_match_iou(maskige, ids) == pytest.approx(want)
    assert segment_count(maskige) == len(np.unique(maskige[maskige > 0]))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one size"):
        best_match_iou(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.int16))
    with pytest.raises(ValueError, match=">= -1"):
        best_match_iou(np.zeros((2, 2), np.uint8), np.full((2, 2), -2, np.int16))


def test_measure_mask_sources_on_two_small_clips():
    cfg = synth_preset("hard", frame_height=64, frame_width=64)
    methods = {"felz": MaskigeConfig(source="classical"),
               "chroma": MaskigeConfig(source="classical", classical_method="chroma")}
    res = measure_mask_sources(cfg, methods, num_clips=2)
    assert set(res) == {"felz", "chroma"}
    for r in res.values():
        for key in ("mean_best_iou", "median_best_iou", "segments_per_frame", "frames", "objects",
                    "seconds_per_frame", "covering", "by_role", "clip_means"):
            assert key in r
        assert r["frames"] == 2 * cfg.num_seconds
        assert r["objects"] > 0
        assert 0.0 <= r["mean_best_iou"] <= 1.0 and 0.0 <= r["median_best_iou"] <= 1.0
        assert r["segments_per_frame"] >= 1
        assert len(r["clip_means"]) == 2
        assert set(r["by_role"]) <= {"source", "twin", "distractor"}
