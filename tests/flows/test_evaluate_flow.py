"""The evaluate flow as a user runs it: overrides only, the data set taken from the checkpoint,
the report in {output}/evaluations/<run>/<checkpoint>/<split>/."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from infra.config import ConfigError
from infra.schema.synth import SynthConfig
from infra.storage import Storage, join
from models.build import build_model
from tasks.shards.manifest import Manifest, write_manifest
from tasks.shards.schema import clip_to_sample, shard_name, write_shard
from tasks.synthavs.generate import generate_clip
from tasks.checkpoint import CheckpointMeta, save_checkpoint


@pytest.fixture()
def trained(tmp_path):
    """A two-clip S4 data set and a checkpoint that records it as its training data."""
    storage = Storage()
    cfg = SynthConfig(frame_height=64, frame_width=64, num_seconds=2)
    ds = str(tmp_path / "datasets" / "v-flowtest")
    samples = [clip_to_sample(generate_clip(cfg, "s4", "test", i).clip) for i in range(2)]
    info = write_shard(samples, join(ds, "shards", shard_name(0)), storage)
    write_manifest(Manifest(dataset_version="v-flowtest", config_hash="x", shards=[info]), ds, storage)
    torch.manual_seed(0)
    model = build_model("tpavi_tiny", num_classes=1)
    ckpt = str(tmp_path / "runs" / "r1" / "checkpoint_000002")
    history = [{"epoch": 1, "train_loss": 1.0, "val_miou": 0.1, "val_fscore": 0.2},
               {"epoch": 2, "train_loss": 0.5, "val_miou": 0.3, "val_fscore": 0.4}]
    save_checkpoint(ckpt, model, CheckpointMeta(model="tpavi_tiny", model_options={"num_classes": 1}, epoch=2,
                                                dataset_url=ds, dataset_version="v-flowtest", setting="s4",
                                                history=history))
    return ckpt, ds


@pytest.mark.slow  # the ephemeral Prefect API: about 10 s
def test_evaluate_flow_from_overrides(tmp_path, trained):
    from flows.evaluate import evaluate

    ckpt, ds = trained
    out = tmp_path / "outputs"
    result = evaluate([f"evaluate.checkpoint={ckpt}", f"output={out}", "evaluate.device=cpu",
                       "evaluate.num_overlays=1"])
    folder = out / "evaluations" / "r1" / "checkpoint_000002" / "test"
    assert sorted(os.listdir(folder)) == ["curves.png", "metrics.json", "overlays.png", "per_video.csv"]
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["dataset"] == ds and saved["num_videos"] == 2 and saved["model"] == "tpavi_tiny"
    assert np.isclose(saved["miou"], result["miou"]) and result["paths"]["metrics"] == str(folder / "metrics.json")

    with pytest.raises(ConfigError, match="no checkpoint to evaluate"):
        evaluate([f"output={out}"])
