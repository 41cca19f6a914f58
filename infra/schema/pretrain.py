"""Schema of conf/pretrain/: the project's own pretrained starting points (flows/pretrain.py).

The pretraining set is SynthAVS drawn with its own ``seed``, which no scored split uses (every
benchmark and ``make run`` score clips of ``data.synth.seed``, 0 by default; the flow refuses a
``pretrain.seed`` equal to the config's ``data.synth.seed``), in the look of ``data.synth`` (preset,
frame size, categories). Its clips are MS3-like (several sources switching on and off), so that a
second may hold several sounding categories (the audio encoder's labels are multi-label, as
AudioSet's). How the run trains (epochs, batch, learning rate, Ray Train workers, run name,
resume) is ``train`` (recipe ``conf/train/pretrain_cpu.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass

SETTINGS = ("s4", "ms3")


@dataclass
class PretrainConfig:
    seed: int = 20261207  # the pretraining set's SynthAVS seed: no benchmark or make run scores it
    setting: str = "ms3"  # the generator's setting for the pretraining clips (ms3: multi-label seconds)
    num_train_clips: int = 2000
    num_val_clips: int = 128  # held out: the card's category mIoU and audio mAP
    clips_per_chunk: int = 64  # clips per file of the pretraining set (one Ray task each)
    data_uri: str | None = None  # where the pretraining set is written, local or s3://; null = {output}/pretrain/data
    head_dim: int = 64  # width of the dense category head (dropped after pretraining)
    # Where the released weights (backbone.pt, vggish.pt, card.json) are copied as well, besides the run's
    # own folder: a local folder (weights/synthavs-tiny holds the ones shipped with the repository); null = none.
    release_dir: str | None = None

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"pretrain.setting must be one of {SETTINGS}, got {self.setting!r}")
        for key in ("num_train_clips", "num_val_clips", "clips_per_chunk", "head_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"pretrain.{key} must be >= 1, got {getattr(self, key)}")
