"""The segment flow as a user runs it: overrides only, the preprocessing taken from the data set
the checkpoint names, results in {output}/segments/<run>/<checkpoint>/<video name>/; a bad video
on the command line ends the run with its reason."""
from __future__ import annotations

import io
import json
import os
import sys

import pytest
import torch

from infra.config import ConfigError, compose, config_hash
from infra.schema.synth import SynthConfig
from infra.storage import Storage, join
from models.build import build_model
from tasks.clip import ClipRef
from tasks.decode.sources import decode_clip
from tasks.preprocess import content_config
from tasks.shards.manifest import Manifest, write_manifest
from tasks.shards.schema import clip_to_sample, shard_name, write_shard
from tasks.synthavs.generate import generate_clip
from tasks.synthavs.writers import write_video_clip
from tasks.checkpoint import CheckpointMeta, save_checkpoint

OVERRIDES = ["data.synth.frame_height=64", "data.synth.frame_width=64", "data.num_frames=3"]


@pytest.fixture()
def trained(tmp_path):
    """(mp4 of a 4 s SynthAVS clip, a tpavi_tiny checkpoint whose data set holds 3 s clips of 64 px)."""
    storage = Storage()
    cfg = compose(OVERRIDES)
    synth = SynthConfig(frame_height=64, frame_width=64, num_seconds=4)
    scene = generate_clip(synth, "s4", "test", 0)
    video = write_video_clip(scene, str(tmp_path / "synth"), storage, synth.video_fps, synth.video_crf)
    clip = decode_clip(ClipRef(scene.clip.clip_id, "video", video, "test", "s4"), storage, 3, 64)
    clip.masks, clip.gt_frames = scene.clip.masks[:3], [True] * 3
    ds = str(tmp_path / "datasets" / "v-segflow")
    info = write_shard([clip_to_sample(clip)], join(ds, "shards", shard_name(0)), storage)
    write_manifest(Manifest(dataset_version="v-segflow", config_hash=config_hash(content_config(cfg)), shards=[info],
                            provenance={"config": content_config(cfg)}), ds, storage)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "train" / "r1" / "checkpoint_epoch0001")
    save_checkpoint(ckpt, build_model("tpavi_tiny", num_classes=1),
                    CheckpointMeta(model="tpavi_tiny", model_options={"num_classes": 1}, epoch=1, dataset_url=ds,
                                   dataset_version="v-segflow", setting="s4"))
    return video, ckpt


@pytest.mark.slow  # the ephemeral Prefect API: about 10 s
def test_segment_flow_from_overrides(tmp_path, trained, monkeypatch):
    from flows.segment import segment

    video, ckpt = trained
    out = tmp_path / "outputs"
    result = segment([f"segment.video={video}", f"segment.checkpoint={ckpt}", f"output={out}", "segment.device=cpu"])
    folder = out / "segments" / "r1" / "checkpoint_epoch0001" / "synth_s4_test_00000"
    assert sorted(os.listdir(folder)) == ["masks", "overlay.mp4", "summary.json"]
    assert sorted(os.listdir(folder / "masks")) == ["000000.png", "000001.png", "000002.png", "000003.png"]
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["window_s"] == 3 and saved["windows"] == 2 and saved["padded_seconds"] == 2
    assert saved["totals"]["seconds"] == 4 and saved["message"] == result["message"]
    assert result["paths"]["summary"] == str(folder / "summary.json")

    with pytest.raises(ConfigError, match="no video to segment"):
        segment([f"segment.checkpoint={ckpt}"])
    with pytest.raises(ConfigError, match="segment.window_s must be in 1..60"):
        segment([f"segment.video={video}", f"segment.checkpoint={ckpt}", "segment.window_s=0"])

    # on the command line, a file that is not a video ends the run with its reason and exit status 1
    from flows.common import main

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "argv", ["flows.segment", f"segment.video={junk}", f"segment.checkpoint={ckpt}",
                                      f"output={out}"])
    monkeypatch.setattr(sys, "stderr", stderr)
    with pytest.raises(SystemExit) as stop:
        main(segment)
    assert stop.value.code == 1
    assert f"SegmentError: cannot segment {junk}: not a video" in stderr.getvalue()
