"""What the tests that run flows as a user does share: a user's shell for Prefect (its home in a
temporary folder), a subprocess runner, and readers of Prefect's database."""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # tests/support/ -> the repository
# The smallest SynthAVS road: 2 train, 1 val, 1 test clip of 64 px.
TINY = [
    "data.synth.frame_height=64", "data.synth.frame_width=64", "data.synth.num_train_clips=2",
    "data.synth.num_val_clips=1", "data.synth.num_test_clips=1", "preprocess.shards.samples_per_shard=2",
    "preprocess.pairs.k_pos=2", "preprocess.pairs.num_neg=2", "cluster.num_cpus=2", "storage.retry_backoff_s=0.05",
]


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no Prefect or AWS settings of the test runner, Prefect's home in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="DEBUG",  # every record Prefect makes goes to its database and the console
        PYTHONUNBUFFERED="1", RAY_ADDRESS="",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",  # a fresh home creates the database first (conftest)
        # botocore finds credentials only where the test puts them: no files, no instance metadata
        AWS_CONFIG_FILE=str(home / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def run_python(args: list[str], env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def flow_runs(db: Path) -> list[tuple[str, str]]:
    """(flow name, state type) of every flow run, by flow name."""
    return rows(db, "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON r.flow_id = f.id ORDER BY f.name")


# What a Prefect server's log shows when one of its loop services fails: Prefect's own "Unexpected
# error in <service>", or (3.8.8, services run by docket) an ERROR record with a traceback, as the
# scheduler logged on every loop under SQLAlchemy 2.1.
_SERVICE_ERROR = re.compile(r"Unexpected error in|Traceback \(most recent call last\)|\|\s*ERROR\s*\|")


def service_errors(server_log: str) -> list[str]:
    """The lines of a Prefect server's log that report an error of the server or its services,
    each with the two lines after it (the start of the traceback)."""
    lines = server_log.splitlines()
    return ["\n".join(lines[i:i + 3]) for i, line in enumerate(lines) if _SERVICE_ERROR.search(line)]
