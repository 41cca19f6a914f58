"""Flow: a source (AVSBench folder, videos, or SynthAVS) -> versioned WebDataset shards + pairs + manifest.

    python -m flows.preprocess data=videos data.uri=s3://bucket/videos preprocess.output=s3://bucket/datasets
"""
from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from infra.config import compose
from infra.storage import Storage
from tasks.decode.registry import source
from tasks.preprocess import run_preprocess

build_dataset = task(run_preprocess, name="build-shards", cache_policy=NO_CACHE)


@avs_flow(name="preprocess")
def preprocess(overrides: Overrides = None) -> dict:
    """Compose the config from overrides, make sure the source exists, build (or find) the data set.

    Args:
        overrides: Hydra override strings, as on the command line. Never credentials: pass
            them through the environment, storage.secret_block=<Secret block name>, or the
            work pool's job variables (see infra/schema/storage.py).
    """
    cfg = compose(overrides or [])
    return make_dataset(cfg, Storage(cfg.storage))


def make_dataset(cfg, storage: Storage) -> dict:
    """The preprocess flow's work on a composed config (also the pipeline's first stage): make
    sure the source exists (SynthAVS is generated when missing), build or find the data set,
    log the rejects. Returns the run's summary (``dataset_url``, counts, rates)."""
    log = get_run_logger()
    root = cfg.data.uri
    src = source(cfg.data.source)  # an unknown data.source fails here, before any work
    if src.prepare is not None:  # a source made before it is read (SynthAVS)
        root, _, made = task(src.prepare, name=src.prepare_name or f"prepare-{src.name}", cache_policy=NO_CACHE)(cfg, storage)
        log.info("%s %s at %s", src.name, "made" if made else "reused", root)
    result = build_dataset(cfg, storage, source_root=root)
    summary = result.summary()
    log.info("preprocess: %s", json.dumps(summary))
    for r in result.manifest.rejects[:20]:
        log.warning("rejected %s at %s: %s", r["clip_id"], r["stage"], r["reason"])
    if len(result.manifest.rejects) > 20:
        log.warning("... and %d more rejects: see %s/manifest.json", len(result.manifest.rejects) - 20, result.dataset_url)
    return summary


def dataset_for(cfg, overrides: list[str]) -> str:
    """``train.dataset`` when given, else the data set this config's source makes (or finds,
    when it is complete already) through the preprocess subflow."""
    if cfg.train.dataset is not None:
        return cfg.train.dataset
    dataset = preprocess(overrides)["dataset_url"]
    get_run_logger().info("train.dataset is null: using %s, made or found by preprocess", dataset)
    return dataset


if __name__ == "__main__":
    main(preprocess)
