"""The pretraining set: SynthAVS clips of the pretraining seed with every label the encoders learn from.

Each clip gives, for each of its T seconds: the frame (uint8 H x W x 3), the category of the
object on every pixel (uint8 H x W: 0 background or occluder, 1..K; every object, sounding or
not: the dense labels of ADE20K's role), the log-mel example (float16 96 x 64, VGGish framing)
and the categories that can be heard in that second (bool K: sounding objects on screen and
sounds from off screen; AudioSet's role).

On storage (local or s3://), one folder per configuration, never overwritten::

    {pretrain.data_uri or output/pretrain/data}/p-<hash of the generator config, seed, setting, counts>/
        train-00000.npz ...   clips_per_chunk clips each: frames [N,T,H,W,3], categories [N,T,H,W],
        val-00000.npz ...     logmel [N,T,96,64] float16, audible [N,T,K], clip_ids [N]
        manifest.json         written last: counts, chunk names, the config; its presence = complete

Each chunk is one Ray task (:func:`ensure_pretrain_set`); a rerun finds the manifest and reuses the
set, and a run killed part-way writes only the missing chunks again.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from infra.config import Config, config_hash, to_dict
from infra.schema.synth import SynthConfig
from infra.storage import Storage, absolute, join, require_shared

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
SPLITS = ("train", "val")


def pretrain_synth(cfg: Config) -> SynthConfig:
    """The generator config of the pretraining set: ``data.synth`` with the pretraining seed."""
    if cfg.pretrain.seed == cfg.data.synth.seed:
        from infra.config import ConfigError

        raise ConfigError(f"pretrain.seed={cfg.pretrain.seed} equals data.synth.seed: the pretraining set would hold "
                          "the very clips that are scored; give it a seed of its own")
    return dataclasses.replace(cfg.data.synth, seed=cfg.pretrain.seed)


def set_url(cfg: Config) -> str:
    """The folder of this configuration's pretraining set."""
    p = cfg.pretrain
    what = {"synth": to_dict(pretrain_synth(cfg)), "setting": p.setting, "train": p.num_train_clips,
            "val": p.num_val_clips, "chunk": p.clips_per_chunk, "format": FORMAT}
    root = p.data_uri or join(cfg.output, "pretrain", "data")
    return join(absolute(root), f"p-{config_hash(what)}")


def chunk_names(split: str, count: int, per_chunk: int) -> list[tuple[str, int, int]]:
    """(file name, first clip index, clip count) of every chunk of a split."""
    return [(f"{split}-{i // per_chunk:05d}.npz", i, min(per_chunk, count - i)) for i in range(0, count, per_chunk)]


def make_chunk(synth: SynthConfig, setting: str, split: str, first: int, count: int) -> dict[str, np.ndarray]:
    """The arrays of clips first .. first + count - 1 of a split (a pure function of its arguments)."""
    from tasks.synthavs.generate import generate_clip

    scenes = [generate_clip(synth, setting, split, i) for i in range(first, first + count)]
    return {
        "frames": np.stack([s.clip.frames for s in scenes]),
        "categories": np.stack([s.category_maps for s in scenes]),
        "logmel": np.stack([s.clip.logmel for s in scenes]).astype(np.float16),
        "audible": np.stack([s.audible for s in scenes]),
        "clip_ids": np.array([s.clip.clip_id for s in scenes]),
    }


def _write_chunk(storage: Storage, url: str, synth: SynthConfig, setting: str, split: str, first: int,
                 count: int) -> str:
    buf = io.BytesIO()
    np.savez_compressed(buf, **make_chunk(synth, setting, split, first, count))
    storage.write_bytes(url, buf.getvalue())
    return url


def ensure_pretrain_set(cfg: Config, storage: Storage, progress: bool = True) -> tuple[str, dict[str, Any], bool]:
    """The pretraining set of cfg, generated (chunks as Ray tasks) unless complete already.
    Returns (url, manifest, generated)."""
    url = set_url(cfg)
    manifest_url = join(url, MANIFEST)
    if storage.exists(manifest_url):
        log.info("pretraining set at %s is complete: reusing it", url)
        return url, json.loads(storage.read_text(manifest_url)), False
    import ray
    from tqdm import tqdm

    from infra.ray_runtime import init_ray

    init_ray(cfg.cluster)
    require_shared(url, "pretrain.data_uri")
    p, synth = cfg.pretrain, pretrain_synth(cfg)
    counts = {"train": p.num_train_clips, "val": p.num_val_clips}
    chunks = {split: chunk_names(split, counts[split], p.clips_per_chunk) for split in SPLITS}
    write = ray.remote(num_cpus=1)(_write_chunk)
    pending = [write.remote(storage, join(url, name), synth, p.setting, split, first, n)
               for split in SPLITS for name, first, n in chunks[split] if not storage.exists(join(url, name))]
    with tqdm(total=len(pending), desc="pretraining set", unit="chunk", disable=not progress) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=2.0)
            ray.get(ready)  # a failed chunk fails here, naming its task
            bar.update(len(ready))
    manifest = {"format": FORMAT, "synth": to_dict(synth), "setting": p.setting, "counts": counts,
                "num_categories": synth.num_categories, "num_seconds": synth.num_seconds,
                "frame_size": [synth.frame_height, synth.frame_width],
                "chunks": {split: [name for name, _, _ in chunks[split]] for split in SPLITS}}
    storage.write_text(manifest_url, json.dumps(manifest, indent=1, sort_keys=True))
    log.info("pretraining set: %d train / %d val clips of SynthAVS seed %d (%s) at %s", counts["train"],
             counts["val"], synth.seed, p.setting, url)
    return url, manifest, True


@dataclass
class PretrainArrays:
    """Clips of the pretraining set in memory (numpy, one array per label kind, clip-major)."""

    frames: np.ndarray  # uint8 [N, T, H, W, 3]
    categories: np.ndarray  # uint8 [N, T, H, W]
    logmel: np.ndarray  # float16 [N, T, 96, 64]
    audible: np.ndarray  # bool [N, T, K]

    def __len__(self) -> int:
        return len(self.frames)


def read_chunks(url: str, names: list[str], storage: Storage) -> PretrainArrays:
    """The clips of the named chunk files, concatenated."""
    parts: dict[str, list[np.ndarray]] = {"frames": [], "categories": [], "logmel": [], "audible": []}
    for name in names:
        with np.load(io.BytesIO(storage.read_bytes(join(url, name)))) as z:
            for key in parts:
                parts[key].append(z[key])
    if not names:
        raise ValueError(f"pretraining set {url}: no chunk to read")
    return PretrainArrays(**{k: np.concatenate(v) for k, v in parts.items()})
