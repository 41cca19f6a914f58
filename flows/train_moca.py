"""Flow: train MoCA (unsupervised AVS, ``models.moca``) on a shard data set's mined pairs with Ray
Train, then evaluate its last checkpoint on the test split (with the masks, as every model is)
and write the report.

    python -m flows.train_moca train.dataset=s3://bucket/datasets/synthavs/v-1234 model=moca_tiny
    python -m flows.train_moca model=moca_r50 model.backbone_weights=s3://w/r50.pth train=gpu train.run_name=moca-1
    python -m flows.train_moca model=moca_tiny model.name=moca_baseline_similarity   # the trainable baseline
    python -m flows.train_moca model=moca_tiny model.name=moca_baseline_saliency     # learns nothing: scored only
    python -m flows.train_moca data=synth_easy model=moca_tiny            # preprocess first

Training reads ``pairs.parquet`` beside the shards and the train split's frames and log-mel,
never a mask (tasks/train/moca.py). Everything else is train_combo's: ``train.dataset`` null
runs the preprocess flow first; checkpoints in ``{train.storage_path or output/train}/{train.run_name}/``
in tasks.checkpoint's format (flows.evaluate scores them as any other); the same
``train.run_name`` resumes; per-epoch lines in the flow's log; the report (tasks.evaluate.report)
on ``train.test_split`` to ``evaluate.output`` or ``{output}/evaluations/{run}/{checkpoint}/{split}/``;
``train.evaluate=false`` skips it. The saliency baseline learns nothing: its run is one checkpoint
of its frozen weights (epoch 0, written without Ray Train), evaluated as any other.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from flows.preprocess import dataset_for
from flows.train_combo import train_and_report
from infra.config import compose
from infra.storage import Storage
from tasks.train.moca import check_moca_model, run_moca_training

train = task(run_moca_training, name="train_moca", cache_policy=NO_CACHE)


@avs_flow(name="train_moca")
def train_moca(overrides: Overrides = None) -> dict:
    """Compose the config, find or make the data set, train MoCA on Ray Train, evaluate, report.

    Args:
        overrides: Hydra override strings, as on the command line (e.g. ``model=moca_tiny``).
            Never credentials: pass them through the environment, storage.secret_block=<Secret
            block name>, or the work pool's job variables (see infra/schema/storage.py).
    """
    overrides = list(overrides or [])
    cfg = compose(overrides)  # fail on a bad config before any work starts
    check_moca_model(cfg)  # a supervised model here fails now, before preprocess or Ray
    storage = Storage(cfg.storage)
    return train_and_report(cfg, storage, dataset_for(cfg, overrides), trainer=train, title="MoCA training run")


if __name__ == "__main__":
    main(train_moca)
