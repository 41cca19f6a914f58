"""Ray start-up: a local Ray by default, the same code on a cluster."""
from __future__ import annotations

import logging
import os

import ray

from infra.schema.cluster import ClusterConfig

log = logging.getLogger(__name__)


def init_ray(cfg: ClusterConfig | None = None) -> dict:
    """Connect to (or start) Ray as cfg says; a no-op when Ray is already up. Returns cluster resources."""
    cfg = cfg or ClusterConfig()
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict = {"namespace": cfg.namespace, "log_to_driver": True}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                include_dashboard=cfg.include_dashboard,
                object_store_memory=cfg.object_store_memory_mb * 2**20 if cfg.object_store_memory_mb else None,
            )
        # Workers import our packages; on a local Ray they share this interpreter's
        # environment. On a cluster, the image carries the project (see infra/docker).
        ray.init(**kwargs)
        log.info("Ray %s at %s: %s", ray.__version__, address or "local", ray.cluster_resources())
    return ray.cluster_resources()


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
