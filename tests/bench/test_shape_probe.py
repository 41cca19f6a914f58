"""bench/shape_probe.py: the category map it trains on and the scores it prints."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("shape_probe")
    finally:
        sys.path.remove(str(BENCH))


def test_category_map_puts_each_objects_category_on_its_pixels(probe):
    id_maps = np.array([[[0, 1, 2], [2, -1, 3]]])  # 0 background, -1 occluder, k + 1 object k
    objects = [{"id": 1, "category_id": 5}, {"id": 2, "category_id": 5}, {"id": 3, "category_id": 2}]
    assert probe.category_map(id_maps, objects).tolist() == [[[0, 5, 5], [5, 0, 2]]]


def test_scores_from_a_hand_made_confusion_matrix(probe):
    # rows truth, columns prediction; classes: background, category 1, category 2, category 3 (never seen)
    conf = torch.tensor([[80, 5, 5, 0],
                         [2, 6, 2, 0],
                         [0, 4, 6, 0],
                         [0, 0, 0, 0]])
    s = probe.scores(conf)
    assert s["iou_background"] == pytest.approx(80 / 92)  # 80 / (90 + 82 - 80)
    # category 1: 6 / (15 + 10 - 6); category 2: 6 / (13 + 10 - 6); category 3 absent: left out of the mean
    assert s["miou_categories"] == pytest.approx((6 / 19 + 6 / 17) / 2)
    assert s["object_pixel_accuracy"] == pytest.approx(12 / 20)
    assert np.isnan(s["iou"][3])


def test_the_probe_outputs_a_logit_per_category_and_background(probe):
    model = probe.build_probe(8, seed=0).eval()
    frames = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8)
    cats = torch.randint(0, 9, (2, 3, 32, 32), dtype=torch.uint8)
    assert model(probe._frames(frames))["masks"].shape == (6, 9, 32, 32)
    conf = probe.confusion(model, frames, cats, 9, batch=1)
    assert conf.shape == (9, 9) and int(conf.sum()) == 2 * 3 * 32 * 32
