"""The preprocess flow as a user runs it: killed part-way, run again, same data set as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.config import compose
from infra.storage import Storage
from tasks.preprocess import run_preprocess
from tasks.shards.manifest import read_manifest
from tasks.synthavs import ensure_synthavs

REPO = Path(__file__).resolve().parents[2]
BASE = [
    "data.synth.frame_height=64", "data.synth.frame_width=64", "data.synth.num_train_clips=6",
    "data.synth.num_val_clips=1", "data.synth.num_test_clips=1", "preprocess.shards.samples_per_shard=1",
    "cluster.num_cpus=2",
]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_manifest(tmp_path, ray_local):
    storage = Storage()
    source = [*BASE, f"data.uri={tmp_path}/synth"]
    root, _, _ = ensure_synthavs(compose(source), storage, progress=False)
    killed_out = tmp_path / "killed"
    args = [*source, f"preprocess.output={killed_out}"]

    # Run the real flow in its own process group and kill it once the first shard is complete.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "flows.preprocess", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    done: list[Path] = []
    try:
        while time.time() < deadline and proc.poll() is None:
            done = list(killed_out.glob("synthavs/*/shards/*.json"))
            if done:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert done, "the flow wrote no shard before the deadline"
    ds_dirs = list(killed_out.glob("synthavs/*"))
    assert len(ds_dirs) == 1 and not (ds_dirs[0] / "manifest.json").exists()  # killed before the end
    complete_at_kill = {p.name for p in ds_dirs[0].glob("shards/*.json")}
    assert len(complete_at_kill) < 8  # part-way: 8 clips, one shard each

    resumed = run_preprocess(compose(args), storage, source_root=root, progress=False)
    assert resumed.shards_reused >= len(complete_at_kill) and resumed.shards_built >= 1
    clean = run_preprocess(compose([*source, f"preprocess.output={tmp_path}/clean"]), storage,
                           source_root=root, progress=False)
    assert resumed.version == clean.version
    assert read_manifest(resumed.dataset_url, storage).comparable() == read_manifest(clean.dataset_url, storage).comparable()
