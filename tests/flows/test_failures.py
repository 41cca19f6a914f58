"""A run that fails ends with its cause, once, naming the URI (flows.common.main): no traceback on
the console, Prefect's repeats of the cause shortened, Ray's wrappers unwrapped."""
from __future__ import annotations

import uuid

import pytest
from prefect_env import TINY, run_python, user_env

from flows.common import describe, root_cause
from infra.storage import StorageError


def test_the_cause_is_unwrapped_from_rays_task_errors_and_train_worker_failures():
    from ray.exceptions import RayTaskError

    cause = StorageError("write s3://b/shards/shard-000000.tar failed: no such bucket (does the bucket exist?)")
    wrapped = RayTaskError("write_shard_row", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()
    assert root_cause(wrapped) is cause
    assert describe(root_cause(wrapped)) == f"StorageError: {cause}"

    class WorkerGroupFailed(RuntimeError):  # the shape of Ray Train's worker-group errors
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = failures

    assert root_cause(WorkerGroupFailed({1: wrapped})) is cause
    try:
        try:
            raise cause
        except StorageError as e:
            raise RuntimeError("task run failed") from e
    except RuntimeError as outer:
        assert root_cause(outer) is cause


@pytest.mark.slow
def test_a_run_whose_bucket_is_missing_ends_with_the_cause_once(prefect_home, ray_tmp, s3_server, s3_bucket):
    missing = f"s3://missing-{uuid.uuid4().hex[:8]}"
    env = user_env(prefect_home, AWS_ACCESS_KEY_ID="akey-for-test", AWS_SECRET_ACCESS_KEY="secret-for-test",
                   AWS_DEFAULT_REGION="us-east-1", RAY_TMPDIR=str(ray_tmp), PREFECT_LOGGING_LEVEL="INFO")
    args = [*TINY, "storage=s3", f"storage.endpoint_url={s3_server}", "storage.retries=1",
            f"data.uri=s3://{s3_bucket}/synth", f"preprocess.output={missing}/datasets"]
    proc = run_python(["-m", "flows.preprocess", *args], env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out  # the full traceback is in a file, named at the end
    tail = proc.stderr.strip().splitlines()[-4:]  # (Prefect's "Stopping temporary server" may come last)
    at = next((i for i, line in enumerate(tail) if line.startswith("preprocess failed: ")), None)
    assert at is not None, proc.stderr[-3000:]
    assert tail[at].startswith("preprocess failed: StorageError: write ") and f"{missing}/datasets/" in tail[at], tail
    assert "(does the bucket exist?)" in tail[at] and out.count("does the bucket exist?") == 1, out[-3000:]
    assert tail[at + 1].startswith("(full traceback: ")
    with open(tail[at + 1].removeprefix("(full traceback: ").rstrip(")")) as f:
        assert "write_shard_row" in f.read()  # the file has the whole story, Ray's remote frames included
