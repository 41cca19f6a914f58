"""Flow: the project's own pretrained starting points for the tiny models' encoders.

    python -m flows.pretrain                                             # the default: conf/pretrain.yaml
    python -m flows.pretrain pretrain.release_dir=weights/synthavs-tiny  # remake the weights in the repository
    python -m flows.pretrain storage=s3 output=s3://bucket/runs train.num_workers=4

The papers start every encoder pretrained (ImageNet / ADE20K backbones, VGGish on AudioSet); none can
be downloaded here, so this flow makes ours the same way, on SynthAVS drawn with a seed of its own
(``pretrain.seed``, which no benchmark or ``make run`` scores). Three stages, each a Prefect task run:

1. data: the pretraining set (``tasks.pretrain.data``): frames, the category of every pixel, the
   log-mel and the categories heard in each second, as chunks written by Ray tasks; found again
   when complete;
2. train: ``models.pretrain.EncoderPretraining`` (the TinyCNN with a dense category head, the tiny
   VGGish with a multi-label tagger) on Ray Train, with the run folder, resume, checkpoints and
   per-epoch lines of every training flow (``tasks.pretrain.run``; the run's name follows from the
   config and the set, so a rerun resumes or reuses it); recipe ``conf/train/pretrain_cpu.yaml``;
3. release: ``backbone.pt`` and ``vggish.pt`` (the encoders alone; VGGish's last layer scaled so that its
   embeddings have a root mean square of 1 on the held-out seconds, ``tasks.pretrain.run.embedding_scale``) with ``card.json`` / ``card.md``
   (data, seed, steps, held-out category mIoU and audio mAP, each file's sha256) in the run's
   ``release/`` folder, and in ``pretrain.release_dir`` when set.

Every tiny model loads them with ``model.backbone_weights=<dir>/backbone.pt
model.vggish_weights=<dir>/vggish.pt`` (local or s3://).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from infra.config import compose, redact_overrides
from infra.storage import Storage, absolute, join
from tasks.pretrain.data import ensure_pretrain_set, read_chunks
from tasks.pretrain.run import MODEL, release, run_pretraining

CONFIG_NAME = "pretrain"  # conf/pretrain.yaml

make_set = task(ensure_pretrain_set, name="pretraining-set", cache_policy=NO_CACHE)
train = task(run_pretraining, name="pretrain", cache_policy=NO_CACHE)
write_release = task(release, name="release", cache_policy=NO_CACHE)


def run_name_for(cfg: Any, set_url: str) -> str:
    """``encoders_tiny-<set>-<hash of what is trained>``: the same config on the same set gives the
    same name, so a rerun resumes or reuses the run (more epochs continue it)."""
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg.train).items()
                 if k not in ("run_name", "storage_path", "resume", "epochs", "max_failures", "num_to_keep")}
    what = {"train": train_cfg, "head_dim": cfg.pretrain.head_dim, "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{MODEL}-{set_url.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


@avs_flow(name="pretrain")
def pretrain(overrides: Overrides = None) -> dict:
    """Make the pretraining set, pretrain the tiny encoders on Ray Train, release their weights.

    Args:
        overrides: Hydra override strings over ``conf/pretrain.yaml``, as on the command line.
            Never credentials: pass them through the environment, storage.secret_block=<Secret
            block name>, or the work pool's job variables (see infra/schema/storage.py).
    """
    log = get_run_logger()
    overrides = list(overrides or [])
    cfg = compose(overrides, config_name=CONFIG_NAME)  # fail on a bad config before any work starts
    storage = Storage(cfg.storage)
    set_url, manifest, generated = make_set(cfg, storage)
    log.info("pretraining set %s: %d train / %d held-out clips (%s)", set_url, manifest["counts"]["train"],
             manifest["counts"]["val"], "generated" if generated else "found complete")
    run_name = cfg.train.run_name or run_name_for(cfg, set_url)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_name=run_name))
    result = train(cfg, storage, set_url, logger=log)
    shown = redact_overrides(overrides)
    out_dirs = [join(result.run_dir, "release")]
    if cfg.pretrain.release_dir:
        out_dirs.append(absolute(cfg.pretrain.release_dir))
    held_out = read_chunks(set_url, manifest["chunks"]["val"], storage).logmel
    held_out = held_out.reshape(-1, *held_out.shape[2:])  # every held-out second: VGGish's scale is set on them
    card = None
    for out_dir in out_dirs:
        card = write_release(cfg, storage, result, out_dir, manifest, shown, held_out)
    held = card["held_out"]
    log.info("released to %s: category mIoU %.4f, audio mAP %.4f on %d held-out clips", ", ".join(out_dirs),
             held["category_miou"], held["audio_map"], manifest["counts"]["val"])
    return {"pretraining_set": set_url, "run": result.summary(), "release": out_dirs, "card": card}


def where(result: dict) -> str:
    """The lines ``python -m flows.pretrain`` ends with."""
    held, files = result["card"]["held_out"], result["card"]["files"]
    lines = ["Pretraining done.",
             f"  pretraining set  {result['pretraining_set']}",
             f"  checkpoint       {result['run']['checkpoint']}",
             f"  held out         category mIoU {held['category_miou']:.4f}, audio mAP {held['audio_map']:.4f}"]
    sizes = ", ".join(f"{name} {f['bytes'] // 1024} KB" for name, f in files.items())
    for out_dir in result["release"]:
        lines.append(f"  weights          {out_dir}  ({sizes})")
    first = result["release"][-1]
    lines.append(f"  use them with    model.backbone_weights={first}/backbone.pt model.vggish_weights={first}/vggish.pt")
    return "\n".join(lines)


if __name__ == "__main__":
    main(pretrain, show=where)
