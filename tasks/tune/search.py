"""A tune run: Ray Tune samples the search space, each trial is one Ray Train run, ASHA stops the
weak trials early; what remains is a table of the trials, the best config as overrides and the
best checkpoint.

::

    prepare_search(cfg, storage, dataset_url, name)   on the driver, before Ray: every check a trial makes
      -> Tuner(with_resources(with_parameters(run_trial, ...), trial_resources(cfg)),   tasks/tune/trial.py
               param_space=search_space(cfg),                                          tasks/tune/space.py
               TuneConfig(metric, mode, num_samples,
                          ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period, reduction_factor),
                          BasicVariantGenerator(max_concurrent, random_state=tune.seed)),
               RunConfig(name, storage_path, callbacks=[TrialProgress]))
      -> fit(): per trial, run_training(trial_config(cfg, point), callbacks=[TuneReportCallback(), ...])
      -> results.csv, best_overrides.txt, best_checkpoint.txt                          tasks/tune/results.py

A trial reports once per epoch (TuneReportCallback: rank 0's metrics and the persisted checkpoint's
path), so ASHA's rungs are epoch counts (``time_attr="epoch"``): at ``grace_period`` epochs, then
every ``reduction_factor`` times as many, a trial whose metric is below the top 1/reduction_factor
of those that reached the rung before it is stopped (its Ray Train run aborted, tasks/tune/trial.py);
a trial that reaches ``max_epochs`` ends as its Ray Train run does (``stop_last_trials=False``).
No trial keeps a Tune checkpoint of its own (``ray.tune.get_checkpoint`` stays None): its Ray Train
run keeps them, named by the trial id.

Sizing. A trial's own process only builds the TorchTrainer and waits on it: it reserves
``tune.driver_cpus`` (default 0) CPUs, while its Ray Train workers reserve theirs in their own
placement group (``workers_per_trial`` x ``cpus_per_worker`` CPUs, and a GPU each with
``gpus_per_worker=1``). Ray Tune refuses a trial that asks for nothing at all, so with no CPU it
reserves a little logical memory (:data:`TRIAL_DRIVER_MEMORY`), which every node has.
``tune.max_concurrent_trials`` null: as many trials as the cluster's CPUs (and GPUs) hold at once,
at least one (more would only start Ray Train runs that wait for their workers).

Layout, under ``{tune.storage_path or output/tune}/{tune.name}/`` (local or s3://)::

    results.csv            one row per trial (tasks/tune/results.py)
    best_overrides.txt     the best trial's values as Hydra overrides, one line
    best_checkpoint.txt    the best trial's last checkpoint (URI)
    train/{trial id}/      each trial's Ray Train run: checkpoint_epoch000N/ (tasks.checkpoint)
    {trial id}/, ...       Ray Tune's own files: each trial's params.json, result.json, progress.csv,
                           the experiment state

Credentials. The Storage, its credentials resolved, reaches the trials through
``tune.with_parameters`` (the Ray object store), never the param space, which Tune writes into
each trial's ``params.json``. Two things of Ray Tune's own would put them in clear into files
(both seen with ray 2.60 and the S3 test server), so:

- Tune pickles its ``RunConfig``, storage filesystem included (s3fs holding the credentials), into
  the experiment folder (``tuner.pkl``, the experiment and searcher state), and deep-copies that
  filesystem for its own reads. So Tune writes its own files to a local folder on the driver
  (where the trials never write: they keep no Tune checkpoint), which is uploaded with the
  Storage when Tune is done, when the tune folder is s3://;
- Tune copies ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and
  ``AWS_SECURITY_TOKEN`` from the driver's environment into every trial actor's ``runtime_env``
  (``ray.tune.execution.class_cache``), which Ray's runtime-env agent logs in its session folder.
  So they are out of ``os.environ`` while Tune runs (:func:`_credentials_out_of_environ`); the
  driver's Storage holds them in its config meanwhile.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from infra.config import Config, ConfigError
from infra.ray_runtime import init_ray
from infra.schema.tune import SEARCH_KEYS
from infra.storage import Storage, StorageError, absolute, is_remote, join, require_shared
from tasks.train.loop import TrainPlan
from tasks.train.run import TrainSetupError, prepare
from tasks.tune.results import (BEST_CHECKPOINT_FILE, BEST_OVERRIDES_FILE, RESULTS_FILE, best_row, results_csv,
                                trial_row)
from tasks.tune.space import as_overrides, search_space, trial_config, trial_size
from tasks.tune.trial import run_trial

log = logging.getLogger(__name__)

TRAIN_DIR = "train"  # the trials' Ray Train runs: {tune dir}/train/{trial id}/
# What a trial's own process reserves when tune.driver_cpus is 0: Ray Tune schedules no trial
# that asks for nothing, and logical memory is a resource of every node.
TRIAL_DRIVER_MEMORY = 64 * 2**20


class TuneSetupError(ConfigError):
    """A tune run cannot start; raised before any trial does, naming what to change."""


@dataclass
class TuneResult:
    """What a finished tune run leaves: the table of trials and the best one."""

    name: str
    tune_dir: str  # {tune.storage_path or output/tune}/{name}, local or s3://
    metric: str
    mode: str
    trials: list[dict[str, Any]]  # the rows of results.csv
    best: dict[str, Any]  # the best trial's row
    best_overrides: list[str]
    best_checkpoint: str | None
    paths: dict[str, str] = field(default_factory=dict)  # results, best_overrides, best_checkpoint

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "tune_dir": self.tune_dir, "metric": self.metric, "mode": self.mode,
                "trials": len(self.trials),
                "stopped_early": sum(r["status"] == "stopped" for r in self.trials),
                "errors": sum(r["status"] == "error" for r in self.trials),
                "best": {"trial_id": self.best["trial_id"], self.metric: self.best[self.metric],
                         "epochs": self.best["epochs"], "overrides": self.best_overrides,
                         "checkpoint": self.best_checkpoint},
                "paths": self.paths}


# -- checks before any trial starts -------------------------------------------------------------
def tune_root(cfg: Config) -> str:
    """Where tune runs live: tune.storage_path, or {output}/tune (absolute: trials chdir elsewhere)."""
    return absolute(cfg.tune.storage_path or join(cfg.output, "tune"))


def _check_metric(cfg: Config) -> None:
    metric, val_split = cfg.tune.metric, cfg.train.val_split
    split = metric.split("_", 1)[0]
    if split != "train" and split != val_split:
        raise TuneSetupError(f"tune.metric={metric} needs the loop to score split {split!r} every epoch, but "
                             f"train.val_split={val_split}: set train.val_split={split}, or tune.metric=train_loss "
                             "with tune.mode=min")


def prepare_search(cfg: Config, storage: Storage, dataset_url: str, name: str) -> TrainPlan:
    """Every check a trial would make, once, on the driver, before Ray starts: the metric, a new
    tune folder, and tasks.train.run.prepare on the trial config at the ranges' low ends (the
    model takes the searched options; the data set is there with its splits and enough shards
    for the trial's workers; train.resume_from fits ...)."""
    _check_metric(cfg)
    tune_dir = join(tune_root(cfg), name)
    try:
        existing = storage.listdir(tune_dir)
    except StorageError as e:
        raise TuneSetupError(f"tune folder {tune_dir}: {e}") from None
    if existing:
        raise TuneSetupError(f"tune folder {tune_dir} exists: choose another tune.name, or remove the folder")
    low = {k: lo for k, (lo, _) in cfg.tune.ranges().items()}
    try:
        trial = trial_config(cfg, low, run_name="trial-check", storage_path=join(tune_dir, TRAIN_DIR))
        return prepare(trial, storage, dataset_url, "trial-check")
    except TrainSetupError as e:
        searched = [f"model.{k}" for k in low if SEARCH_KEYS[k] == "model"]
        hint = (f" (the search sets {', '.join(searched)}; tune.<key>=null leaves out a key the model does not take)"
                if searched and "do not fit" in str(e) else "")
        raise TuneSetupError(f"a trial of this search cannot start: {e}{hint}") from e
    except ValueError as e:  # a sampled value out of the model's or train's own range
        raise TuneSetupError(f"a trial of this search cannot start: {e}") from e


def max_concurrent(cfg: Config, resources: dict[str, float]) -> int:
    """tune.max_concurrent_trials, else as many trials as resources (the cluster's) hold, >= 1."""
    if cfg.tune.max_concurrent_trials is not None:
        return cfg.tune.max_concurrent_trials
    workers, cpus, gpu = trial_size(cfg)
    fits = [math.floor(resources.get("CPU", 0.0) / (workers * cpus + cfg.tune.driver_cpus) + 1e-9)]
    if gpu:
        fits.append(math.floor(resources.get("GPU", 0.0) / workers + 1e-9))
    return max(1, min(fits))


def trial_resources(cfg: Config) -> dict[str, float]:
    """What a trial's own process reserves (its Ray Train workers reserve theirs)."""
    if cfg.tune.driver_cpus > 0:
        return {"CPU": cfg.tune.driver_cpus}
    return {"CPU": 0.0, "memory": float(TRIAL_DRIVER_MEMORY)}


# -- progress on the driver ---------------------------------------------------------------------
def point_text(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={float(point[k]):.4g}" for k in SEARCH_KEYS if k in point)


class TrialProgress(tune.Callback):
    """Run by Ray Tune on the driver: one line per trial result (trial id, epoch, sampled values,
    the metric, val mIoU / F, train loss) and one per trial end."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, metric: str, max_epochs: int):
        self.logger, self.metric, self.max_epochs = logger, metric, max_epochs

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its RunConfig into tuner.pkl: not the flow's logger
        return {"metric": self.metric, "max_epochs": self.max_epochs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, logger=log)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        others = "".join(f" | {k} {result[k]:.4f}" for k in ("val_miou", "val_fscore", "train_loss")
                         if k != self.metric and isinstance(result.get(k), float))
        self.logger.info("trial %s epoch %s/%d | %s | %s %.4f%s", trial.trial_id, result.get("epoch"), self.max_epochs,
                         point_text(trial.config), self.metric, result.get(self.metric, float("nan")), others)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = (trial.last_result or {}).get("epoch", 0)
        self.logger.info("trial %s %s", trial.trial_id, "ran all its epochs" if epochs >= self.max_epochs
                         else f"stopped by ASHA after epoch {epochs}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger.warning("trial %s failed (%s); its error is in results.csv", trial.trial_id,
                            point_text(trial.config))


# -- credentials (see the module docstring) -----------------------------------------------------
# What ray.tune.execution.class_cache copies from the driver's environment into the trial
# actors' runtime_env (ray 2.60), which Ray's runtime-env agent then logs.
TUNE_PROPAGATED_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _resolved(storage: Storage) -> Storage:
    """The Storage with the environment's credentials and endpoint held in its config, so it
    keeps working while they are out of os.environ (its pickle holds them resolved anyway)."""
    c = storage.cfg
    if c.key:
        return storage
    return Storage(dataclasses.replace(c, key=c.resolved_key(), secret=c.resolved_secret(), token=c.resolved_token(),
                                       endpoint_url=c.resolved_endpoint()))


@contextlib.contextmanager
def _credentials_out_of_environ():
    saved = {k: os.environ.pop(k) for k in TUNE_PROPAGATED_CREDENTIALS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _upload(folder: str, url: str, storage: Storage) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            storage.put_file(path, join(url, os.path.relpath(path, folder).replace(os.sep, "/")))


# -- the run ------------------------------------------------------------------------------------
def run_search(cfg: Config, storage: Storage, dataset_url: str,
               logger: logging.Logger | logging.LoggerAdapter | None = None) -> TuneResult:
    """Tune cfg.model on the data set at dataset_url (see the module docstring)."""
    logger = logger or log
    tu = cfg.tune
    name = tu.name or f"tune-{cfg.model.registry_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dataset_url = absolute(dataset_url)
    plan = prepare_search(cfg, storage, dataset_url, name)  # before Ray: bad input costs no start-up
    tune_dir = join(tune_root(cfg), name)
    train_root = join(tune_dir, TRAIN_DIR)
    resources = init_ray(cfg.cluster)
    for url, key in ((plan.dataset_url, "train.dataset"), (tune_dir, "tune.storage_path")):
        try:
            require_shared(url, key)
        except StorageError as e:
            raise TuneSetupError(str(e)) from None
    concurrent = max_concurrent(cfg, resources)
    workers, cpus, gpu = trial_size(cfg)
    logger.info("tuning %s on %s (%s): %d trial(s) over %s; %s on %s (%s), up to %d epoch(s) a trial, %d at a "
                "time, each %d Ray Train worker(s) x %g CPU%s; results in %s", plan.model, plan.dataset_url,
                plan.setting, tu.num_samples, ", ".join(f"{k} [{lo:g}, {hi:g}]" for k, (lo, hi) in tu.ranges().items()),
                tu.scheduler.upper(), tu.metric, tu.mode, tu.max_epochs, concurrent, workers, cpus,
                " + 1 GPU" if gpu else "", tune_dir)

    storage = _resolved(storage)
    # stop_last_trials=False: a trial at max_epochs ends as its Ray Train run does, not stopped by Tune
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=tu.max_epochs, grace_period=tu.grace_period,
                               reduction_factor=tu.reduction_factor, stop_last_trials=False)
                 if tu.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, storage=storage, dataset_url=plan.dataset_url, train_root=train_root),
        trial_resources(cfg))
    with contextlib.ExitStack() as stack:
        local_root = tune_root(cfg) if not is_remote(tune_dir) else stack.enter_context(
            tempfile.TemporaryDirectory(prefix="avs-tune-"))
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg),
            tune_config=tune.TuneConfig(
                metric=tu.metric, mode=tu.mode, num_samples=tu.num_samples, scheduler=scheduler,
                search_alg=BasicVariantGenerator(max_concurrent=concurrent, random_state=tu.seed),
                trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=name, storage_path=local_root, verbose=0,
                                      callbacks=[TrialProgress(logger, tu.metric, tu.max_epochs)]),
        )
        with _credentials_out_of_environ():
            grid = tuner.fit()
        if is_remote(tune_dir):
            _upload(os.path.join(local_root, name), tune_dir, storage)
        rows = sorted((trial_row(r, cfg, train_root) for r in grid), key=lambda r: r["trial_id"])
        paths = {"results": join(tune_dir, RESULTS_FILE), "best_overrides": join(tune_dir, BEST_OVERRIDES_FILE),
                 "best_checkpoint": join(tune_dir, BEST_CHECKPOINT_FILE)}
        storage.write_text(paths["results"], results_csv(rows))  # failed trials too, before any error below
        best = best_row(grid, rows, cfg)
    overrides = as_overrides({k: best[k] for k in SEARCH_KEYS if k in best})
    storage.write_text(paths["best_overrides"], " ".join(overrides) + "\n")
    storage.write_text(paths["best_checkpoint"], f"{best['checkpoint'] or ''}\n")
    logger.info("tune run %s done: %d trial(s), %d stopped early by ASHA, %d failed; best %s (%s %.4f after %d "
                "epoch(s)): %s; checkpoint %s; table %s", name, len(rows), sum(r["status"] == "stopped" for r in rows),
                sum(r["status"] == "error" for r in rows), best["trial_id"], tu.metric, best[tu.metric],
                best["epochs"], " ".join(overrides), best["checkpoint"], paths["results"])
    return TuneResult(name=name, tune_dir=tune_dir, metric=tu.metric, mode=tu.mode, trials=rows, best=best,
                      best_overrides=overrides, best_checkpoint=best["checkpoint"], paths=paths)
