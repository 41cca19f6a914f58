"""Schema of conf/storage/: where data lives and how to reach it.

Credentials never come from the config tree (files or overrides): flow overrides are
recorded by Prefect as flow-run parameters, in clear. They reach a run in one of three ways:

1. The environment of the process that runs the flow: ``AWS_ACCESS_KEY_ID``,
   ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` (temporary credentials), and
   ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for MinIO and the like.
2. A Prefect Secret block, named (not given) by the override ``storage.secret_block=<name>``.
   The block's value is one JSON object::

       {"key": "<access key id>", "secret": "<secret access key>", "token": "<session token, optional>"}

   saved e.g. with ``Secret(value={"key": ..., "secret": ...}).save("avs-s3")``. The
   flow loads it at run time (``Secret.load(name).get()``, in :class:`infra.storage.Storage`),
   so only the block's name is ever a parameter. Its credentials win over the environment's.
3. For deployments, the work pool's job variables ``env``: the worker puts them in the
   flow-run process's environment (way 1). infra/prefect/avs-process-pool.json is a
   process pool's base job template whose ``env`` default is
   ``{"AWS_ACCESS_KEY_ID": "{{ prefect.blocks.secret.avs-s3.key }}",
   "AWS_SECRET_ACCESS_KEY": "{{ prefect.blocks.secret.avs-s3.secret }}"}``: references to
   the block of way 2, resolved by the worker at each run, so the server keeps only the
   references. Not in prefect.yaml: ``prefect deploy`` resolves templates there and stores
   the values with the deployment, in clear. See prefect.yaml.

The fields ``key``, ``secret`` and ``token`` remain for code that builds a
:class:`StorageConfig` itself (tests, a Storage travelling to Ray workers with its
credentials resolved); :func:`infra.config.compose` refuses them, from overrides and
from config files alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# The credential fields of StorageConfig: never settable through overrides or config files.
CREDENTIAL_FIELDS = ("key", "secret", "token")


@dataclass
class StorageConfig:
    # S3-compatible endpoint (MinIO, a test server, ...); None = AWS, or AWS_ENDPOINT_URL if set.
    endpoint_url: str | None = None
    region: str | None = None
    # Name of a Prefect Secret block holding {"key": ..., "secret": ..., "token": ...} (see the
    # module docstring). A name, not a secret: fine as an override.
    secret_block: str | None = None
    # Credentials for code only (see the module docstring); when key is None, all three come
    # from the environment. Never printed.
    key: str | None = None
    secret: str | None = None
    token: str | None = None
    anon: bool = False
    retries: int = 3
    retry_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ValueError(f"storage.retries must be >= 1, got {self.retries}")
        if self.retry_backoff_s < 0:
            raise ValueError(f"storage.retry_backoff_s must be >= 0, got {self.retry_backoff_s}")

    def __repr__(self) -> str:
        return (f"StorageConfig(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
                f"secret_block={self.secret_block!r}, key=***, secret=***, token=***)")

    # Credentials are one set: the config's when it has a key, else the environment's (a
    # session token from the environment never goes with a key from elsewhere).
    def resolved_key(self) -> str | None:
        return self.key or os.environ.get("AWS_ACCESS_KEY_ID")

    def resolved_secret(self) -> str | None:
        return self.secret if self.key else os.environ.get("AWS_SECRET_ACCESS_KEY")

    def resolved_token(self) -> str | None:
        return self.token if self.key else os.environ.get("AWS_SESSION_TOKEN")

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
