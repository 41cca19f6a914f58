"""The paired bootstrap of a per-video score difference."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluate.compare import paired_bootstrap, read_per_video


def test_a_constant_difference_has_a_point_interval():
    a = {f"c{i}": 0.5 + 0.01 * i for i in range(20)}
    b = {k: v - 0.2 for k, v in a.items()}
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(0.2) and r["low"] == pytest.approx(0.2) and r["high"] == pytest.approx(0.2)
    assert r["num_clips"] == 20


def test_interval_holds_the_mean_and_shrinks_with_more_clips():
    rng = np.random.default_rng(1)

    def pair(n):
        d = rng.normal(0.05, 0.2, size=n)
        return {f"c{i}": float(x) for i, x in enumerate(d)}, {f"c{i}": 0.0 for i in range(n)}

    small, large = paired_bootstrap(*pair(20)), paired_bootstrap(*pair(2000))
    for r in (small, large):
        assert r["low"] <= r["diff"] <= r["high"]
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])
    # the true difference 0.05 is inside the large sample's interval, zero is not
    assert large["low"] < 0.05 < large["high"] and large["low"] > 0


def test_same_seed_same_interval_and_pairing_matters():
    a = {"x": 0.9, "y": 0.1, "z": 0.5}
    b = {"x": 0.8, "y": 0.0, "z": 0.4}  # every clip 0.1 better: paired, the interval is a point
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b)["low"] == pytest.approx(0.1)


def test_different_clip_sets_are_refused():
    with pytest.raises(ValueError, match="same clips"):
        paired_bootstrap({"a": 1.0, "b": 0.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="no clips"):
        paired_bootstrap({}, {})
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap({"a": 1.0}, {"a": 0.0}, level=1.5)


def test_read_per_video():
    text = "clip_id,frames,miou,fscore\nv1,5,0.25,0.5\nv2,5,1.0,1.0\n"
    assert read_per_video(text) == {"v1": 0.25, "v2": 1.0}
    assert read_per_video(text, "fscore")["v1"] == 0.5
    with pytest.raises(ValueError, match="no column"):
        read_per_video(text, "dice")
