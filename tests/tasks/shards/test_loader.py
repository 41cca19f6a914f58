"""The training loader: shards -> batches; shapes, aligned augmentation, one pass per epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.schema.shards import LoaderConfig, ShardsConfig
from infra.storage import join
from tasks.clip import SAMPLE_RATE, Clip
from tasks.shards.loader import collate_clips, make_loader, maskige_lut, random_resized_crop_box
from tasks.shards.manifest import Manifest, write_manifest
from tasks.shards.schema import clip_to_sample, shard_name, write_shard

T, H, W = 3, 36, 44

torch.set_num_threads(1)


def make_clip(clip_id: str, seed: int, split: str = "train") -> tuple[Clip, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 2, (T, H, W), dtype=np.uint8)
    clip = Clip(clip_id=clip_id, frames=rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8),
                audio=rng.uniform(-0.5, 0.5, T * SAMPLE_RATE).astype(np.float32),
                logmel=rng.normal(size=(T, 96, 64)).astype(np.float32), masks=masks, gt_frames=[True, False, True],
                setting="s4", split=split)
    clip.masks[1] = 0
    return clip, rng.integers(0, 150, (T, H, W), dtype=np.uint8)


def write_dataset(storage, ds: str, clips: list[tuple[Clip, np.ndarray | None]], per_shard: int) -> Manifest:
    infos = []
    for i in range(0, len(clips), per_shard):
        samples = [clip_to_sample(c, maskiges=g, frame_format="png") for c, g in clips[i:i + per_shard]]
        infos.append(write_shard(samples, join(ds, "shards", shard_name(i // per_shard)), storage))
    manifest = Manifest(dataset_version="v-test", config_hash="x", shards=infos)
    write_manifest(manifest, ds, storage)
    return manifest


@pytest.fixture()
def dataset(local_storage):
    """8 clips in 4 shards; clips 0, 1, 4, 5 are train, the others val."""
    storage, root = local_storage
    ds = join(root, "ds")
    clips = [make_clip(f"clip {i}", i, "train" if i % 4 < 2 else "val") for i in range(8)]
    write_dataset(storage, ds, clips, per_shard=2)
    return storage, ds, [c.clip_id for c, _ in clips]


def ids_of(loader) -> list[str]:
    return [i for batch in loader for i in batch["clip_id"]]


def test_batches_have_the_documented_shapes(dataset):
    storage, ds, ids = dataset
    cfg = LoaderConfig(batch_size=3, num_workers=0, shuffle_buffer=0, image_size=32, augment=True)
    batches = list(make_loader(ds, storage, cfg, split=None))
    assert [len(b["clip_id"]) for b in batches] == [3, 3, 2]
    b = batches[0]
    assert b["frames"].shape == (3, T, 3, 32, 32) and b["frames"].dtype == torch.float32
    assert b["maskige"].shape == (3, T, 3, 32, 32) and b["maskige"].dtype == torch.float32
    assert 0.0 <= b["maskige"].min() and b["maskige"].max() <= 1.0
    assert b["masks"].shape == (3, T, 32, 32) and b["masks"].dtype == torch.int64
    assert set(b["masks"].unique().tolist()) <= {0, 1}
    assert b["gt_frames"].dtype == torch.bool and b["gt_frames"].tolist() == [[True, False, True]] * 3
    assert (b["masks"][:, 1] == 0).all()
    assert b["logmel"].shape == (3, T, 96, 64) and b["logmel"].dtype == torch.float32
    assert b["has_maskige"].tolist() == [True] * 3
    # frames are RGB in [0, 1]; the models normalise them
    assert b["frames"].min() >= 0 and b["frames"].max() <= 1 and b["frames"].max() > 0.5
    assert ids_of([b]) == ids[:3]  # no shuffling: manifest order


def test_no_augmentation_is_a_plain_resize(local_storage):
    storage, root = local_storage
    clip, g = make_clip("plain", 0)
    write_dataset(storage, join(root, "ds"), [(clip, g)], per_shard=1)
    cfg = LoaderConfig(batch_size=1, num_workers=0, shuffle_buffer=0, image_size=H, augment=False)
    b = next(iter(make_loader(join(root, "ds"), storage, cfg)))
    # resizing H x W -> H x H (nearest) keeps every row and picks columns
    cols = np.floor((np.arange(H) + 0.5) * W / H).astype(int)
    np.testing.assert_array_equal(b["masks"][0].numpy(), clip.masks[:, :, cols])
    lut = maskige_lut().numpy()
    np.testing.assert_allclose(b["maskige"][0].permute(0, 2, 3, 1).numpy() * 255, lut[g[:, :, cols]], atol=1e-3)


def test_augmentation_is_identical_for_frames_maskiges_and_masks(local_storage):
    storage, root = local_storage
    yy, xx = np.mgrid[0:48, 0:48]
    # an asymmetric pattern (a flip or crop changes it), the same on every frame
    pattern = (((xx < 30) & (yy < 20)) | ((xx // 6 + yy // 6) % 3 == 0)).astype(np.uint8)
    clips = []
    for i in range(8):
        t = T
        masks = np.repeat(pattern[None], t, axis=0)
        frames = np.repeat((masks * 255)[..., None], 3, axis=-1).astype(np.uint8)
        clip = Clip(clip_id=f"pattern {i}", frames=frames, audio=np.zeros(t * SAMPLE_RATE, np.float32),
                    logmel=np.zeros((t, 96, 64), np.float32), masks=masks, gt_frames=[True] * t, split="train")
        clips.append((clip, masks + 1))  # Maskige index = mask + 1
    ds = join(root, "ds")
    write_dataset(storage, ds, clips, per_shard=4)
    cfg = LoaderConfig(batch_size=8, num_workers=0, shuffle_buffer=0, image_size=24, augment=True,
                       crop_scale=[0.2, 0.6], hflip_p=0.5, seed=3)
    b = next(iter(make_loader(ds, storage, cfg)))
    lut = maskige_lut().float()
    rgb = (b["maskige"] * 255).round().permute(0, 1, 3, 4, 2)  # [B, T, S, S, 3]
    index = torch.full(rgb.shape[:-1], -1)
    for k in (1, 2):
        index[(rgb == lut[k]).all(-1)] = k
    assert (index >= 1).all(), "every Maskige pixel is one of the two painted colours"
    assert torch.equal(index, b["masks"] + 1), "Maskige and mask moved together"
    gray = b["frames"].mean(2)
    agree = ((gray > 0.5) == (b["masks"] == 1)).float().mean()
    assert agree > 0.9, f"frames and masks agree on only {agree:.2%} of pixels"
    assert (b["masks"] == b["masks"][:, :1]).all(), "the same geometry on every frame of a clip"
    distinct = {tuple(m[0].flatten().tolist()) for m in b["masks"]}
    assert len(distinct) >= 4, "different clips get different crops"
    # and none of them is the plain resize: augmentation did happen
    plain = LoaderConfig(batch_size=1, num_workers=0, shuffle_buffer=0, image_size=24, augment=False)
    unaugmented = next(iter(make_loader(ds, storage, plain)))["masks"][0, 0]
    assert not any(torch.equal(m[0], unaugmented) for m in b["masks"])


def test_crop_box_stays_inside_the_image():
    rng = np.random.default_rng(0)
    for h, w in [(36, 44), (10, 200), (200, 10), (1, 1)]:
        for _ in range(50):
            top, left, ch, cw = random_resized_crop_box(h, w, (0.3, 1.0), rng)
            assert 0 <= top and 0 <= left and 0 < ch and 0 < cw and top + ch <= h and left + cw <= w


@pytest.mark.parametrize("shuffle_buffer", [0, 1])
def test_two_workers_see_every_sample_once(dataset, shuffle_buffer):
    storage, ds, ids = dataset
    cfg = LoaderConfig(batch_size=2, num_workers=2, shuffle_buffer=shuffle_buffer, image_size=16, augment=False)
    seen = ids_of(make_loader(ds, storage, cfg))
    assert sorted(seen) == sorted(ids)
    train = ids_of(make_loader(ds, storage, cfg, split="train"))
    assert sorted(train) == sorted(ids[i] for i in (0, 1, 4, 5))


def test_ranks_split_the_shards(dataset, monkeypatch):
    storage, ds, ids = dataset
    cfg = LoaderConfig(batch_size=4, num_workers=0, shuffle_buffer=0, image_size=16, augment=False)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(ids_of(make_loader(ds, storage, cfg)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(ids)


def test_shuffling_is_seeded_by_epoch(dataset):
    storage, ds, ids = dataset
    cfg = LoaderConfig(batch_size=8, num_workers=0, shuffle_buffer=4, image_size=16, augment=True, seed=7)
    first = next(iter(make_loader(ds, storage, cfg, epoch=0)))
    again = next(iter(make_loader(ds, storage, cfg, epoch=0)))
    other = next(iter(make_loader(ds, storage, cfg, epoch=1)))
    assert sorted(first["clip_id"]) == sorted(ids)
    assert first["clip_id"] == again["clip_id"] and torch.equal(first["frames"], again["frames"])
    assert first["clip_id"] != other["clip_id"]
    assert first["clip_id"] != ids


def test_streams_from_s3_with_workers(s3_storage):
    storage, root = s3_storage
    ds = join(root, "ds")
    clips = [make_clip(f"s3 clip {i}", i) for i in range(4)]
    write_dataset(storage, ds, clips, per_shard=1)
    cfg = LoaderConfig(batch_size=2, num_workers=2, shuffle_buffer=0, image_size=16, augment=True)
    assert sorted(ids_of(make_loader(ds, storage, cfg))) == sorted(c.clip_id for c, _ in clips)


def test_missing_data_and_mixed_lengths_fail_clearly(local_storage, dataset):
    storage, root = local_storage
    cfg = LoaderConfig(batch_size=2, num_workers=0, shuffle_buffer=0, image_size=16)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        make_loader(join(root, "nothing"), storage, cfg)
    _, ds, _ = dataset
    with pytest.raises(ValueError, match="no shard holding split 'test'"):
        make_loader(ds, storage, cfg, split="test")
    a = {"frames": torch.zeros(5, 3, 4, 4), "clip_id": "a"}
    b = {"frames": torch.zeros(10, 3, 4, 4), "clip_id": "b"}
    with pytest.raises(ValueError, match="different lengths.*'b': T=10"):
        collate_clips([a, b])


def test_configs_validate():
    with pytest.raises(ValueError, match="crop_scale"):
        LoaderConfig(crop_scale=[0.8, 0.5])
    with pytest.raises(ValueError, match="hflip_p"):
        LoaderConfig(hflip_p=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        LoaderConfig(batch_size=0)
    with pytest.raises(ValueError, match="frame_format"):
        ShardsConfig(frame_format="webp")
    with pytest.raises(ValueError, match="jpeg_quality"):
        ShardsConfig(jpeg_quality=0)
    assert LoaderConfig(crop_scale=(0.25, 1)).crop_scale == [0.25, 1.0]
