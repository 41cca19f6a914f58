"""Flow: a checkpoint + a shard data set -> AVSBench metrics and a report (metrics.json,
per_video.csv, curves.png, overlays.png).

    python -m flows.evaluate evaluate.checkpoint=s3://avs/runs/r1/checkpoint_000010 evaluate.split=test
    python -m flows.evaluate evaluate.checkpoint=outputs/runs/r1/checkpoint_000002 \\
        evaluate.dataset=outputs/datasets/synthavs/v-0123456789ab evaluate.output=outputs/eval-r1
"""
from __future__ import annotations

import posixpath

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from infra.config import ConfigError, compose
from infra.storage import Storage, absolute, join
from tasks.evaluate.report import evaluate_checkpoint
from tasks.checkpoint import read_meta

score_checkpoint = task(evaluate_checkpoint, name="evaluate-checkpoint", cache_policy=NO_CACHE)


def report_folder(output: str, checkpoint: str, split: str) -> str:
    """{output}/evaluations/<run>/<checkpoint>/<split>: run is the checkpoint's parent folder
    (Ray Train keeps a run's checkpoints in one folder)."""
    path = checkpoint.split("://", 1)[-1].rstrip("/")
    name, run = posixpath.basename(path), posixpath.basename(posixpath.dirname(path))
    return join(output, "evaluations", *([run] if run else []), name or "checkpoint", split)


@avs_flow(name="evaluate")
def evaluate(overrides: Overrides = None, checkpoint: str | None = None, dataset: str | None = None,
             split: str | None = None) -> dict:
    """Score a checkpoint on one split of a shard data set with the AVSBench protocol; write the report.

    Args:
        overrides: Hydra override strings, as on the command line (``evaluate.*`` keys:
            checkpoint, dataset, split, output, model, batch_size, device, image_size,
            model_size, num_overlays). Never credentials (see infra/schema/storage.py).
        checkpoint: the checkpoint folder (local or s3://); wins over evaluate.checkpoint.
        dataset: the shard data set; wins over evaluate.dataset. Neither: the data set the
            checkpoint was trained on (its meta.json).
        split: wins over evaluate.split (default test).
    """
    log = get_run_logger()
    cfg = compose(overrides or [])
    ev = cfg.evaluate
    storage = Storage(cfg.storage)
    checkpoint = checkpoint or ev.checkpoint
    if not checkpoint:
        raise ConfigError("no checkpoint to evaluate: give evaluate.checkpoint=<checkpoint folder, local or s3://>")
    checkpoint = absolute(checkpoint)
    split = split or ev.split
    dataset = dataset or ev.dataset
    if not dataset:
        dataset = read_meta(checkpoint, storage).dataset_url
        if not dataset:
            raise ConfigError(f"{checkpoint} records no data set: give evaluate.dataset=<shard data set>")
        log.info("no data set given: scoring on the one %s was trained on, %s", checkpoint, dataset)
    out_dir = absolute(ev.output or report_folder(absolute(cfg.output), checkpoint, split))
    result = score_checkpoint(checkpoint, absolute(dataset), storage, out_dir, split=split, device=ev.device,
                              batch_size=ev.batch_size, expect_model=ev.model, num_overlays=ev.num_overlays,
                              image_size=ev.image_size, model_size=ev.model_size)
    for name, url in result["paths"].items():
        log.info("%s: %s", name, url)
    rows = [("mIoU (AVSBench)", result["miou"]), ("F-score (AVSBench)", result["fscore"])]
    rows += [(k, v) for k, v in sorted(result["variants"].items())]
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in rows)
    create_markdown_artifact(
        markdown=(f"## {result['model']} (epoch {result['checkpoint_epoch']}) on {result['split']}\n\n"
                  f"{result['setting']}, {result['num_videos']} videos, {result['num_frames']} frames, data set "
                  f"{result['dataset_version']}\n\n| metric | value |\n|---|---|\n{table}\n\n"
                  f"Report: `{out_dir}`\n"),
        key="evaluation", description="AVSBench metrics of a checkpoint")
    return result


if __name__ == "__main__":
    main(evaluate)
