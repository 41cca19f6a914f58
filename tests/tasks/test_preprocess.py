"""The preprocess step on SynthAVS through the S3 server: shards, Maskiges, pairs, manifest, idempotence."""
from __future__ import annotations

import json

import numpy as np
import pytest

from infra.config import compose
from infra.schema.storage import StorageConfig
from infra.storage import Storage, StorageError, join
from tasks.decode.sources import decode_or_reject
from tasks.enrich.maskige import MaskigeMaker
from tasks.enrich.pairs import read_pairs
from tasks.preprocess import ClipWork, EnrichStage, list_source, plan_shards, run_preprocess, write_group
from tasks.shards.manifest import read_manifest, verify
from tasks.shards.schema import decode_sample, read_shard, sample_key
from tasks.synthavs import ensure_synthavs

SMALL = [
    "data.synth.frame_height=64", "data.synth.frame_width=64", "data.synth.num_train_clips=4",
    "data.synth.num_val_clips=2", "data.synth.num_test_clips=1", "preprocess.shards.samples_per_shard=2",
    "preprocess.pairs.k_pos=3", "preprocess.pairs.num_neg=3",
]


def _objects(storage: Storage, url: str) -> dict[str, bytes]:
    return {u: storage.read_bytes(u) for u in storage.walk_files(url)}


@pytest.mark.slow
def test_preprocess_synthavs_through_s3(ray_local, s3_run):
    storage, bucket, s3 = s3_run
    cfg = compose(SMALL + s3 + [f"data.uri={bucket}/synth", f"preprocess.output={bucket}/datasets"])
    root, _, generated = ensure_synthavs(cfg, storage, progress=False)
    assert generated
    result = run_preprocess(cfg, storage, source_root=root, progress=False)
    assert not result.up_to_date and result.shards_built == len(result.manifest.shards) > 1
    ds = result.dataset_url
    assert ds.startswith(bucket) and verify(ds, storage) == []

    refs, list_rejects = list_source(cfg, storage, root)
    m = result.manifest
    assert m.num_samples == len(refs) - len(m.rejects) and not list_rejects

    # Every sample decodes, and its Maskiges equal a direct call on the same decoded frames.
    maker = MaskigeMaker(cfg.preprocess.maskige, storage)
    by_key = {sample_key(r.clip_id): r for r in refs}
    seen = 0
    for shard in m.shards:
        keys = []
        for raw in read_shard(join(ds, "shards", shard["name"]), storage):
            sample = decode_sample(raw)
            keys.append(sample.key)
            clip = decode_or_reject(by_key[sample.key], storage, cfg.data.num_frames, cfg.data.frame_size)
            expected, _ = maker(clip.frames)
            np.testing.assert_array_equal(sample.maskiges, expected)
            assert sample.frames.shape == clip.frames.shape and sample.dino.shape[0] == clip.num_frames
            assert sample.meta["provenance"]["maskige"]["mask_source"] == "classical"
            seen += 1
        assert keys == sorted(keys) and len(keys) == shard["count"]
    assert seen == m.num_samples

    # Pairs: one row per frame, positives from other clips only.
    pairs = read_pairs(join(ds, "pairs.parquet"), storage)
    assert len(pairs) == m.num_samples * cfg.data.num_frames == m.pairs["frames"]
    split_of = {sample_key(r.clip_id): r.split for r in refs}
    for key, positives, negatives in zip(pairs["key"], pairs["positives"], pairs["negatives"]):
        assert positives is not None and all(p.split("/")[0] != key.split("/")[0] for p in positives)
        anchor_split = split_of[key.split("/")[0]]  # pairs never cross splits
        assert all(split_of[p.split("/")[0]] == anchor_split for p in list(positives) + list(negatives))

    # Ray Data reads the shards straight from the bucket.
    import ray

    fs, _ = storage.pyarrow_filesystem(ds)
    paths = [join(ds, "shards", s["name"]).split("://", 1)[1] for s in m.shards]
    assert ray.data.read_webdataset(paths, filesystem=fs, decoder=None).count() == m.num_samples

    # Running again with the same inputs and config writes nothing.
    before = _objects(storage, join(bucket, "datasets"))
    again = run_preprocess(cfg, storage, source_root=root, progress=False)
    assert again.up_to_date and again.dataset_url == ds
    assert _objects(storage, join(bucket, "datasets")) == before

    # A changed config is a new version beside the old one.
    changed = compose(SMALL + s3 + [f"data.uri={bucket}/synth", f"preprocess.output={bucket}/datasets",
                                    "preprocess.shards.jpeg_quality=80"])
    assert run_preprocess(changed, storage, source_root=root, progress=False).dataset_url != ds
    assert read_manifest(ds, storage).to_json() == m.to_json()


def test_a_failing_clip_is_rejected_and_the_others_kept(tmp_path):
    cfg = compose(SMALL)
    stage = EnrichStage.__new__(EnrichStage)  # the stage's logic, without Ray or a real model
    good = MaskigeMaker(cfg.preprocess.maskige)
    stage.provenance = {"maskige": {"mask_source": "classical"}}

    def maker(frames):
        if frames.shape[0] == 10 or frames[0, 0, 0, 0] == 255:  # the whole batch, or the bad clip alone
            raise RuntimeError("mask generation failed on frame 2")
        return good(frames)

    stage.maker = maker
    rng = np.random.default_rng(0)
    from tasks.clip import Clip

    def clip(i, value=None):
        frames = rng.integers(0, 200, (5, 32, 32, 3), dtype=np.uint8)
        if value is not None:
            frames[:, 0, 0, 0] = value
        return Clip(f"c{i}", frames, np.zeros(80000, np.float32), np.zeros((5, 96, 64), np.float32), source_uri=f"u{i}")

    works = [ClipWork(0, "c0", clip=clip(0)), ClipWork(0, "c1", clip=clip(1, 255))]
    stage.add_maskiges(works)
    assert works[0].maskige.shape == (5, 32, 32) and works[0].reject is None
    assert works[1].clip is None and works[1].reject["stage"] == "maskige"
    assert "frame 2" in works[1].reject["reason"] and works[1].reject["clip_id"] == "c1"


class _FailingStorage(Storage):
    def write_bytes(self, url, data):
        raise StorageError(f"write {url} failed after 3 attempt(s): ConnectionError: reset by peer")


def test_a_failed_shard_write_leaves_nothing_listed(tmp_path):
    cfg = compose(SMALL)
    from tasks.clip import Clip

    clip = Clip("c0", np.zeros((5, 32, 32, 3), np.uint8), np.zeros(80000, np.float32), np.zeros((5, 96, 64), np.float32))
    work = ClipWork(0, "c0", clip=clip, maskige=np.zeros((5, 32, 32), np.uint8), dino=np.zeros((5, 8), np.float16))
    ds = str(tmp_path / "ds")
    with pytest.raises(StorageError, match="reset by peer"):
        write_group([work], _FailingStorage(), ds, cfg.preprocess.shards, "hash")
    assert Storage().walk_files(ds) == []  # no tar, no sidecar: the shard will be built again
    sidecar = write_group([work], Storage(), ds, cfg.preprocess.shards, "hash")
    assert sidecar["shard"]["count"] == 1 and len(Storage().walk_files(ds)) == 2


def test_unreachable_bucket_is_a_clear_error(s3_run):
    storage, bucket, s3 = s3_run
    cfg = compose(SMALL + s3 + ["data=videos", f"data.uri={bucket}-does-not-exist/videos"])
    with pytest.raises(FileNotFoundError, match="does-not-exist/videos does not exist"):
        list_source(cfg, storage)  # an absent bucket or folder says so ...
    dead = Storage(StorageConfig(endpoint_url="http://127.0.0.1:9", key="k", secret="s", retries=2,
                                 retry_backoff_s=0.01))
    with pytest.raises(StorageError, match="127.0.0.1:9|failed after"):  # ... an unreachable store says so
        list_source(cfg, dead)


def test_an_empty_source_is_an_error_not_an_empty_dataset(tmp_path):
    (tmp_path / "videos").mkdir()
    cfg = compose(SMALL + ["data=videos", f"data.uri={tmp_path}/videos", f"preprocess.output={tmp_path}/ds"])
    with pytest.raises(FileNotFoundError, match="no clips listed"):
        run_preprocess(cfg, Storage(), progress=False)
    assert not (tmp_path / "ds").exists()


def test_missing_checkpoint_is_a_clear_error_before_work(tmp_path):
    cfg = compose(SMALL + ["preprocess.maskige.source=sam", f"preprocess.maskige.sam.checkpoint={tmp_path}/nope.pth",
                           f"data.uri={tmp_path}/synth", f"preprocess.output={tmp_path}/ds"])
    root, _, _ = ensure_synthavs(cfg, Storage(), progress=False, use_ray=False)
    with pytest.raises(FileNotFoundError, match="preprocess.maskige.sam.checkpoint.*nope.pth"):
        run_preprocess(cfg, Storage(), source_root=root, progress=False)


def test_shard_plan_is_stable_and_one_split_per_shard():
    from tasks.clip import ClipRef

    refs = [ClipRef(f"clip {i}", "video", f"/v/{i}.mp4", split=("train", "val")[i % 2]) for i in range(7)]
    a, b = plan_shards(refs, 2), plan_shards(list(reversed(refs)), 2)
    assert [[r.clip_id for r in p.refs] for p in a] == [[r.clip_id for r in p.refs] for p in b]
    assert all(len({r.split for r in p.refs}) == 1 for p in a)
    assert sum(len(p.refs) for p in a) == 7 and json.dumps([p.name for p in a])
