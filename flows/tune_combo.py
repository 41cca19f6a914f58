"""Flow: Ray Tune over COMBO's loss weights (λada, class, mask, dice) and the learning rate, ASHA
early stopping on val mIoU, each trial a Ray Train run; writes the trials' table, the best config
as Hydra overrides and the best checkpoint's URI.

    python -m flows.tune_combo train.dataset=outputs/datasets/synthavs/v-0123456789ab tune.num_samples=8
    python -m flows.tune_combo 'tune.lambda_ada=[1,30]' tune.lr=null tune.max_epochs=8 tune.name=lambda-sweep
    python -m flows.train_combo $(cat outputs/tune/lambda-sweep/best_overrides.txt) train.epochs=30

``train.dataset`` null: the preprocess flow runs first (a subflow), as in flows.train_combo. The
search space, ASHA and the trials' size are ``tune.*`` (conf/tune/asha.yaml); every other key
(model, train.*) is the trials' training config. Output: ``{tune.storage_path or output/tune}/
{tune.name}/``: ``results.csv``, ``best_overrides.txt``, ``best_checkpoint.txt``, and each trial's
Ray Train run under ``train/{trial id}/`` (tasks/tune/search.py).
"""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from flows.preprocess import dataset_for
from infra.config import compose
from infra.schema.tune import SEARCH_KEYS
from infra.storage import Storage
from tasks.tune.search import run_search

search = task(run_search, name="tune", cache_policy=NO_CACHE)


@avs_flow(name="tune_combo")
def tune_combo(overrides: Overrides = None) -> dict:
    """Compose the config, find or make the data set, run the Ray Tune search, report the best trial.

    Args:
        overrides: Hydra override strings, as on the command line. Never credentials: pass
            them through the environment, storage.secret_block=<Secret block name>, or the
            work pool's job variables (see infra/schema/storage.py).
    """
    log = get_run_logger()
    overrides = list(overrides or [])
    cfg = compose(overrides)  # fail on a bad config before any work starts
    storage = Storage(cfg.storage)
    dataset = dataset_for(cfg, overrides)
    result = search(cfg, storage, dataset, logger=log)
    keys = [k for k in SEARCH_KEYS if k in result.best]
    head = ["trial", "status", *keys, "epochs", result.metric]
    rows = "\n".join("| " + " | ".join([r["trial_id"], r["status"], *(f"{r[k]:.4g}" for k in keys), str(r["epochs"]),
                                        "" if r[result.metric] is None else f"{r[result.metric]:.4f}"]) + " |"
                     for r in result.trials)
    create_markdown_artifact(
        markdown=f"## Tune run {result.name}\n\nBest trial `{result.best['trial_id']}`: "
                 f"`{' '.join(result.best_overrides)}`\n\nCheckpoint: `{result.best_checkpoint}`\n\n"
                 f"Table: `{result.paths['results']}`\n\n| {' | '.join(head)} |\n|{'---|' * len(head)}\n{rows}\n",
        key="tune-summary", description="the trials, the best config as overrides, its checkpoint")
    return result.summary()


if __name__ == "__main__":
    main(tune_combo)
