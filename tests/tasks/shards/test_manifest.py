"""manifest.json: round trip, canonical form, and verify() catching missing or damaged shards."""
from __future__ import annotations

import json

import numpy as np
import pytest

from infra.storage import join
from tasks.clip import SAMPLE_RATE, Clip, Reject
from tasks.shards.manifest import MANIFEST_NAME, Manifest, read_manifest, verify, write_manifest
from tasks.shards.schema import SCHEMA_VERSION, clip_to_sample, shard_name, write_shard


def make_clip(clip_id: str, seed: int, split: str) -> Clip:
    rng = np.random.default_rng(seed)
    t, h, w = 2, 16, 16
    return Clip(clip_id=clip_id, frames=rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8),
                audio=np.zeros(t * SAMPLE_RATE, np.float32), logmel=np.zeros((t, 96, 64), np.float32),
                split=split)


def build_dataset(storage, ds_url: str, pairs: bool = False) -> Manifest:
    infos = []
    for i in range(3):
        samples = [clip_to_sample(make_clip(f"clip {i}-{j}", 10 * i + j, "train" if j else "val"), frame_format="png")
                   for j in range(2)]
        infos.append(write_shard(samples, join(ds_url, "shards", shard_name(i)), storage))
    pairs_entry = None
    if pairs:
        storage.write_bytes(join(ds_url, "pairs.parquet"), b"pretend parquet")
        import hashlib

        pairs_entry = {"name": "pairs.parquet", "sha256": hashlib.sha256(b"pretend parquet").hexdigest()}
    manifest = Manifest(
        dataset_version="v-test", config_hash="abc123",
        source={"uri": "s3://src/videos", "listing_hash": "0f0f"},
        shards=list(reversed(infos)),  # any order in, canonical order out
        rejects=[Reject("z clip", "s3://src/z.mp4", "decode", "no video stream"),
                 Reject("a clip", "s3://src/a.mp4", "decode", "truncated")],
        provenance={"maskige": {"mask_source": "classical"}}, pairs=pairs_entry, stats={"clips_per_s": 1.5},
    )
    write_manifest(manifest, ds_url, storage)
    return manifest


@pytest.mark.parametrize("where", ["local_storage", "s3_storage"])
def test_round_trip_and_verify_ok(where, request):
    storage, root = request.getfixturevalue(where)
    ds = join(root, "dataset")
    assert read_manifest(ds, storage) is None
    written = build_dataset(storage, ds, pairs=True)
    back = read_manifest(ds, storage)
    assert back is not None
    assert back.comparable() == written.comparable()
    assert back.to_json() == written.to_json()
    assert back.num_samples == 6 and back.schema_version == SCHEMA_VERSION
    assert [s["name"] for s in back.to_dict()["shards"]] == [shard_name(i) for i in range(3)]
    assert [r["clip_id"] for r in back.to_dict()["rejects"]] == ["a clip", "z clip"]
    assert back.split_counts() == {"train": 3, "val": 3}
    assert back.shard_urls(ds)[0] == join(ds, "shards", shard_name(0))
    assert verify(ds, storage) == []


def test_comparable_ignores_time_and_order(local_storage):
    storage, root = local_storage
    a = build_dataset(storage, join(root, "a"))
    d = json.loads(a.to_json())
    d["created_at"] = "1999-01-01T00:00:00+00:00"
    d["shards"] = list(reversed(d["shards"]))
    d["rejects"] = list(reversed(d["rejects"]))
    b = Manifest.from_dict(d)
    assert b.comparable() == a.comparable()
    assert b.to_json() != a.to_json()  # only created_at differs ...
    assert b.to_json().replace(b.created_at, a.created_at) == a.to_json()  # ... and nothing else
    d["config_hash"] = "other"
    assert Manifest.from_dict(d).comparable() != a.comparable()


def test_verify_finds_missing_and_corrupted_shards(s3_storage):
    storage, root = s3_storage
    ds = join(root, "dataset")
    build_dataset(storage, ds, pairs=True)
    storage.rm(join(ds, "shards", shard_name(0)))
    good = storage.read_bytes(join(ds, "shards", shard_name(1)))
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, different bytes
    storage.write_bytes(join(ds, "shards", shard_name(1)), bytes(flipped))
    storage.write_bytes(join(ds, "shards", shard_name(2)), b"truncated")
    storage.write_bytes(join(ds, "pairs.parquet"), b"pretend parquet, changed")
    problems = verify(ds, storage)
    assert len(problems) == 4, problems
    assert any(shard_name(0) in p and "missing" in p for p in problems)
    assert any(shard_name(1) in p and "sha256" in p for p in problems)
    assert any(shard_name(2) in p and "bytes" in p for p in problems)
    assert any("pairs.parquet" in p for p in problems)
    assert verify(join(root, "nowhere"), storage) == [f"no {MANIFEST_NAME} at {join(root, 'nowhere')}: "
                                                      "the data set is missing or unfinished"]


def test_bad_manifests_are_refused(local_storage):
    storage, root = local_storage
    a = build_dataset(storage, join(root, "a"))
    d = a.to_dict()
    with pytest.raises(ValueError, match="num_samples=7 but its shards hold 6"):
        Manifest.from_dict({**d, "num_samples": 7})
    with pytest.raises(ValueError, match="schema version 99"):
        Manifest.from_dict({**d, "schema_version": 99})
    with pytest.raises(ValueError, match="unknown fields"):
        Manifest.from_dict({**d, "colour": "blue"})
    with pytest.raises(ValueError, match="lists a shard twice"):
        Manifest.from_dict({**d, "shards": d["shards"] + d["shards"][:1], "num_samples": -1})
    storage.write_text(join(root, "b", MANIFEST_NAME), "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(join(root, "b"), storage)
