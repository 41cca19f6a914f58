"""Schema of conf/preprocess/: clips -> Maskiges, embeddings, shards, pairs."""
from __future__ import annotations

from dataclasses import dataclass, field

from infra.schema.enrich import EmbedConfig, MaskigeConfig, PairsConfig
from infra.schema.shards import ShardsConfig


@dataclass
class PreprocessConfig:
    # Data set versions are written to {output}/{name}/{version}/, version = hash of the
    # source listing and of every setting that changes the bytes of a shard.
    output: str = "outputs/datasets"
    name: str = "synthavs"
    maskige: MaskigeConfig = field(default_factory=MaskigeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    # Ray Data parallelism
    decode_concurrency: int | None = None  # None: Ray decides
    maskige_actors: int = 1  # one model per actor
    embed_actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0

    def __post_init__(self) -> None:
        for key in ("maskige_actors", "embed_actors"):
            if getattr(self, key) < 1:
                raise ValueError(f"preprocess.{key} must be >= 1, got {getattr(self, key)}")
        if self.decode_concurrency is not None and self.decode_concurrency < 1:
            raise ValueError(f"preprocess.decode_concurrency must be >= 1 or null, got {self.decode_concurrency}")
