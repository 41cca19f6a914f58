"""Approximate pair mining (faiss IVF): recall against exact, the same rules as the exact miner,
negatives that do not depend on how the anchors are split, the search spread over real Ray tasks."""
from __future__ import annotations

import numpy as np
import pytest

from infra.schema.enrich import PairsConfig
from tasks.enrich.knn import normalised
from tasks.enrich.pairs import PAIRS_COLUMNS, mine_pairs
from tasks.enrich.pairs_ann import build_index, search_range


def _clustered(n=2000, d=32, clusters=25, frames_per_clip=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    clip_centre = centres[rng.integers(0, clusters, n // frames_per_clip)] + 0.6 * rng.normal(
        size=(n // frames_per_clip, d))
    emb = (np.repeat(clip_centre, frames_per_clip, 0) + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    clips = [f"c{i // frames_per_clip:05d}" for i in range(n)]
    keys = [f"{c}/{i % frames_per_clip}" for i, c in enumerate(clips)]
    return keys, clips, emb


def test_ivf_finds_the_exact_positives_and_keeps_the_rules():
    keys, clips, emb = _clustered()
    cfg = dict(k_pos=5, num_neg=4, neg_threshold=0.2, seed=3)
    exact = mine_pairs(keys, clips, emb, PairsConfig(method="exact", **cfg), device="cpu")
    approx = mine_pairs(keys, clips, emb, PairsConfig(method="ivf", nprobe=8, **cfg))
    assert list(approx.columns) == list(exact.columns) == list(PAIRS_COLUMNS)
    assert approx.attrs["method"] == "ivf" and exact.attrs["method"] == "exact"
    recall = np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx["positives"], exact["positives"])])
    assert recall >= 0.95, recall
    assert approx.attrs["recall_at_k"] >= 0.95  # the miner's own sampled check says so too
    assert abs(approx.attrs["recall_at_k"] - recall) < 0.05

    key_clip = dict(zip(keys, clips))
    x = normalised(emb)
    index = {k: i for i, k in enumerate(keys)}
    for _, row in approx.iterrows():
        a = x[index[row["key"]]]
        assert len(row["positives"]) == 5 and len(row["negatives"]) == 4
        assert all(key_clip[p] != row["clip_id"] for p in row["positives"] + row["negatives"])
        assert row["positive_scores"] == sorted(row["positive_scores"], reverse=True)
        assert len(set(row["negatives"])) == 4
        for n, s in zip(row["negatives"], row["negative_scores"]):
            assert s < 0.2
            assert s == pytest.approx(float(a @ x[index[n]]), abs=1e-5)
        for p, s in zip(row["positives"], row["positive_scores"]):
            assert s == pytest.approx(float(a @ x[index[p]]), abs=1e-4)


def test_negatives_do_not_depend_on_how_anchors_are_split_and_follow_the_seed():
    keys, clips, emb = _clustered(n=600)
    x = normalised(emb)
    code = np.unique(np.asarray(clips), return_inverse=True)[1].astype(np.int64)
    cfg = PairsConfig(method="ivf", k_pos=3, num_neg=5, neg_threshold=0.3, seed=7)
    cells = build_index(x, cfg)
    whole = search_range(cells, x, code, 0, 600, cfg)
    pieces = [search_range(cells, x, code, lo, hi, cfg, block=37) for lo, hi in ((0, 211), (211, 212), (212, 600))]
    for i in range(5):
        np.testing.assert_array_equal(whole[i], np.concatenate([p[i] for p in pieces]))
    other = search_range(cells, x, code, 0, 600, PairsConfig(**{**cfg.__dict__, "seed": 8}))
    assert not np.array_equal(whole[3], other[3])  # negatives follow the seed
    np.testing.assert_array_equal(whole[1], other[1])  # positives do not
    assert len(np.unique(whole[3][whole[4]])) > 0.6 * 600  # a spread-out sample, not the same few rows


def test_auto_is_exact_up_to_the_threshold_and_ivf_above():
    keys, clips, emb = _clustered(n=400)
    small = mine_pairs(keys, clips, emb, PairsConfig(exact_max_frames=400), device="cpu")
    large = mine_pairs(keys, clips, emb, PairsConfig(exact_max_frames=399), device="cpu")
    assert small.attrs["method"] == "exact" and large.attrs["method"] == "ivf"


def test_a_clip_with_many_frames_still_gets_positives_of_other_clips():
    """Rows of the anchor's own clip are masked before each cell's top k, so a long clip cannot
    crowd out its positives."""
    rng = np.random.default_rng(0)
    big = rng.normal(size=(1, 16)) + 0.01 * rng.normal(size=(60, 16))  # one clip of 60 near-identical frames
    rest = rng.normal(size=(200, 16))
    emb = np.concatenate([big, rest]).astype(np.float32)
    clips = ["big"] * 60 + [f"r{i}" for i in range(200)]
    keys = [f"big/{i}" for i in range(60)] + [f"r{i}/0" for i in range(200)]
    df = mine_pairs(keys, clips, emb, PairsConfig(method="ivf", k_pos=4, num_neg=2, nprobe=64))
    assert all(len(p) == 4 for p in df["positives"][:60])
    assert all(not p.startswith("big/") for ps in df["positives"][:60] for p in ps)


def test_bad_pairs_settings_are_named():
    with pytest.raises(ValueError, match="pairs.method"):
        PairsConfig(method="hnsw")
    with pytest.raises(ValueError, match="pairs.nprobe"):
        PairsConfig(nprobe=0)


def test_the_search_spread_over_ray_tasks_gives_the_same_pairs(ray_local):
    keys, clips, emb = _clustered(n=1500)
    base = dict(method="ivf", k_pos=4, num_neg=3, neg_threshold=0.2, recall_sample=0)
    one = mine_pairs(keys, clips, emb, PairsConfig(partitions=1, **base))
    spread = mine_pairs(keys, clips, emb, PairsConfig(partitions=3, **base))
    assert one.attrs["partitions"] == 1 and spread.attrs["partitions"] == 3
    for col in PAIRS_COLUMNS:
        assert list(one[col]) == list(spread[col]), col
