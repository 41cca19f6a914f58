"""Fixtures of the tests that run flows as a user does: Prefect's home, Ray's session folder,
a real local Prefect server."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from log_lines import LogLines
from prefect_env import service_errors, user_env


@pytest.fixture()
def prefect_home(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    return home


@pytest.fixture()
def ray_tmp():
    # Ray's session folder (its logs) for one run; short, as Ray's socket paths must be.
    d = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The server's scheduler loops every 2 s instead of 60 (Prefect's own settings): a schedule turned on
# gets its runs within seconds, and a failing scheduler shows in the log of every test's server.
SCHEDULER_LOOPS = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                   "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2"}


@pytest.fixture()
def prefect_server(prefect_home, tmp_path):
    """A real local Prefect server (its database in prefect_home); yields (api_url, log path).
    The test fails if the server's log shows an error of the server or its loop services."""
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], cwd=tmp_path, env=user_env(prefect_home, **SCHEDULER_LOOPS), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, log
        errors = service_errors(log.read_text())  # read before the server stops: shutting down is not a test
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if errors:
        pytest.fail(f"the Prefect server's log ({log}) shows {len(errors)} error(s) of its services; the first:\n"
                    f"{errors[0]}", pytrace=False)


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh bucket on the test S3 server; yields its name."""
    import boto3

    bucket = f"flows-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="setup", aws_secret_access_key="setup",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture()
def flow_log():
    """The messages of the flow runs' log records (Prefect's flow-run logger), in order."""
    handler = LogLines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
