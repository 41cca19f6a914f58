"""Pair mining: blockwise equals the full matrix, clip exclusion, thresholds, parquet via S3."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from infra.schema.enrich import PairsConfig
from tasks.enrich.pairs import mine_pairs, pair_precision, read_pairs, write_pairs


def _data(n=61, d=8, frames_per_clip=4, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    clips = [f"clip{i // frames_per_clip:03d}" for i in range(n)]
    keys = [f"{c}/f{i % frames_per_clip}" for i, c in enumerate(clips)]
    return keys, clips, emb


def _brute_force_positives(clips, emb, k):
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    same = np.asarray(clips)[:, None] == np.asarray(clips)[None, :]
    sim[same] = -np.inf
    return [list(np.argsort(-row, kind="stable")[:k]) for row in sim], sim


def test_blockwise_equals_full_matrix_and_brute_force():
    keys, clips, emb = _data()
    cfg = dict(k_pos=5, num_neg=4, neg_threshold=0.0, seed=7)
    blockwise = mine_pairs(keys, clips, emb, PairsConfig(block_size=7, chunk_size=5, **cfg), device="cpu")
    full = mine_pairs(keys, clips, emb, PairsConfig(block_size=1000, chunk_size=1000, **cfg), device="cpu")
    assert list(blockwise["key"]) == keys and list(blockwise["clip_id"]) == clips
    for col in ("positives", "negatives"):
        assert list(blockwise[col]) == list(full[col]), col
    for col in ("positive_scores", "negative_scores"):
        for a, b in zip(blockwise[col], full[col]):
            np.testing.assert_allclose(a, b, atol=1e-5)
    expected, sim = _brute_force_positives(clips, emb, 5)
    index = {k: i for i, k in enumerate(keys)}
    for r, row in blockwise.iterrows():
        assert [index[p] for p in row["positives"]] == expected[r]
        np.testing.assert_allclose(row["positive_scores"], sim[r, expected[r]], atol=1e-5)


def test_positives_never_same_clip_negatives_below_threshold():
    keys, clips, emb = _data(n=80, frames_per_clip=5, seed=1)
    cfg = PairsConfig(k_pos=3, num_neg=6, neg_threshold=0.1, block_size=16, chunk_size=24, seed=3)
    df = mine_pairs(keys, clips, emb, cfg, device="cpu")
    key_clip = dict(zip(keys, clips))
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    index = {k: i for i, k in enumerate(keys)}
    for _, row in df.iterrows():
        assert len(row["positives"]) == 3 and len(row["negatives"]) == 6
        assert all(key_clip[p] != row["clip_id"] for p in row["positives"] + row["negatives"])
        assert row["positive_scores"] == sorted(row["positive_scores"], reverse=True)
        assert len(set(row["negatives"])) == 6
        for n, s in zip(row["negatives"], row["negative_scores"]):
            assert s < 0.1
            assert s == pytest.approx(float(x[index[row["key"]]] @ x[index[n]]), abs=1e-5)


def test_seeded_negatives_are_deterministic_and_vary_with_seed():
    keys, clips, emb = _data(n=50, seed=2)
    a = mine_pairs(keys, clips, emb, PairsConfig(num_neg=5, neg_threshold=0.5, seed=11), device="cpu")
    b = mine_pairs(keys, clips, emb, PairsConfig(num_neg=5, neg_threshold=0.5, seed=11), device="cpu")
    c = mine_pairs(keys, clips, emb, PairsConfig(num_neg=5, neg_threshold=0.5, seed=12), device="cpu")
    assert list(a["negatives"]) == list(b["negatives"])
    assert list(a["negatives"]) != list(c["negatives"])
    assert list(a["positives"]) == list(c["positives"])  # positives do not depend on the seed
    # every eligible candidate gets drawn by some anchor: a spread-out sample, not the same few
    drawn = {n for row in a["negatives"] for n in row}
    assert len(drawn) > 0.6 * len(keys)


def test_fewer_candidates_than_asked_are_recorded():
    keys = ["a/0", "a/1", "b/0", "c/0"]
    clips = ["a", "a", "b", "c"]
    emb = np.array([[1, 0], [1, 0.1], [1, 0.05], [0.9, 0.1]], np.float32)  # all alike: no negatives
    df = mine_pairs(keys, clips, emb, PairsConfig(k_pos=5, num_neg=3, neg_threshold=0.3), device="cpu")
    assert df.loc[0, "positives"] == ["b/0", "c/0"] or df.loc[0, "positives"] == ["c/0", "b/0"]
    assert len(df.loc[2, "positives"]) == 3  # a/0, a/1, c/0
    assert all(len(n) == 0 for n in df["negatives"])
    assert df.attrs["rows_short_of_positives"] == 4 and df.attrs["rows_short_of_negatives"] == 4
    one_clip = mine_pairs(["x/0", "x/1"], ["x", "x"], np.eye(2, dtype=np.float32), device="cpu")
    assert all(len(p) == 0 for p in one_clip["positives"])


def test_ties_break_by_index_whatever_the_blocking():
    keys = [f"c{i}/0" for i in range(12)]
    clips = [f"c{i}" for i in range(12)]
    emb = np.ones((12, 3), np.float32)  # every pair ties
    for block, chunk in ((1000, 1000), (3, 2), (5, 7)):
        df = mine_pairs(keys, clips, emb, PairsConfig(k_pos=3, num_neg=0, block_size=block, chunk_size=chunk),
                        device="cpu")
        assert df.loc[0, "positives"] == ["c1/0", "c2/0", "c3/0"]
        assert df.loc[5, "positives"] == ["c0/0", "c1/0", "c2/0"]


def test_bad_input_is_named():
    keys, clips, emb = _data(n=6)
    with pytest.raises(ValueError, match="unique"):
        mine_pairs(keys[:5] + keys[:1], clips, emb)
    with pytest.raises(ValueError, match="clip_ids has 5"):
        mine_pairs(keys, clips[:5], emb)
    bad = emb.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        mine_pairs(keys, clips, bad)
    with pytest.raises(ValueError, match="pairs.neg_threshold"):
        PairsConfig(neg_threshold=2.0)


def test_parquet_round_trip_through_s3(s3_storage):
    storage, bucket = s3_storage
    keys, clips, emb = _data(n=30)
    df = mine_pairs(keys, clips, emb, PairsConfig(k_pos=4, num_neg=3, neg_threshold=0.2), device="cpu")
    url = f"{bucket}/dataset/pairs.parquet"
    write_pairs(df, url, storage)
    back = read_pairs(url, storage)
    assert list(back.columns) == list(df.columns)
    for col in df.columns:
        assert list(back[col]) == list(df[col]), col
    assert isinstance(back.loc[0, "positives"], list)


def test_pair_precision():
    df = pd.DataFrame({"key": ["a/0", "b/0"], "positives": [["b/0", "c/0"], ["a/0", "c/0"]]})
    cats = {"a": {"dog", "car"}, "b": {"car"}, "c": {"bird"}}
    key_to_clip = {"a/0": "a", "b/0": "b", "c/0": "c"}
    assert pair_precision(df, cats, key_to_clip) == pytest.approx(2 / 4)
    assert np.isnan(pair_precision(df.assign(positives=[[], []]), cats, key_to_clip))
