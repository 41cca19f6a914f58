"""Shard samples: encode -> deterministic tar (local and S3) -> stock readers -> decode."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest

from infra.storage import join
from tasks.clip import SAMPLE_RATE, Clip
from tasks.shards.schema import (
    SCHEMA_VERSION,
    ClipSample,
    clip_to_sample,
    decode_sample,
    read_shard,
    sample_key,
    shard_bytes,
    shard_name,
    write_shard,
)

T, H, W = 5, 40, 48


def make_clip(clip_id: str, seed: int, masks: bool = True, split: str = "train", t: int = T) -> Clip:
    """A tiny clip with smooth frames (JPEG-friendly), random masks and noisy audio."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = rng.uniform(0, 255, size=(t, 1, 1, 3))
    frames = base + 60 * np.sin(xx / 7.0 + rng.uniform(0, 6))[None, :, :, None] * np.cos(yy / 9.0)[None, :, :, None]
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    m = rng.integers(0, 2, size=(t, H, W), dtype=np.uint8) if masks else None
    gt = [True] + [False, True] * ((t - 1) // 2) + [False] * ((t - 1) % 2) if masks else []
    if m is not None:
        m[~np.array(gt)] = 0  # frames without ground truth hold zeros
    return Clip(
        clip_id=clip_id, frames=frames,
        audio=rng.uniform(-0.9, 0.9, t * SAMPLE_RATE).astype(np.float32),
        logmel=rng.normal(size=(t, 96, 64)).astype(np.float32),
        masks=m, gt_frames=gt, setting="s4" if masks else "none", split=split, labels=["dog", "guitar"],
        source_uri=f"s3://src/{clip_id}.mp4", meta={"category": "dog", "start_s": 3},
    )


def assert_matches(cs: ClipSample, clip: Clip, maskiges=None, dino=None, lossless: bool = False) -> None:
    assert cs.clip_id == clip.clip_id
    assert cs.meta["content_hash"] == clip.content_hash()
    assert cs.meta["schema_version"] == SCHEMA_VERSION
    assert cs.meta["meta"] == clip.meta and cs.meta["labels"] == clip.labels and cs.meta["split"] == clip.split
    assert cs.frames.shape == clip.frames.shape and cs.frames.dtype == np.uint8
    err = np.abs(cs.frames.astype(int) - clip.frames.astype(int))
    if lossless:
        assert err.max() == 0
    else:
        assert err.mean() < 2.0 and err.max() < 40, (err.mean(), err.max())
    if clip.masks is None:
        assert cs.masks is None
    else:
        np.testing.assert_array_equal(cs.masks, clip.masks)
        assert cs.gt_frames == clip.gt_frames
    if maskiges is None:
        assert cs.maskiges is None
    else:
        np.testing.assert_array_equal(cs.maskiges, maskiges)
    np.testing.assert_array_equal(cs.logmel, clip.logmel.astype(np.float16).astype(np.float32))
    assert cs.audio.dtype == np.float32 and cs.audio.shape == clip.audio.shape
    assert np.abs(cs.audio - clip.audio).max() <= 1.0 / 32768 + 1e-7  # PCM_16 quantisation
    if dino is None:
        assert cs.dino is None
    else:
        np.testing.assert_array_equal(cs.dino, dino.astype(np.float16).astype(np.float32))


def enriched(clip: Clip, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return rng.integers(0, 150, size=clip.frames.shape[:3], dtype=np.uint8), rng.normal(size=(clip.num_frames, 16))


@pytest.mark.parametrize("where", ["local_storage", "s3_storage"])
@pytest.mark.parametrize("frame_format", ["jpg", "png"])
def test_round_trip_through_a_tar(where, frame_format, request):
    import webdataset as wds

    storage, root = request.getfixturevalue(where)
    clips = [make_clip("café au lait 01.mp4", 1), make_clip("unlabelled/clip 2", 2, masks=False, split="none"),
             make_clip("avs.s4.dog", 3)]
    maskiges, dino = enriched(clips[2], 3)
    prov = {"maskige": {"mask_source": "sam_tiny", "checkpoint_sha256": None}, "embed": {"source": "classical"}}
    samples = [clip_to_sample(clips[0], frame_format=frame_format),
               clip_to_sample(clips[1], frame_format=frame_format),
               clip_to_sample(clips[2], maskiges=maskiges, dino=dino, provenance=prov, frame_format=frame_format)]
    url = join(root, "ds", "shards", shard_name(0))
    info = write_shard(samples, url, storage)
    assert info.name == "shard-000000.tar" and info.count == 3 and info.url == url
    assert info.keys == sorted(s["__key__"] for s in samples)
    assert info.splits == {"none": 1, "train": 2}
    data = storage.read_bytes(url)
    assert info.nbytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()

    if where == "local_storage":  # the stock reader, straight from the file
        raw = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))
    else:  # S3: our Storage stream through the stock tar iterators
        raw = list(read_shard(url, storage))
    assert [r["__key__"] for r in raw] == info.keys
    by_id = {cs.clip_id: cs for cs in map(decode_sample, raw)}
    assert set(by_id) == {c.clip_id for c in clips}
    lossless = frame_format == "png"
    assert_matches(by_id[clips[0].clip_id], clips[0], lossless=lossless)
    assert_matches(by_id[clips[1].clip_id], clips[1], lossless=lossless)
    assert_matches(by_id[clips[2].clip_id], clips[2], maskiges=maskiges, dino=dino, lossless=lossless)
    assert by_id[clips[2].clip_id].meta["provenance"] == prov
    # members: one mask per annotated frame only, Maskiges are palette PNGs
    members = set(raw[[r["__key__"] for r in raw].index(sample_key(clips[2].clip_id))])
    assert {f"m{i:03d}.png" for i in range(T) if clips[2].gt_frames[i]} == {m for m in members if m.startswith("m0")}
    from PIL import Image

    with Image.open(io.BytesIO(samples[2]["g000.png"])) as im:
        assert im.mode == "P"
    # and back to a Clip
    back = by_id[clips[0].clip_id].to_clip()
    back.validate()
    assert back.clip_id == clips[0].clip_id and back.source_uri == clips[0].source_uri


def test_tar_is_deterministic_and_sorted(local_storage):
    storage, root = local_storage
    clips = [make_clip(f"clip {i}", i) for i in range(3)]
    a = write_shard([clip_to_sample(c) for c in clips], join(root, "a.tar"), storage)
    b = write_shard([clip_to_sample(c) for c in reversed(clips)], join(root, "b.tar"), storage)
    assert a.sha256 == b.sha256 and a.nbytes == b.nbytes
    assert storage.read_bytes(join(root, "a.tar")) == storage.read_bytes(join(root, "b.tar"))
    with tarfile.open(join(root, "a.tar")) as tar:
        infos = tar.getmembers()
    keys = [i.name.split(".", 1)[0] for i in infos]
    assert keys == sorted(keys)  # sorted, so each sample's members are contiguous
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" and i.mode == 0o644 for i in infos)
    # a different sample gives a different checksum
    c = write_shard([clip_to_sample(make_clip("clip 0", 99))] + [clip_to_sample(x) for x in clips[1:]],
                    join(root, "c.tar"), storage)
    assert c.sha256 != a.sha256


def test_sample_keys_are_safe_distinct_and_stable():
    ids = ["a.b.c", "a_b_c", "a/b/c", "a b c", "café", "cafe", "日本語 clip", "日本語 clap", "..", "__x__",
           "x" * 300, "x" * 301, "ABC", "abc"]
    keys = [sample_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    for k in keys:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", k), k
        assert len(k) <= 70
    assert keys == [sample_key(i) for i in ids]
    assert sample_key("café").startswith("cafe-")
    with pytest.raises(ValueError, match="non-empty"):
        sample_key("")


def test_bad_inputs_are_named():
    clip = make_clip("bad clip", 0)
    with pytest.raises(ValueError, match="bad clip.*maskiges"):
        clip_to_sample(clip, maskiges=np.zeros((T, H, W + 1), np.uint8))
    with pytest.raises(ValueError, match="bad clip.*dino"):
        clip_to_sample(clip, dino=np.zeros((T + 1, 8)))
    with pytest.raises(ValueError, match="frame_format"):
        clip_to_sample(clip, frame_format="webp")
    clip.meta = {"not json": object()}
    with pytest.raises(ValueError, match="bad clip.*meta must be JSON"):
        clip_to_sample(clip)
    s = clip_to_sample(make_clip("ok", 1))
    with pytest.raises(ValueError, match="two samples with key"):
        shard_bytes([s, dict(s)])
    meta = json.loads(s["meta.json"])
    meta["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema version"):
        decode_sample({**s, "meta.json": json.dumps(meta).encode()})
    broken = {k: v for k, v in s.items() if k != "f002.jpg"}
    with pytest.raises(ValueError, match="'f002.jpg' is missing"):
        decode_sample(broken)


@pytest.mark.slow
def test_ray_data_reads_a_shard(tmp_path, ray_local):
    """ray.data.read_webdataset on a written shard: raw bytes (decoder=None, any mix of members)
    and Ray's default decoder (arrays, dicts) both decode to the same clips."""
    import ray

    from infra.storage import Storage

    storage = Storage()
    clips = [make_clip("ray clip.a", 10), make_clip("ray clip b", 11, masks=False, split="val")]
    maskiges, dino = enriched(clips[0], 10)
    mixed = str(tmp_path / "mixed" / shard_name(0))
    write_shard([clip_to_sample(clips[0], maskiges=maskiges, dino=dino), clip_to_sample(clips[1])], mixed, storage)
    same = str(tmp_path / "same" / shard_name(0))  # Ray's default decoder needs one set of members per shard
    write_shard([clip_to_sample(clips[0], maskiges=maskiges), clip_to_sample(make_clip("other", 12))], same, storage)

    raw_rows = ray.data.read_webdataset(mixed, decoder=None).take_all()
    decoded_rows = ray.data.read_webdataset(same).take_all()
    by_id = {cs.clip_id: cs for cs in map(decode_sample, raw_rows)}
    assert_matches(by_id["ray clip.a"], clips[0], maskiges=maskiges, dino=dino)
    assert_matches(by_id["ray clip b"], clips[1])
    assert isinstance(decoded_rows[0]["f000.jpg"], np.ndarray)  # Ray decoded it
    by_id = {cs.clip_id: cs for cs in map(decode_sample, decoded_rows)}
    assert_matches(by_id["ray clip.a"], clips[0], maskiges=maskiges)
