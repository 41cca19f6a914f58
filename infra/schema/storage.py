"""Schema of conf/storage/: where data lives and how to reach it."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class StorageConfig:
    # S3-compatible endpoint (MinIO, a test server, ...); None = AWS, or AWS_ENDPOINT_URL if set.
    endpoint_url: str | None = None
    region: str | None = None
    # Credentials: prefer the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); values
    # set here win. They are never printed.
    key: str | None = None
    secret: str | None = None
    anon: bool = False
    retries: int = 3
    retry_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ValueError(f"storage.retries must be >= 1, got {self.retries}")
        if self.retry_backoff_s < 0:
            raise ValueError(f"storage.retry_backoff_s must be >= 0, got {self.retry_backoff_s}")

    def __repr__(self) -> str:
        return f"StorageConfig(endpoint_url={self.endpoint_url!r}, region={self.region!r}, key=***, secret=***)"

    def resolved_key(self) -> str | None:
        return self.key or os.environ.get("AWS_ACCESS_KEY_ID")

    def resolved_secret(self) -> str | None:
        return self.secret or os.environ.get("AWS_SECRET_ACCESS_KEY")

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
