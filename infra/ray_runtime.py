"""Ray start-up: a local Ray by default, the same code on a cluster."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

import ray

from infra.console import WithoutTracebacks
from infra.schema.cluster import ClusterConfig

log = logging.getLogger(__name__)


def init_ray(cfg: ClusterConfig | None = None) -> dict:
    """Connect to (or start) Ray as cfg says; a no-op when Ray is already up. Returns cluster resources."""
    cfg = cfg or ClusterConfig()
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict = {"namespace": cfg.namespace, "log_to_driver": not cfg.quiet}
        if cfg.quiet:
            _quiet_ray()
            kwargs["logging_level"] = logging.WARNING
        if address:
            kwargs["address"] = address
        else:
            # "local", not None: Ray given no address joins a Ray it finds running on this machine
            # (another flow run's, or one started by hand), which ends when its owner does.
            kwargs.update(
                address="local",
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                include_dashboard=cfg.include_dashboard,
                object_store_memory=cfg.object_store_memory_mb * 2**20 if cfg.object_store_memory_mb else None,
            )
        # Workers import our packages; on a local Ray they share this interpreter's
        # environment. On a cluster, the image carries the project (see infra/docker).
        if cfg.quiet:
            with _stderr_to_file() as path:
                try:
                    ray.init(**kwargs)
                except BaseException:
                    log.error("Ray did not start; what its processes printed is in %s", path)
                    raise
        else:
            ray.init(**kwargs)
        log.info("Ray %s at %s: %s", ray.__version__, address or "local", ray.cluster_resources())
    return ray.cluster_resources()


class _DropNotices(logging.Filter):
    """Ray's advice to people who drive Ray by hand, noise on every run of ours: that a local Ray
    enables token authentication by default, that Ray Data's progress bars are off (we show our
    own), and Ray Data's lines that announce a traceback. Warnings of a token that is missing or
    wrong, and every other warning, are kept."""

    NOTICES = ("Set RAY_AUTH_MODE=disabled to opt out", "Progress bars disabled",
               # Ray Data's announcements of a traceback (the console shows none; the run ends with the cause)
               "Exception occurred in Ray Data or Ray Core internal code", "Exception occurred in user code",
               "Full stack trace:")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOTICES)


def _quiet_ray() -> None:
    """See ClusterConfig.quiet. Before ray.init: the C++ backend reads its level at start."""
    import ray.data  # noqa: F401  (sets up Ray Data's loggers: its file handler and the console)

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ != "SessionFileHandler"]
    for target in [notice, *console]:
        if not any(isinstance(f, _DropNotices) for f in target.filters):
            target.addFilter(_DropNotices())
    for handler in console:
        handler.setLevel(logging.WARNING)
        if not isinstance(handler.formatter, WithoutTracebacks):  # Ray Data's session log keeps them
            handler.setFormatter(WithoutTracebacks(handler.formatter))


@contextlib.contextmanager
def _stderr_to_file() -> Iterator[str]:
    """While Ray starts: file descriptor 2 goes to a file, so the C++ lines of Ray's start-up
    (this process's own, and whatever the Ray processes it starts print there for as long as they
    live) land in that file, not on the console. Python's own stderr is flushed first and is
    back on the console when this returns."""
    path = os.path.join(tempfile.gettempdir(), f"avs-ray-start-{os.getpid()}.log")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
