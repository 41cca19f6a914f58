"""Schema of conf/model/: which model to build (a name in models.build.model_registry) and its switches."""
from __future__ import annotations

from dataclasses import dataclass

MODELS = ("combo", "avsac", "tpavi")
SIZES = ("tiny", "r50", "pvt_b5")
FUSIONS = ("bilateral", "audio_to_visual")


@dataclass
class ModelConfig:
    name: str = "combo"
    size: str = "tiny"
    # Ablation switches (COMBO): the Maskige branch, fusion direction, audio at all.
    use_maskige: bool = True
    fusion: str = "bilateral"
    use_audio: bool = True
    freeze_audio: bool = False
    # Weights: local path or s3:// URI; None = random initialisation.
    backbone_checkpoint: str | None = None
    vggish_checkpoint: str | None = None
    channels_last: bool = True  # NHWC convs: faster on CPU and on tensor cores

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"model.name must be one of {MODELS}, got {self.name!r}")
        if self.size not in SIZES:
            raise ValueError(f"model.size must be one of {SIZES}, got {self.size!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")

    @property
    def registry_name(self) -> str:
        return f"{self.name}_{self.size}"
