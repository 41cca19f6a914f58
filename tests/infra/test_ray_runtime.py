"""init_ray: where a run's Ray comes from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json
import ray
from infra.ray_runtime import init_ray
from infra.schema.cluster import ClusterConfig
resources = init_ray(ClusterConfig(num_cpus=1))
print(json.dumps({"cpus": resources["CPU"], "gcs": ray.get_runtime_context().gcs_address}))
ray.shutdown()
"""


def test_no_address_starts_a_ray_of_its_own_beside_a_running_one():
    """With a Ray head running on the machine (as ``ray start --head`` leaves one, its address in
    Ray's temp folder), a run with no address starts its own Ray instead of joining that one:
    Ray given no address joins it, and fails outright when num_cpus is set."""
    from ray.cluster_utils import Cluster

    running = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        child = json.loads(done.stdout.strip().splitlines()[-1])
        assert child["cpus"] == 1.0
        assert child["gcs"] != running.gcs_address
    finally:
        running.shutdown()
