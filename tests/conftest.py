"""Shared fixtures: a real S3 protocol server (moto's threaded server) and small settings."""
from __future__ import annotations

import os
import socket
import uuid
import warnings

import pytest

# Keep every test on a small CPU footprint; CI has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# An ephemeral Prefect server with a fresh home creates its database first; Prefect waits 20 s
# for it by default, which a loaded 2-core machine can exceed ("Timed out while attempting to
# connect to ephemeral Prefect API server", seen with a training job beside the suite).
EPHEMERAL_STARTUP_TIMEOUT_S = "120"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)

TEST_KEY = "testing-key-id"
TEST_SECRET = "testing-secret-value"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback for the whole test session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3_storage(s3_server):
    """A Storage talking to the test server, with a fresh bucket; yields (storage, 's3://bucket')."""
    import boto3

    from infra.schema.storage import StorageConfig
    from infra.storage import Storage

    bucket = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id=TEST_KEY, aws_secret_access_key=TEST_SECRET,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    cfg = StorageConfig(endpoint_url=s3_server, region="us-east-1", key=TEST_KEY, secret=TEST_SECRET, retries=2,
                        retry_backoff_s=0.05)
    yield Storage(cfg), f"s3://{bucket}"


@pytest.fixture()
def local_storage(tmp_path):
    from infra.storage import Storage

    return Storage(), str(tmp_path)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, as on CI), its own even when another test process runs one."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="avs-tests", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture()
def s3_run(s3_storage, monkeypatch):
    """(storage, bucket, overrides): config overrides that point a run at the test S3 server.
    Credentials are never overrides (compose refuses them): they go in the environment, as a user's would."""
    storage, bucket = s3_storage
    c = storage.cfg
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", c.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", c.secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    overrides = [f"storage.endpoint_url={c.endpoint_url}", "storage.region=us-east-1", "storage.retry_backoff_s=0.05"]
    return storage, bucket, overrides


# A tiny SynthAVS (hard preset, S4, 64 px) made by the preprocess step, for the training tests:
# 6 train clips in 3 shards (odd: 2 workers get unequal shares), 2 val and 2 test clips in one
# shard each (one of 2 workers gets no validation data).
TRAIN_DATA_OVERRIDES = [
    "data.synth.frame_height=64", "data.synth.frame_width=64", "data.synth.num_train_clips=6",
    "data.synth.num_val_clips=2", "data.synth.num_test_clips=2", "preprocess.shards.samples_per_shard=2",
    "preprocess.pairs.k_pos=2", "preprocess.pairs.num_neg=2",
]


@pytest.fixture(scope="session")
def train_dataset(ray_local, tmp_path_factory):
    """(overrides, dataset_url): the overrides that make (or find) the tiny training data set, and its folder."""
    from infra.config import compose
    from infra.storage import Storage
    from tasks.preprocess import run_preprocess
    from tasks.synthavs import ensure_synthavs

    root = tmp_path_factory.mktemp("train-data")
    overrides = [*TRAIN_DATA_OVERRIDES, f"data.uri={root}/synth", f"preprocess.output={root}/datasets"]
    cfg = compose(overrides)
    storage = Storage()
    with warnings.catch_warnings():  # Prefect, once imported, warns about logs outside a flow run
        warnings.filterwarnings("ignore", message=".*send logs to the API without a flow run id")
        source, _, _ = ensure_synthavs(cfg, storage, progress=False)
        result = run_preprocess(cfg, storage, source_root=source, progress=False)
    return overrides, result.dataset_url
