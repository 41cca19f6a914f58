"""What the benchmarks share: running a flow as a user would, and reading a run's last checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log_path: Path, what: str) -> float:
    """Run a flow as a user would; its output goes to log_path. Returns wall seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit(f"{what} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    return seconds


def last_meta(run_dir: Path) -> dict:
    """meta.json of the run's last checkpoint, or {} when it has none."""
    metas = sorted(run_dir.glob("checkpoint_epoch*/meta.json"))
    return json.loads(metas[-1].read_text()) if metas else {}


# The project's pretrained tiny encoders (flows/pretrain.py; weights/synthavs-tiny/card.md says how they
# were made). --init pretrained starts every tiny model from them, as the papers start from pretrained
# encoders; --init scratch from random weights.
WEIGHTS = REPO / "weights" / "synthavs-tiny"
INITS = ("pretrained", "scratch")


def _is_scratch(init: str) -> bool:
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return init == "scratch"


# The recipe from pretrained starts (as conf/pipeline.yaml, which says why): lr 1e-3 with the backbone at
# the full lr. Measured on make run's set (512 clips, 640 steps): COMBO-tiny 0.254 with COMBO's lr 1e-4 and
# backbone x0.1, 0.321 at lr 1e-3, 0.344 with the backbone at x1.
PRETRAINED_RECIPE = ("train.lr=1e-3", "train.backbone_multiplier=1")


def init_overrides(init: str, supervised: bool = True) -> list[str]:
    """The model overrides of an init: the released backbone and VGGish (a pretrained VGGish is kept
    frozen, the models' default when vggish_weights are given), and for a supervised model the
    pretrained recipe (``PRETRAINED_RECIPE``); for scratch, none."""
    if _is_scratch(init):
        return []
    return [f"model.backbone_weights={WEIGHTS / 'backbone.pt'}", f"model.vggish_weights={WEIGHTS / 'vggish.pt'}",
            *(PRETRAINED_RECIPE if supervised else ())]


def init_data_overrides(init: str, size: int) -> list[str]:
    """The preprocess overrides of an init: with pretrained encoders, the frames whose pairs MoCA
    learns from are embedded by the same pretrained TinyCNN (embed.source=tiny_backbone) rather
    than by classical features."""
    if _is_scratch(init):
        return []
    return ["preprocess.embed.source=tiny_backbone", f"preprocess.embed.checkpoint={WEIGHTS / 'backbone.pt'}",
            f"preprocess.embed.image_size={size}"]
