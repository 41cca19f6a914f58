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
    # Ray Data parallelism. Enrichment (Maskige + embedding) runs in an actor pool, one
    # mask generator and one embedder per actor; decoding and shard writing are tasks.
    enrich_actors: int | None = None  # None: one per GPU when there are GPUs, else one per CPU
    # Logical CPUs per actor and per task: an actor per core at 0.75 leaves room on every
    # node for the light decode and write tasks (1.0 would starve them and stall the run).
    actor_cpus: float = 0.75
    task_cpus: float = 0.25
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    # Per-clip deadline for decoding (download included): a clip with no result after this
    # many seconds is rejected ("deadline exceeded") and its decoding process replaced, so no
    # clip can stall a worker. null: decode in the worker itself, with no deadline.
    decode_deadline_s: float | None = 120.0

    def __post_init__(self) -> None:
        if self.enrich_actors is not None and self.enrich_actors < 1:
            raise ValueError(f"preprocess.enrich_actors must be >= 1 or null, got {self.enrich_actors}")
        if self.decode_deadline_s is not None and not self.decode_deadline_s > 0:
            raise ValueError(f"preprocess.decode_deadline_s must be > 0 seconds or null, got {self.decode_deadline_s}")
        for key in ("actor_cpus", "task_cpus"):
            if getattr(self, key) <= 0:
                raise ValueError(f"preprocess.{key} must be > 0, got {getattr(self, key)}")
