"""Schema of conf/cluster/: where Ray runs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClusterConfig:
    # None: start a local Ray of this run's own, even when another runs on this machine.
    # "auto": join the cluster this machine belongs to.
    # "ray://head:10001": Ray Client. RAY_ADDRESS in the environment wins over None.
    address: str | None = None
    num_cpus: int | None = None  # local Ray only; None = all cores
    num_gpus: int | None = None
    namespace: str = "avs"
    include_dashboard: bool = False
    object_store_memory_mb: int | None = None  # local Ray only
    # true: Ray's own messages stay in its session's log files (/tmp/ray/session_latest/logs): the
    # console shows this project's lines and bars. Worker output is not forwarded to the driver,
    # Ray's Python loggers (Ray Data's included) show warnings and errors only, the token-auth
    # notice of a local Ray is dropped, and Ray's C++ backend (RAY_BACKEND_LOG_LEVEL, unless set)
    # logs fatal errors only. false: everything as Ray prints it.
    quiet: bool = True

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"cluster.num_cpus must be >= 1 or null, got {self.num_cpus}")
