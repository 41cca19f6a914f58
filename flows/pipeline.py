"""The main job, the whole road on one config: source -> shards -> trained model -> report.

    python -m flows.pipeline                                    # the embedded default (`make run`)
    python -m flows.pipeline data.synth.num_train_clips=3000 train.epochs=3
    python -m flows.pipeline data=synth_easy model=tpavi_tiny train.run_name=tpavi-easy

The config is ``conf/pipeline.yaml``: ``conf/config.yaml`` (SynthAVS ``hard``, local Ray, local
storage) with ``avsac_tiny`` started from the project's pretrained encoders (``weights/synthavs-tiny``)
and the SynthAVS CPU recipe (``conf/train/synth_cpu.yaml``, lr 1e-3) at sizes that run the whole road
in about 9.5 minutes on 2 cores. Three stages, each a Prefect task run
of this flow:

1. data: SynthAVS generated (when the source is ``synth``), decoded, enriched and written as
   a versioned shard data set; finished shards of an earlier run are reused;
2. train: Ray Train on that data set. The run's name follows from the config and the data set
   version (:func:`tasks.train.run.config_run_name`) unless ``train.run_name`` is given, so a
   rerun of the same config resumes the run, or reuses it when it has finished;
3. evaluate: the last checkpoint on ``train.test_split`` with the AVSBench protocol; the report
   (metrics.json, per_video.csv, curves.png, overlays.png) goes under ``{output}/evaluations/``.

The run ends by printing where the data set, checkpoint, report and plots are; the summary is
also written to ``{output}/runs/<time>/summary.json``.
"""
from __future__ import annotations

import json
import time
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import Overrides, avs_flow, main
from flows.preprocess import make_dataset
from flows.train_combo import train_and_report
from infra.config import compose, redact_overrides
from infra.storage import Storage, absolute, join
from tasks.train.run import config_run_name

CONFIG_NAME = "pipeline"  # conf/pipeline.yaml


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@avs_flow(name="pipeline")
def pipeline(overrides: Overrides = None) -> dict:
    """Preprocess, train, evaluate on ``conf/pipeline.yaml`` with the overrides; write the summary.

    Args:
        overrides: Hydra override strings over ``conf/pipeline.yaml``, as on the command line.
            Never credentials: pass them through the environment, storage.secret_block=<Secret
            block name>, or the work pool's job variables (see infra/schema/storage.py).
    """
    log = get_run_logger()
    overrides = list(overrides or [])
    cfg = compose(overrides, config_name=CONFIG_NAME)  # fail on a bad config before any work starts
    storage = Storage(cfg.storage)
    start = time.perf_counter()

    log.info("[1/3] data: %s source %s -> shards under %s", cfg.data.source, cfg.data.uri, cfg.preprocess.output)
    prep = make_dataset(cfg, storage)
    t_data = time.perf_counter() - start
    made = ("found complete, reused" if prep["up_to_date"]
            else f"{prep['shards_built']} built, {prep['shards_reused']} reused")
    log.info("[1/3] data: %d clips in %d shards (%s), %d rejected, in %s",
             prep["samples"], prep["shards"], made, prep["rejects"], _duration(t_data))

    run_name = cfg.train.run_name or config_run_name(cfg, prep["version"], prefix="pipeline-")
    log.info("[2/3] train: %s, %d epoch(s), run %s", cfg.model.registry_name, cfg.train.epochs, run_name)
    trained = train_and_report(cfg, storage, prep["dataset_url"], run_name=run_name)
    t_train = time.perf_counter() - start - t_data
    report = trained["report"]
    if report:
        log.info("[3/3] evaluate: test mIoU %.4f, F-score %.4f (AVSBench protocol)", report["miou"], report["fscore"])

    summary: dict[str, Any] = {
        "overrides": redact_overrides(overrides),
        "preprocess": prep,
        "train": trained["train"],
        "report": report,
        "seconds": {"data": round(t_data, 1), "train_and_evaluate": round(t_train, 1),
                    "total": round(time.perf_counter() - start, 1)},
    }
    url = absolute(join(cfg.output, "runs", time.strftime("%Y%m%d-%H%M%S"), "summary.json"))
    storage.write_text(url, json.dumps(summary, indent=2))
    summary["summary_url"] = url
    rows = [("clips", prep["samples"]), ("rejects", prep["rejects"]), ("data set", f"`{prep['dataset_url']}`"),
            ("checkpoint", f"`{trained['train']['checkpoint']}`")]
    if report:
        rows += [("test mIoU", f"{report['miou']:.4f}"), ("test F-score", f"{report['fscore']:.4f}"),
                 ("report", f"`{report['dir']}`")]
    create_markdown_artifact(
        markdown="## Pipeline\n\n| what | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n",
        key="pipeline-summary", description="data set, checkpoint and test metrics of this run")
    log.info("summary written to %s", url)
    return summary


def where(summary: dict) -> str:
    """The lines ``python -m flows.pipeline`` ends with: what it made and where it is."""
    prep, train, report = summary["preprocess"], summary["train"], summary["report"]
    m = train.get("metrics", {})
    lines = [f"Pipeline done in {_duration(summary['seconds']['total'])}.",
             f"  data set    {prep['dataset_url']}  ({prep['samples']} clips, {prep['rejects']} rejected)",
             f"  checkpoint  {train['checkpoint']}  ({train['epochs']} epoch(s)"
             + (f", val mIoU {m['val_miou']:.4f}" if "val_miou" in m else "") + ")"]
    if report:
        paths = report["paths"]
        lines += [f"  report      {report['dir']}  (test mIoU {report['miou']:.4f}, F-score {report['fscore']:.4f})",
                  f"    metrics   {paths['metrics']}",
                  f"    per video {paths['per_video']}",
                  f"    curves    {paths['curves']}",
                  f"    overlays  {paths['overlays']}"]
    lines.append(f"  summary     {summary['summary_url']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(pipeline, show=where)
