"""A tiny shard data set of SynthAVS clips and checkpoints of random tiny models, for the tests
of evaluation and of what builds on it (robustness)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from infra.schema.synth import SynthConfig
from infra.storage import Storage, join
from models.build import build_model
from tasks.shards.manifest import Manifest, write_manifest
from tasks.shards.schema import clip_to_sample, shard_name, write_shard
from tasks.synthavs.generate import generate_clip
from tasks.checkpoint import CheckpointMeta, save_checkpoint

T = 3
NUM_CATEGORIES = 8
HISTORY = [{"epoch": e, "train_loss": 2.0 / e, "train_loss_mask": 1.0 / e, "val_miou": 0.2 * e,
            "val_fscore": 0.25 * e, "val_num_videos": 8, "samples_per_s": 10.0} for e in (1, 2, 3)]


def synth_clips(setting: str, split: str, n: int, size: int) -> list[tuple]:
    cfg = SynthConfig(frame_height=size, frame_width=size, num_seconds=T, avss_num_seconds=T,
                      num_categories=NUM_CATEGORIES, silent_clip_prob=0.3)
    out = []
    for i in range(n):
        scene = generate_clip(cfg, setting, split, i)
        maskige = np.clip(scene.id_maps, 0, 255).astype(np.uint8)  # one index per object: a stand-in Maskige
        out.append((scene.clip, maskige))
    return out


def write_dataset(storage: Storage, ds: str, clips: list[tuple], per_shard: int = 2) -> None:
    """Shards of the clips (PNG frames: lossless, so the reference loop sees the same pixels)."""
    infos = []
    for j in range(0, len(clips), per_shard):
        samples = [clip_to_sample(c, maskiges=g, frame_format="png") for c, g in clips[j:j + per_shard]]
        infos.append(write_shard(samples, join(ds, "shards", shard_name(j // per_shard)), storage))
    write_manifest(Manifest(dataset_version="v-evaltest", config_hash="x", shards=infos), ds, storage)


def make_checkpoint(folder: str, name: str, setting: str, history=HISTORY, clip=None) -> torch.nn.Module:
    """A random tiny model. Given a clip (TPAVI only), its output biases are centred on that clip's
    logits, so that predictions vary across pixels and clips (a random model predicts one class
    everywhere, which would make the comparisons below weak)."""
    num_classes = NUM_CATEGORIES if setting == "avss" else 1
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes).eval()
    if clip is not None:
        with torch.no_grad():
            if name == "tpavi_tiny":
                frames = F.interpolate(torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255, size=(64, 64),
                                       mode="bilinear")[None]
                logits = model(frames=frames, logmel=torch.from_numpy(clip.logmel)[None])["masks"]  # N x C' x H x W
                model.output_conv[4].bias -= logits.transpose(0, 1).flatten(1).median(1).values
    meta = CheckpointMeta(model=name, model_options={"num_classes": num_classes}, epoch=len(history), step=12,
                          dataset_url="somewhere", dataset_version="v-evaltest", setting=setting,
                          history=list(history))
    save_checkpoint(folder, model, meta)
    return model


