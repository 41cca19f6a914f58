"""A training run on Ray Train: every check before any worker starts, the ``TorchTrainer``, the result.

::

    prepare(cfg, storage, dataset_url, name)   on the driver, no worker yet: TrainSetupError on bad input
      -> TorchTrainer(train_loop_per_worker,   tasks/train/loop.py, one copy per worker
                      ScalingConfig, RunConfig(storage_path, storage_filesystem,
                      FailureConfig, CheckpointConfig, callbacks=[EpochProgress]))
      -> fit()                                 per-epoch lines on the driver's log as they happen
      -> TrainResult                           the last checkpoint's URI, metrics, history

Checks before any worker starts (:func:`prepare`, before Ray is even started), each a
:class:`TrainSetupError` (a ConfigError: on the command line, one line and exit status 2)
naming what to change:

- the model: ``f"{model.name}_{model.size}"`` in ``models.build.model_registry``, and the
  model options accepted by its builder (a dry build on the meta device: no memory, no weights);
- the data set: a ``manifest.json`` (else missing or unfinished), a schema version this code
  reads, the splits asked for (train, ``train.val_split``, ``train.test_split``) holding clips,
  at least one train shard per Ray Train worker (the loop needs one batch per rank);
- ``train.resume_from``: a checkpoint of this model, intact (sha256 of each file), whose
  weights fit the configured model (names and shapes);
- an existing run of the same name: its latest checkpoint must be of this model and data set
  version, its files of the recorded sizes; ``train.resume=false`` refuses any existing run;
- storage: a local data set or run folder is refused when Ray spans several nodes (once Ray is up).

Resume. Ray Train V2 writes ``checkpoint_manager_snapshot.json`` into
``{storage_path}/{run name}/`` and, when a run starts with the same name and storage, reads it
back: ``ray.train.get_checkpoint()`` then returns the run's latest checkpoint (ray 2.60,
``CheckpointManager._maybe_load_state_from_storage``; ``TorchTrainer(resume_from_checkpoint=)``
is deprecated and raises). So a rerun of the flow with the same ``train.run_name`` resumes; so
does a restart after a worker dies (``FailureConfig.max_failures``), within one ``fit()``.

Storage. Ray Train persists checkpoints through pyarrow; for s3:// it gets
:meth:`~infra.storage.Storage.pyarrow_filesystem` (s3fs with our endpoint, credentials and
retries: pyarrow's own S3 filesystem ignores ``AWS_ENDPOINT_URL``) and the path without the
scheme. Credentials reach the workers inside the pickled train function (the Storage bound
with ``functools.partial``), never in ``train_loop_config``, which Ray Train may export as run
state.

Progress. :class:`EpochProgress` is a ``ray.train.UserCallback``: Ray Train calls it on its
controller after every ``ray.train.report`` (all ranks' metrics, the persisted checkpoint) and
after a worker failure; it hands each event to a ``ray.util.queue.Queue`` (as Ray Tune's
``TuneReportCallback`` does), which a thread on the driver drains into the given logger (the
flow's Prefect logger), one line per epoch: loss, val mIoU and F, samples/s, ETA.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import posixpath
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer

from infra.config import Config, ConfigError
from infra.ray_runtime import init_ray
from infra.storage import Storage, StorageError, absolute, is_remote, join, require_shared
from tasks.shards.manifest import Manifest, read_manifest
from tasks.checkpoint import META_FILE, CheckpointError, CheckpointMeta, load_checkpoint, read_meta
from tasks.train.loop import TrainPlan, train_loop_per_worker

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_epoch"  # checkpoint folders: checkpoint_epoch0003 holds the state after epoch 3


class TrainSetupError(ConfigError):
    """A training run cannot start; raised before any worker does, naming what to change."""


@dataclass
class TrainResult:
    """What a finished run leaves: where, its last checkpoint and metrics, every epoch's."""

    run_name: str
    run_dir: str  # {storage_path}/{run_name}, local or s3://
    checkpoint_uri: str | None  # the last checkpoint (tasks.checkpoint format)
    metrics: dict[str, Any]  # of the last epoch (rank 0's report)
    history: list[dict[str, Any]]  # every epoch of the run, resumed ones included
    dataset_url: str
    dataset_version: str
    model: str
    setting: str
    # every ray.train.report of this fit(): per report, the metrics of each rank (rank order)
    reports: list[list[dict[str, Any]]] = field(default_factory=list)
    # worker failures of this fit(), rank -> error; Ray Train restarted the workers after each
    # while train.max_failures allowed
    failures: list[dict[int, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        keep = ("epoch", "step", "train_loss", "val_miou", "val_fscore", "test_miou", "test_fscore", "samples_per_s")
        return {"run_name": self.run_name, "run_dir": self.run_dir, "checkpoint": self.checkpoint_uri,
                "model": self.model, "setting": self.setting, "dataset_url": self.dataset_url,
                "dataset_version": self.dataset_version, "epochs": len(self.history),
                "epochs_this_run": len(self.reports), "worker_failures_recovered": len(self.failures),
                "metrics": {k: self.metrics[k] for k in keep if k in self.metrics}}


# -- checks before any worker starts --------------------------------------------------------
def _registry_model(cfg: Config) -> str:
    from models.build import model_registry

    name = cfg.model.registry_name
    if name not in model_registry:
        raise TrainSetupError(f"model {name!r} (model.name={cfg.model.name}, model.size={cfg.model.size}) is not in "
                              f"models.build.model_registry; valid: {', '.join(sorted(model_registry))}")
    return name


def _dataset(dataset_url: str, storage: Storage) -> Manifest:
    try:
        manifest = read_manifest(dataset_url, storage)
    except (ValueError, StorageError) as e:
        raise TrainSetupError(f"train.dataset={dataset_url}: {e}") from None
    if manifest is None:
        raise TrainSetupError(f"train.dataset={dataset_url}: no manifest.json there, so the data set is missing or "
                              "unfinished; make one with flows.preprocess, or leave train.dataset null to let the "
                              "train flow run preprocess first")
    return manifest


def _setting(manifest: Manifest, cfg: Config) -> str:
    setting = manifest.provenance.get("config", {}).get("decode", {}).get("setting")
    if setting is None:
        log.warning("the data set's manifest does not record its setting: taking data.setting=%s", cfg.data.setting)
        setting = cfg.data.setting
    return setting


def _train_shard_counts(manifest: Manifest, split: str) -> list[int]:
    """Clips of split in each shard holding any (every shard when the manifest has no split counts)."""
    counts = [int(s.get("splits", {}).get(split, 0)) if "splits" in s else int(s["count"]) for s in manifest.shards]
    return [c for c in counts if c > 0]


def _check_splits(manifest: Manifest, cfg: Config, dataset_url: str) -> None:
    t = cfg.train
    have = manifest.split_counts()
    wanted = [("train", "the training split"), (t.val_split, "train.val_split"), (t.test_split, "train.test_split")]
    for split, key in wanted:
        if split is not None and have and not have.get(split):
            hint = f"; set {key}=null to go without" if key != "the training split" else ""
            raise TrainSetupError(f"data set {dataset_url} has no clip of split {split!r} ({key}); it holds "
                                  f"{have or 'no split counts'}{hint}")
    shards = _train_shard_counts(manifest, "train")
    if len(shards) < t.num_workers:
        raise TrainSetupError(f"data set {dataset_url} has {len(shards)} shard(s) of split 'train' for "
                              f"train.num_workers={t.num_workers}: every worker reads whole shards (split by rank), "
                              "so each needs at least one; use fewer workers or more, smaller shards "
                              "(preprocess.shards.samples_per_shard)")


def _num_classes(cfg: Config, manifest: Manifest, setting: str, storage: Storage) -> int:
    """Foreground classes: model.num_classes, else 1 for S4/MS3, else label2idx.json's classes
    less the background (the source folder, recorded in the manifest, holds it)."""
    if cfg.model.num_classes is not None:
        return cfg.model.num_classes
    if setting in ("s4", "ms3"):
        return 1
    from tasks.decode.avsbench import LABEL2IDX, SEMANTIC_DIR, class_ids

    source = manifest.source.get("uri")
    tried = [join(source, SEMANTIC_DIR, LABEL2IDX), join(source, LABEL2IDX)] if source else []
    for url in tried:
        with contextlib.suppress(FileNotFoundError, StorageError):
            if storage.exists(url):
                return len(class_ids(json.loads(storage.read_text(url)), url)) - 1
    raise TrainSetupError(f"cannot tell the number of AVSS classes: no {LABEL2IDX} at {tried or 'an unrecorded source'}; "
                          "set model.num_classes=<C> (foreground classes, background excluded)")


def _dry_model(name: str, options: dict[str, Any]) -> torch.nn.Module:
    """The model on the meta device, weights not loaded: checks the options, costs nothing."""
    from models.build import build_model

    dry = {k: v for k, v in options.items() if not k.endswith("_weights")}
    try:
        with torch.device("meta"):
            return build_model(name, **dry)
    except TypeError as e:
        raise TrainSetupError(f"model options {sorted(dry)} do not fit {name}'s builder ({e}); set the others to null "
                              f"(conf/model/{name}.yaml lists what it takes)") from None
    except ValueError as e:
        raise TrainSetupError(f"model {name}: {e}") from None


def _check_weights_fit(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    wrong = sorted(k for k in set(own) & set(theirs) if own[k] != theirs[k])
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}" for label, keys in
                           (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong)) if keys)
        raise TrainSetupError(f"{what}: its weights do not fit the configured model ({detail}); "
                              "were model options (num_classes, ablations) different?")


def _latest_run_checkpoint(run_dir: str, storage: Storage) -> str | None:
    """The run's checkpoint folder with the highest epoch, or None."""
    folders = [u for u in storage.listdir(run_dir) if posixpath.basename(u.rstrip("/")).startswith(CHECKPOINT_PREFIX)]
    done = [u for u in folders if storage.exists(join(u, META_FILE))]
    return max(done, key=lambda u: posixpath.basename(u.rstrip("/"))) if done else None


def check_existing_run(run_dir: str, run_name: str, storage: Storage, cfg: Config, model: str,
                        version: str) -> str | None:
    """The checkpoint a rerun resumes from (checked), or None for a new run."""
    if not storage.listdir(run_dir):
        return None
    if not cfg.train.resume:
        raise TrainSetupError(f"run folder {run_dir} exists and train.resume=false: choose another train.run_name, "
                              "or remove the folder to start over")
    latest = _latest_run_checkpoint(run_dir, storage)
    if latest is None:
        return None
    try:
        meta = read_meta(latest, storage)
    except CheckpointError as e:
        raise TrainSetupError(f"train.run_name={run_name}: the run's latest checkpoint is unusable: {e}") from e
    if meta.model != model:
        raise TrainSetupError(f"train.run_name={run_name} is a run of model {meta.model!r} ({latest}), "
                              f"not {model!r}: choose another train.run_name")
    if meta.dataset_version and meta.dataset_version != version:
        raise TrainSetupError(f"train.run_name={run_name} was trained on data set version "
                              f"{meta.dataset_version}, this config names {version}: choose another train.run_name")
    for name, recorded in meta.files.items():
        url = join(latest, name)
        size = storage.size(url) if storage.exists(url) else None
        if size != recorded.get("nbytes"):
            raise TrainSetupError(f"train.run_name={run_name}: the run's latest checkpoint {latest} has "
                                  f"{name} of {size} bytes, meta.json says {recorded.get('nbytes')} (truncated or "
                                  "missing): remove that checkpoint folder to resume from the one before")
    return latest


def _steps_per_epoch(manifest: Manifest, cfg: Config) -> int:
    """An upper bound of the optimiser steps of one epoch: the batches of the rank that can get
    the most clips (the ceil(S / W) largest train shards), plus one partial batch per extra
    DataLoader worker. The poly schedule spans epochs x this; it never reaches 0 early."""
    t, loader = cfg.train, cfg.train.loader
    counts = sorted(_train_shard_counts(manifest, "train"), reverse=True)
    most = sum(counts[: math.ceil(len(counts) / t.num_workers)])
    return max(1, math.ceil(most / loader.batch_size) + max(0, loader.num_workers - 1))


def _check_shared(dataset_url: str, run_dir: str) -> None:
    """Local paths are refused when Ray spans several nodes (a no-op until Ray is up)."""
    for url, key in ((dataset_url, "train.dataset"), (run_dir, "train.storage_path")):
        try:
            require_shared(url, key)
        except StorageError as e:
            raise TrainSetupError(str(e)) from None


# Settings that say where a run lives or how it recovers, not what it learns; the epochs too, so that
# a rerun with more epochs continues the same run.
_NOT_IN_RUN_NAME = ("run_name", "storage_path", "resume", "resume_from", "evaluate", "epochs", "max_failures",
                    "checkpoint_every", "num_to_keep", "collective_timeout_s", "hooks")


def config_run_name(cfg: Config, dataset_version: str, prefix: str = "") -> str:
    """A run name that follows from what is trained: ``{prefix}{model}-{data set version}-{hash}``,
    the hash over the model's options, the training settings that change what is learned, and the
    seed. The same config on the same data set gives the same name, so a rerun resumes (or reuses
    a finished run) instead of starting over."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _NOT_IN_RUN_NAME}
    what = {"model": dataclasses.asdict(cfg.model), "train": train, "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
    version = dataset_version.removeprefix("v-")
    return f"{prefix}{cfg.model.registry_name}-{version}-{digest}"


def runs_root(cfg: Config) -> str:
    """Where runs live: train.storage_path, or {output}/train (absolute: workers chdir elsewhere)."""
    return absolute(cfg.train.storage_path or join(cfg.output, "train"))


def prepare(cfg: Config, storage: Storage, dataset_url: str, run_name: str) -> TrainPlan:
    """Every check of the module docstring, then what each worker needs. No worker starts here."""
    t = cfg.train
    model = _registry_model(cfg)
    dataset_url = absolute(dataset_url)
    run_dir = join(runs_root(cfg), run_name)
    _check_shared(dataset_url, run_dir)
    manifest = _dataset(dataset_url, storage)
    setting = _setting(manifest, cfg)
    _check_splits(manifest, cfg, dataset_url)
    if manifest.provenance.get("config", {}).get("decode", {}).get("num_frames") is None and t.loader.batch_size > 1:
        log.warning("data set %s: T follows each clip (AVSS v1s/v1m 5, v2 10); clips of different T cannot share "
                    "a batch, so a mixed split fails to load: preprocess with data.num_frames=<T>, or "
                    "train.loader.batch_size=1", dataset_url)
    num_classes = _num_classes(cfg, manifest, setting, storage)
    options = cfg.model.builder_options(num_classes=num_classes)
    dry = _dry_model(model, options)
    for key in ("backbone_weights", "vggish_weights"):
        if options.get(key):
            if not storage.exists(options[key]):
                raise TrainSetupError(f"model.{key}={options[key]}: no such file")
            options[key] = absolute(options[key])  # the workers run in folders of their own
    init = None
    latest = check_existing_run(run_dir, run_name, storage, cfg, model, manifest.dataset_version)
    if latest is None and t.resume_from:
        init = absolute(t.resume_from)
        try:
            loaded = load_checkpoint(init, storage, expect_model=model)
        except CheckpointError as e:
            raise TrainSetupError(f"train.resume_from={t.resume_from}: {e}") from e
        _check_weights_fit(dry, loaded.model_state, f"train.resume_from={t.resume_from}")
    return TrainPlan(model=model, model_options=options, num_classes=num_classes, setting=setting,
                     dataset_url=dataset_url, dataset_version=manifest.dataset_version,
                     steps_per_epoch=_steps_per_epoch(manifest, cfg), run_dir=run_dir, init_checkpoint=init,
                     latest_checkpoint=latest)


# -- progress on the driver ------------------------------------------------------------------
class EpochProgress(UserCallback):
    """Runs on Ray Train's controller: hands each report and each worker failure to a queue
    that the driver drains (see the module docstring)."""

    def __init__(self, queue: Any):
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put({"metrics": metrics, "checkpoint": checkpoint.path if checkpoint is not None else None})

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        self.queue.put({"failure": {rank: f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                                    for rank, e in worker_exceptions.items()}})


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """One line per epoch: losses, validation, throughput, time left."""
    parts = [f"epoch {metrics['epoch']}/{epochs}", f"loss {metrics.get('train_loss', float('nan')):.4f}"]
    details = [f"{k.removeprefix('train_loss_')} {v:.4f}" for k, v in sorted(metrics.items())
               if k.startswith("train_loss_") and isinstance(v, float)]
    if details:
        parts[-1] += f" ({', '.join(details)})"
    if "val_miou" in metrics:
        parts.append(f"val mIoU {metrics['val_miou']:.4f} F {metrics.get('val_fscore', float('nan')):.4f}")
    if "val_category_miou" in metrics:  # encoder pretraining (tasks/pretrain/run.py)
        parts.append(f"held out: category mIoU {metrics['val_category_miou']:.4f}, audio mAP "
                     f"{metrics.get('val_audio_map', float('nan')):.4f}")
    if "test_miou" in metrics:
        parts.append(f"test mIoU {metrics['test_miou']:.4f} F {metrics.get('test_fscore', float('nan')):.4f}")
    parts.append(f"{metrics.get('samples_per_s', 0.0):.1f} samples/s")
    parts.append(f"epoch {_duration(metrics.get('epoch_s', 0.0))}, ETA {_duration(metrics.get('eta_s', 0.0))}")
    return " | ".join(parts)


@contextlib.contextmanager
def _follow(queue: Any, logger: logging.Logger | logging.LoggerAdapter, epochs: int, max_failures: int,
            result: TrainResult):
    """Drain the callback's queue into logger (in a thread) while the body runs."""
    from ray.util.queue import Empty

    done = threading.Event()

    def handle(item: dict[str, Any]) -> None:
        if "failure" in item:
            result.failures.append(item["failure"])
            for rank, error in sorted(item["failure"].items()):
                logger.warning("worker rank %s failed: %s", rank, error)
            n = len(result.failures)
            if n <= max_failures:
                logger.warning("Ray Train restarts the workers from the last checkpoint (failure %d of at most %d, "
                               "train.max_failures)", n, max_failures)
            else:
                logger.error("no restart left (train.max_failures=%d): the run fails", max_failures)
            return
        result.reports.append(item["metrics"])
        line = epoch_line(item["metrics"][0], epochs)
        if item["checkpoint"]:
            line += f" | checkpoint {posixpath.basename(item['checkpoint'].rstrip('/'))}"
        logger.info("%s", line)

    def drain() -> None:
        while not done.is_set():
            with contextlib.suppress(Empty):
                handle(queue.get(timeout=0.5))
        while not queue.empty():
            handle(queue.get_nowait())

    thread = threading.Thread(target=drain, name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=30)


def _ray_storage(run_root: str, storage: Storage) -> tuple[str, Any]:
    """RunConfig's storage_path and storage_filesystem for a local path or s3:// URI."""
    if is_remote(run_root):
        fs, path = storage.pyarrow_filesystem(run_root)
        return path, fs
    return run_root, None


# -- the run ------------------------------------------------------------------------------------
def run_training(cfg: Config, storage: Storage, dataset_url: str,
                 logger: logging.Logger | logging.LoggerAdapter | None = None,
                 callbacks: Sequence[UserCallback] = (), *,
                 plan_fn: Callable[[Config, Storage, str, str], TrainPlan] | None = None,
                 loop: Callable[..., None] | None = None, kind: str = "") -> TrainResult:
    """Train cfg.model on the data set at dataset_url with Ray Train (see the module docstring).

    callbacks: more ``ray.train.UserCallback``s for the run, after :class:`EpochProgress` (a Ray
    Tune trial passes ``TuneReportCallback``, which hands every report to Tune: tasks/tune/trial.py).
    plan_fn, loop: the checks and plan (default :func:`prepare`) and the per-worker loop (default
    :func:`tasks.train.loop.train_loop_per_worker`) of another kind of training (MoCA's:
    tasks/train/moca.py), with everything else (run folder, resume, progress, result) as here;
    kind: a few words for the start line."""
    plan_fn, loop = plan_fn or prepare, loop or train_loop_per_worker
    from ray.util.queue import Queue

    logger = logger or log
    t = cfg.train
    run_name = t.run_name or f"{cfg.model.registry_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = plan_fn(cfg, storage, dataset_url, run_name)  # before Ray: bad input costs no start-up
    result = TrainResult(run_name=run_name, run_dir=plan.run_dir, checkpoint_uri=None, metrics={}, history=[],
                         dataset_url=plan.dataset_url, dataset_version=plan.dataset_version, model=plan.model,
                         setting=plan.setting)
    if plan.latest_checkpoint is not None:
        meta = read_meta(plan.latest_checkpoint, storage)
        if meta.epoch >= t.epochs:  # a finished run: nothing to train, no Ray Train start-up
            logger.info("run %s finished already (epoch %d of train.epochs=%d, %s): reusing it; raise train.epochs "
                        "to train it further, or give another train.run_name to start over", run_name, meta.epoch,
                        t.epochs, plan.latest_checkpoint)
            result.checkpoint_uri, result.metrics, result.history = (plan.latest_checkpoint, dict(meta.metrics),
                                                                     list(meta.history))
            return result
    init_ray(cfg.cluster)
    _check_shared(plan.dataset_url, plan.run_dir)
    if t.use_gpu and not ray.cluster_resources().get("GPU"):
        logger.warning("train.use_gpu=true but the Ray cluster shows no GPU now: the workers wait for one")
    storage_path, filesystem = _ray_storage(runs_root(cfg), storage)
    logger.info("training %s%s on %s (%s, %d classes) with %d Ray Train worker(s)%s for %d epoch(s); run %s at %s "
                "(rerun with train.run_name=%s to resume)", plan.model, f" ({kind})" if kind else "", plan.dataset_url,
                plan.setting, plan.num_classes, t.num_workers, " on GPUs" if t.use_gpu else "", t.epochs, run_name,
                plan.run_dir, run_name)
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        functools.partial(loop, storage=storage),
        train_loop_config={"cfg": cfg, "plan": plan},
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo", timeout_s=t.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     placement_strategy=t.placement_strategy),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            callbacks=[EpochProgress(queue), *callbacks],
        ),
    )
    try:
        with _follow(queue, logger, t.epochs, t.max_failures, result):
            fitted = trainer.fit()
    finally:
        queue.shutdown()
    if fitted.checkpoint is not None:
        result.checkpoint_uri = join(plan.run_dir, posixpath.basename(fitted.checkpoint.path.rstrip("/")))
        meta: CheckpointMeta = read_meta(result.checkpoint_uri, storage)
        result.metrics, result.history = dict(meta.metrics), list(meta.history)
    logger.info("run %s finished: %d epoch(s), last checkpoint %s", run_name, len(result.history), result.checkpoint_uri)
    return result

