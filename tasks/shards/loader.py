"""Stream shards into training batches with the stock ``webdataset`` pipeline.

::

    manifest shards -> (shuffle shard order) -> split_by_node -> split_by_worker
      -> open through Storage (local or s3://) -> tar members -> samples
      -> keep one split -> shuffle buffer -> decode + augment -> DataLoader batches

Shards are opened through :class:`~infra.storage.Storage` (fsspec / s3fs) rather than
webdataset's ``gopen``, which knows no S3 endpoint or credentials of ours. Shard order
is shuffled with a seed shared by every process (``seed + epoch``), so that
``split_by_node`` (Ray Train / torch.distributed ranks) and ``split_by_worker``
(DataLoader workers) partition the same list: each shard is read by exactly one worker
of one rank per epoch. Per-worker random streams (shuffle buffer, augmentation) are
seeded from (seed, epoch, rank, worker), so a run is reproducible.

A batch is a dict:

====================  ===========================================================
``frames``            float32 [B, T, 3, S, S], RGB in [0, 1] (the models normalise inside)
``maskige``           float32 [B, T, 3, S, S], Maskige RGB in [0, 1] (zeros when absent)
``masks``             int64 [B, T, S, S], ground truth (zeros on frames without it)
``gt_frames``         bool [B, T], which frames carry ground truth
``logmel``            float32 [B, T, 96, 64]
``has_maskige``       bool [B]
``clip_id``           list[str], B entries
====================  ===========================================================

Every rank may get a different number of batches (shards hold different numbers of
samples of a split): a DDP loop must not assume equal counts.
"""
from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resized_crop_image
from webdataset.tariterators import group_by_keys, tar_file_expander

from infra.schema.shards import LoaderConfig
from infra.storage import Storage
from tasks.decode.logmel import silence
from tasks.shards.manifest import read_manifest
from tasks.shards.schema import ClipSample, decode_sample, sample_meta

log = logging.getLogger(__name__)

_CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios a random resized crop may take (torchvision's default)


# -- shard list --------------------------------------------------------------------------
def shard_urls(dataset_url: str, storage: Storage, split: str | None = None) -> list[str]:
    """URLs of the data set's shards, in manifest order; shards the manifest records as
    holding no sample of split are left out."""
    manifest = read_manifest(dataset_url, storage)
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json at {dataset_url}: the data set is missing or unfinished")
    urls = []
    for s in sorted(manifest.shards, key=lambda s: s["name"]):
        splits = s.get("splits")
        if split is not None and splits and not splits.get(split):
            continue
        urls.append(manifest.shard_url(dataset_url, s["name"]))
    if not urls:
        raise ValueError(f"data set {dataset_url} has no shard holding split {split!r} "
                         f"(splits: {manifest.split_counts()})")
    return urls


def _worker_seed(seed: int, epoch: int, salt: int) -> np.random.SeedSequence:
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return np.random.SeedSequence([seed, epoch, rank, worker, salt])


# -- pipeline stages (module-level functions: picklable for any DataLoader start method) --
def _open_shards(src: Iterable[dict[str, Any]], storage: Storage) -> Iterator[dict[str, Any]]:
    """Add an open stream to each {"url": ...}; the stream closes when the next is asked for."""
    fresh = Storage(storage.cfg)  # filesystems hold sockets: never reuse the parent's after fork
    for item in src:
        with fresh.open(item["url"], "rb") as stream:
            yield {**item, "stream": stream}


def _keep_split(src: Iterable[dict[str, Any]], split: str | None) -> Iterator[dict[str, Any]]:
    """Drop samples of other splits, reading only meta.json (before any image is decoded)."""
    for sample in src:
        if split is None or sample_meta(sample).get("split") == split:
            yield sample


def _shuffle(src: Iterable[dict[str, Any]], bufsize: int, seed: int, epoch: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(int(_worker_seed(seed, epoch, 1).generate_state(1)[0]))
    yield from wds.filters.shuffle(bufsize, initial=bufsize, rng=rng)(src)


def _decode_and_augment(src: Iterable[dict[str, Any]], transform: ClipTransform, seed: int,
                        epoch: int) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(_worker_seed(seed, epoch, 2))
    for sample in src:
        yield transform(decode_sample(sample, with_audio=False, with_dino=False), rng)  # the models read neither


# -- augmentation ------------------------------------------------------------------------
def random_resized_crop_box(height: int, width: int, scale: tuple[float, float],
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random fraction in scale of the image, aspect
    ratio in [3/4, 4/3] (torchvision's RandomResizedCrop rule, with our own generator)."""
    area = height * width
    log_lo, log_hi = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # fall back to the largest centred crop with an allowed aspect ratio
    ratio = width / height
    if ratio < _CROP_RATIO[0]:
        w, h = width, int(round(width / _CROP_RATIO[0]))
    elif ratio > _CROP_RATIO[1]:
        h, w = height, int(round(height * _CROP_RATIO[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=1)
def maskige_lut() -> torch.Tensor:
    """uint8 [256, 3]: the RGB colour of each Maskige index (palette from tasks.enrich.maskige)."""
    from tasks.enrich.maskige import maskige_rgb

    lut = np.asarray(maskige_rgb(np.arange(256, dtype=np.uint8).reshape(1, 256)))
    if lut.shape != (1, 256, 3):
        raise ValueError(f"tasks.enrich.maskige.maskige_rgb must map uint8 [H, W] to [H, W, 3], got {list(lut.shape)}")
    return torch.from_numpy(lut[0].astype(np.uint8).copy())


@functools.lru_cache(maxsize=1)
def _maskige_lut_unit() -> torch.Tensor:
    return maskige_lut().float().div_(255.0)


class ClipTransform:
    """Decoded clip -> tensors of one training example, resized to size x size.

    With augment, one random resized crop and one horizontal flip are drawn per clip and
    applied to every frame, Maskige and mask of it (bilinear for frames, nearest for the
    index images), so pixels stay aligned across modalities and across time.
    """

    def __init__(self, size: int, augment: bool, crop_scale: tuple[float, float] = (0.5, 1.0),
                 hflip_p: float = 0.5, silent_audio_prob: float = 0.0):
        self.size = int(size)
        self.augment = augment
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.hflip_p = float(hflip_p)
        self.silent_audio_prob = float(silent_audio_prob)

    @classmethod
    def from_config(cls, cfg: LoaderConfig) -> ClipTransform:
        return cls(cfg.image_size, cfg.augment, tuple(cfg.crop_scale), cfg.hflip_p, cfg.silent_audio_prob)

    def geometry(self, height: int, width: int, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], bool]:
        """The crop box (top, left, h, w) and flip decision for one clip."""
        if not self.augment:
            return (0, 0, height, width), False
        box = random_resized_crop_box(height, width, self.crop_scale, rng)
        return box, bool(rng.random() < self.hflip_p)

    def _warp(self, x: torch.Tensor, box: tuple[int, int, int, int], flip: bool,
              mode: InterpolationMode) -> torch.Tensor:
        """x: uint8 [T, C, H, W] -> uint8 [T, C, size, size]."""
        top, left, h, w = box
        out = resized_crop_image(x, top, left, h, w, [self.size, self.size], interpolation=mode,
                                 antialias=mode == InterpolationMode.BILINEAR)
        return out.flip(-1) if flip else out

    def __call__(self, clip: ClipSample, rng: np.random.Generator) -> dict[str, Any]:
        t, h, w = clip.frames.shape[:3]
        box, flip = self.geometry(h, w, rng)
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        # [0, 1], not ImageNet-normalised: every model in models/ normalises its own input
        frames = self._warp(frames, box, flip, InterpolationMode.BILINEAR).float().div_(255.0)
        if clip.maskiges is not None:
            g = self._warp(torch.from_numpy(clip.maskiges)[:, None], box, flip, InterpolationMode.NEAREST_EXACT)
            maskige = _maskige_lut_unit()[g[:, 0].long()].permute(0, 3, 1, 2)  # [T, 3, S, S] in [0, 1]
        else:
            maskige = torch.zeros(t, 3, self.size, self.size)
        if clip.masks is not None:
            m = self._warp(torch.from_numpy(clip.masks)[:, None], box, flip, InterpolationMode.NEAREST_EXACT)
            masks = m[:, 0].long()
        else:
            masks = torch.zeros(t, self.size, self.size, dtype=torch.long)
        gt = clip.gt_frames if clip.masks is not None else [False] * t
        logmel = np.ascontiguousarray(clip.logmel, np.float32)
        # drawn after the clip's crop and flip (with silent_audio_prob 0 nothing is drawn: seeds keep their crops)
        if self.augment and self.silent_audio_prob > 0 and rng.random() < self.silent_audio_prob:
            logmel = silence(t)
            masks = torch.zeros_like(masks)  # background (0) in the binary and the semantic settings
        return {
            "frames": frames.contiguous(),
            "maskige": maskige.contiguous(),
            "masks": masks.contiguous(),
            "gt_frames": torch.tensor(gt, dtype=torch.bool),
            "logmel": torch.from_numpy(logmel),
            "has_maskige": clip.maskiges is not None,
            "clip_id": clip.clip_id,
        }


def collate_clips(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack examples from :class:`ClipTransform` into a batch (see the module docstring)."""
    lengths = {e["frames"].shape[0] for e in examples}
    if len(lengths) > 1:
        detail = ", ".join(f"{e['clip_id']!r}: T={e['frames'].shape[0]}" for e in examples)
        raise ValueError(f"clips of different lengths cannot share a batch ({detail}); "
                         "load one setting at a time or batch by T")
    return {
        "frames": torch.stack([e["frames"] for e in examples]),
        "maskige": torch.stack([e["maskige"] for e in examples]),
        "masks": torch.stack([e["masks"] for e in examples]),
        "gt_frames": torch.stack([e["gt_frames"] for e in examples]),
        "logmel": torch.stack([e["logmel"] for e in examples]),
        "has_maskige": torch.tensor([e["has_maskige"] for e in examples], dtype=torch.bool),
        "clip_id": [e["clip_id"] for e in examples],
    }


# -- the loader --------------------------------------------------------------------------
def make_dataset(dataset_url: str, storage: Storage, cfg: LoaderConfig, split: str | None = None,
                 epoch: int = 0) -> wds.DataPipeline:
    """The webdataset pipeline of one epoch, yielding single examples (dicts of tensors)."""
    urls = shard_urls(dataset_url, storage, split)
    shuffle = cfg.shuffle_buffer > 1
    _, world, _, _ = wds.utils.pytorch_worker_info()
    readers = world * max(1, cfg.num_workers)
    if len(urls) < readers:
        log.warning("%s: %d shard(s) for %d readers (%d rank(s) x %d worker(s)): some readers get no data",
                    dataset_url, len(urls), readers, world, max(1, cfg.num_workers))
    stages: list[Any] = [
        # a seeded shuffle gives the same order in every process, which the splitters need
        wds.SimpleShardList(urls, seed=cfg.seed + epoch if shuffle else None),
        wds.split_by_node,
        wds.split_by_worker,
        functools.partial(_open_shards, storage=storage),
        tar_file_expander,
        group_by_keys,
        functools.partial(_keep_split, split=split),
    ]
    if shuffle:
        stages.append(functools.partial(_shuffle, bufsize=cfg.shuffle_buffer, seed=cfg.seed, epoch=epoch))
    stages.append(functools.partial(_decode_and_augment, transform=ClipTransform.from_config(cfg),
                                    seed=cfg.seed, epoch=epoch))
    return wds.DataPipeline(*stages)


def make_loader(dataset_url: str, storage: Storage, cfg: LoaderConfig, split: str | None = None,
                epoch: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over the data set's shards for one epoch (make a new one per epoch:
    epoch reseeds the shard order, shuffle buffer and augmentation)."""
    dataset = make_dataset(dataset_url, storage, cfg, split, epoch)
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=collate_clips,
        persistent_workers=False,
    )
