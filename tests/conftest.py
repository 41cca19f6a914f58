"""Shared fixtures: a real S3 protocol server (moto's threaded server) and small settings."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

# Keep every test on a small CPU footprint; CI has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

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
    """One local Ray for the whole session (2 CPUs, as on CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, namespace="avs-tests", log_to_driver=False)
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
