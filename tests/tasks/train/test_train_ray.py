"""Training on Ray Train with DDP, on the tiny SynthAVS data set (conftest.train_dataset), the
checkpoints on the S3 test server.

One run carries most checks (each Ray Train run costs tens of seconds on 2 cores): 2 CPU workers
over 3 train shards (one rank gets twice the batches of the other), rank 1 killed by the test-only
hook in the middle of epoch 2, FailureConfig restarting the workers from the epoch-1 checkpoint.
It must finish, every train clip once per epoch, its checkpoints intact on S3. Then the same run
name again with one more epoch resumes (trains epoch 3 only); and a run on a two-node
``ray.cluster_utils.Cluster`` (its own Ray, in a subprocess) splits the shards between the nodes,
and, being an uninterrupted run of the same seed, ends with the faulted run's test metrics.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from infra.config import compose
from infra.schema.storage import StorageConfig
from infra.storage import Storage, join
from tasks.shards.manifest import read_manifest
from tasks.shards.schema import read_shard, sample_meta
from tasks.checkpoint import load_checkpoint
from tasks.train.run import run_training

REPO = Path(__file__).resolve().parents[3]
KEY, SECRET = "train-test-key", "train-test-secret-value"
FAST = ["train.loader.image_size=64", "train.loader.batch_size=2", "train.loader.shuffle_buffer=4",
        "train.num_workers=2", "train.cpus_per_worker=1", "train.epochs=2", "train.max_failures=1",
        "train.evaluate=false", "train.hooks.report_clip_ids=true", "seed=0"]
FAIL_AT = 3  # optimiser steps: 2 per epoch (the larger share: 2 shards x 2 clips / batch 2), so mid-epoch 2


@pytest.fixture(scope="module")
def s3(s3_server, train_dataset):
    """(storage, bucket, overrides, dataset_url): a bucket holding a copy of the tiny data set."""
    import boto3

    bucket = f"train-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    storage = Storage(StorageConfig(endpoint_url=s3_server, region="us-east-1", key=KEY, secret=SECRET, retries=2,
                                    retry_backoff_s=0.05))
    _, local = train_dataset
    url = f"s3://{bucket}/datasets/{os.path.basename(local)}"
    files = sorted(Path(local).rglob("*"), key=lambda p: p.name == "manifest.json")  # the manifest last
    for f in files:
        if f.is_file():
            storage.put_file(str(f), join(url, str(f.relative_to(local))))
    overrides = [f"storage.endpoint_url={s3_server}", "storage.region=us-east-1", "storage.retry_backoff_s=0.05"]
    return storage, f"s3://{bucket}", overrides, url


def _train_clips(dataset_url: str, storage: Storage) -> list[str]:
    manifest = read_manifest(dataset_url, storage)
    metas = [sample_meta(s) for url in manifest.shard_urls(dataset_url) for s in read_shard(url, storage)]
    return sorted(m["clip_id"] for m in metas if m["split"] == "train")


def _assert_each_clip_once(reports, clips, ranks=2):
    for per_rank in reports:
        assert [m["rank"] for m in per_rank] == list(range(ranks))
        seen = [c for m in per_rank for c in m["clip_ids"]]
        assert sorted(seen) == clips, Counter(seen)  # every clip, and none twice
        assert len({frozenset(m["clip_ids"]) for m in per_rank}) == ranks


@pytest.fixture(scope="module")
def faulted(ray_local, s3):
    storage, bucket, overrides, dataset_url = s3
    cfg = compose([*FAST, *overrides, f"output={bucket}/out", "train.run_name=faulted",
                   f"train.hooks.fail_once_at_step={FAIL_AT}"])
    result = run_training(cfg, storage, dataset_url, logging.getLogger("test.train"))
    return result, cfg


@pytest.mark.slow
def test_unequal_shards_and_a_killed_worker_finish_each_clip_once(faulted, s3):
    result, cfg = faulted
    storage, bucket, _, dataset_url = s3
    # rank 1 died once, in epoch 2; Ray Train restarted both workers from the epoch-1 checkpoint
    assert len(result.failures) == 1 and 1 in result.failures[0]
    assert storage.exists(join(result.run_dir, f".test-hook-failed-at-step-{FAIL_AT}"))
    assert [r[0]["epoch"] for r in result.reports] == [1, 2]
    for per_rank in result.reports:
        assert sorted(m["rank_batches"] for m in per_rank) == [1, 2]  # unequal: 2 shards vs 1
        assert all(m["step"] == per_rank[0]["step"] for m in per_rank)  # and yet in step
    _assert_each_clip_once(result.reports, _train_clips(dataset_url, storage))

    # the last checkpoint, on S3, holds everything a resume or an evaluation needs
    assert result.checkpoint_uri == f"{bucket}/out/train/faulted/checkpoint_epoch0002"
    ckpt = load_checkpoint(result.checkpoint_uri, storage, expect_model="combo_tiny", with_train_state=True)
    meta = ckpt.meta
    assert (meta.epoch, meta.step, meta.setting, meta.dataset_url) == (2, 4, "s4", dataset_url)
    assert meta.dataset_version == os.path.basename(dataset_url)
    assert meta.model_options["num_classes"] == 1 and meta.config["train"]["num_workers"] == 2
    assert [h["epoch"] for h in meta.history] == [1, 2] and meta.metrics["epoch"] == 2
    for key in ("train_loss", "train_loss_ada", "val_miou", "val_fscore", "test_miou", "test_fscore"):
        assert key in meta.metrics and 0 <= meta.metrics[key] < 1e3
    assert "test_miou" not in meta.history[0]  # the test split is scored after the last epoch only
    assert set(ckpt.train_state) >= {"optimizer", "scheduler", "epoch", "step"}
    assert ckpt.train_state["scheduler"]["last_epoch"] == 4
    assert SECRET not in storage.read_text(join(result.checkpoint_uri, "meta.json"))
    assert result.metrics == meta.metrics and result.history == meta.history


@pytest.mark.slow
def test_a_rerun_with_the_same_run_name_resumes(faulted, s3):
    first, cfg = faulted
    storage, bucket, overrides, dataset_url = s3
    again = compose([*FAST, *overrides, f"output={bucket}/out", "train.run_name=faulted", "train.epochs=3"])
    result = run_training(again, storage, dataset_url, logging.getLogger("test.train"))
    assert [r[0]["epoch"] for r in result.reports] == [3]  # epochs 1 and 2 were not trained again
    assert not result.failures  # the hook's marker keeps it from firing twice
    assert result.checkpoint_uri.endswith("checkpoint_epoch0003") and result.metrics["step"] == 6
    assert result.history[:2] == first.history and len(result.history) == 3
    _assert_each_clip_once(result.reports, _train_clips(dataset_url, storage))


@pytest.mark.slow
def test_a_rerun_of_a_finished_run_reuses_it_without_starting_ray_train(faulted, s3, monkeypatch):
    from tasks.train import run as run_module

    storage, bucket, overrides, dataset_url = s3
    monkeypatch.setattr(run_module, "TorchTrainer", lambda *a, **k: pytest.fail("Ray Train was started"))
    again = compose([*FAST, *overrides, f"output={bucket}/out", "train.run_name=faulted", "train.epochs=2"])
    result = run_training(again, storage, dataset_url, logging.getLogger("test.train"))
    latest = run_module._latest_run_checkpoint(result.run_dir, storage)  # epoch 2, or 3 after the resume test
    assert result.reports == [] and result.checkpoint_uri == latest and result.metrics["epoch"] >= 2
    assert result.summary()["epochs_this_run"] == 0


TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster

args = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20})
cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
from infra.config import compose
from infra.storage import Storage
from tasks.train.run import run_training

cfg = compose(args["overrides"])
result = run_training(cfg, Storage(cfg.storage), args["dataset"])
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
print("RESULT " + json.dumps({"reports": result.reports, "metrics": result.metrics, "nodes": nodes}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_two_nodes_split_the_shards_and_match_the_faulted_run(faulted, s3, tmp_path):
    storage, bucket, overrides, dataset_url = s3
    args = {"dataset": dataset_url,
            "overrides": [*FAST, *overrides, f"output={bucket}/two-nodes", "train.run_name=two-nodes"]}
    env = {**os.environ, "RAY_ADDRESS": "", "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", TWO_NODES, json.dumps(args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert len(out["nodes"]) == 2
    for per_rank in out["reports"]:
        assert sorted(m["node_id"] for m in per_rank) == out["nodes"]  # one worker on each node
    _assert_each_clip_once(out["reports"], _train_clips(dataset_url, storage))
    # an uninterrupted run of the same seed: the faulted run's test metrics, within noise
    faulted_metrics = faulted[0].metrics
    for key in ("train_loss", "val_miou", "val_fscore", "test_miou", "test_fscore"):
        assert out["metrics"][key] == pytest.approx(faulted_metrics[key], rel=1e-4, abs=1e-4), key
