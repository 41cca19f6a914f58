"""Flow: train a model of the registry (COMBO, its ablations, AVSAC, TPAVI) on a shard data set
with Ray Train, then evaluate its last checkpoint on the test split and write the report.

    python -m flows.train_combo train.dataset=s3://bucket/datasets/synthavs/v-1234 train.num_workers=4
    python -m flows.train_combo model=tpavi_r50 train=gpu train.run_name=tpavi-1   # again: resumes
    python -m flows.train_combo data=synth_easy                                     # preprocess first

``train.dataset`` null: the preprocess flow runs first (a subflow, as in flows.pipeline) on the
configured source, and training uses the data set it made or found. Checkpoints go to
``{train.storage_path or output/train}/{train.run_name}/``; the report (tasks.evaluate.report, with
the ``evaluate.*`` settings, on ``train.test_split``) to ``evaluate.output`` or, as the evaluate
flow puts it, ``{output}/evaluations/{run name}/{checkpoint}/{split}/``. ``train.evaluate=false``
skips the report (the last epoch's test metrics are still in the run's metrics).
"""
from __future__ import annotations

import dataclasses

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from flows.preprocess import dataset_for
from infra.config import compose
from infra.storage import Storage, absolute
from tasks.train.run import run_training

train = task(run_training, name="train", cache_policy=NO_CACHE)


@avs_flow(name="train_combo")
def train_combo(overrides: Overrides = None) -> dict:
    """Compose the config, find or make the data set, train on Ray Train, evaluate, report.

    Args:
        overrides: Hydra override strings, as on the command line. Never credentials: pass
            them through the environment, storage.secret_block=<Secret block name>, or the
            work pool's job variables (see infra/schema/storage.py).
    """
    overrides = list(overrides or [])
    cfg = compose(overrides)  # fail on a bad config before any work starts
    storage = Storage(cfg.storage)
    return train_and_report(cfg, storage, dataset_for(cfg, overrides))


def train_and_report(cfg, storage: Storage, dataset: str, run_name: str | None = None, trainer=None,
                     title: str = "Training run") -> dict:
    """Train on ``dataset`` (``run_name`` wins over ``train.run_name``), then score the last
    checkpoint on ``train.test_split`` and write the report: the flow's work on a composed
    config (also the pipeline's training and evaluation stages). trainer: the training task
    (default this flow's; flows.train_moca passes MoCA's)."""
    log = get_run_logger()
    if run_name is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_name=run_name))
    result = (trainer or train)(cfg, storage, dataset, logger=log)
    summary = {"train": result.summary(), "report": None}
    if cfg.train.evaluate and result.checkpoint_uri:
        from flows.evaluate import report_folder, score_checkpoint  # the evaluate step's own task and layout

        split = cfg.train.test_split or cfg.evaluate.split
        ev = cfg.evaluate
        out_dir = absolute(ev.output or report_folder(absolute(cfg.output), result.checkpoint_uri, split))
        log.info("evaluating %s on split %r", result.checkpoint_uri, split)
        metrics = score_checkpoint(result.checkpoint_uri, result.dataset_url, storage, out_dir, split=split,
                                   device=ev.device, batch_size=ev.batch_size, expect_model=result.model,
                                   num_overlays=ev.num_overlays, image_size=ev.image_size, model_size=ev.model_size)
        summary["report"] = {"dir": out_dir, "miou": metrics["miou"], "fscore": metrics["fscore"],
                             "paths": metrics["paths"]}
        log.info("report written to %s (test mIoU %.4f, F %.4f)", out_dir, metrics["miou"], metrics["fscore"])
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary["train"]["metrics"].items())
    create_markdown_artifact(
        markdown=f"## {title} {result.run_name}\n\nCheckpoint: `{result.checkpoint_uri}`\n\n"
                 f"Report: `{summary['report']['dir'] if summary['report'] else 'none'}`\n\n"
                 f"| metric | value |\n|---|---|\n{rows}\n",
        key="train-summary", description="the last epoch's metrics, the checkpoint and the report")
    return summary


if __name__ == "__main__":
    main(train_combo)
