"""The per-worker training loop, in the manner of Ray Train's own torch examples: build the
model, ``prepare_model``, iterate, ``ray.train.report`` with a checkpoint every epoch.

Each worker (rank r of W) reads its own share of the shards: our WebDataset loader splits the
shard list by the torch.distributed rank (``tasks.shards.loader``; Ray's ``prepare_data_loader``
would add no sampler to an ``IterableDataset``, so it is not used), with one shard order per
epoch shared by all ranks. Every clip of the split is seen once per epoch, by one rank.

Unequal batch counts. Shards hold different numbers of clips and W need not divide their
number, so ranks run out of batches at different steps; left alone, the ranks that still have
data wait forever in DDP's gradient all-reduce for the ones that stopped, with no error (the
deadlock of ray-project/ray#66085, there with Ray Data's shards). Before every step the ranks agree, with
one tiny all-reduce, on how many of them still have a batch: while any has, every rank steps;
a rank that has run out runs its last batch again with its loss multiplied by 0. So every rank
makes the same collective calls in the same order, which DDP needs (its gradient all-reduce,
its buffer broadcast) and so does COMBO's loss (``HungarianLoss`` all-reduces the number of
target masks on every call, inside the loss, where torch's ``Join`` cannot shadow it; that is
why ``Join`` is not used). DDP averages gradients over all W ranks; the loss of a rank with data
is multiplied by W / (ranks with data), so a step's gradient is the mean over the batches
actually in it, as on a full step. (The zero-loss rank's masks still count in the Hungarian
normaliser of that step: a slightly smaller mask loss on those tail steps.)

Per epoch: the training losses (means over the epoch's clips, all ranks), validation mIoU and
F-score by the AVSBench protocol on ``train.val_split`` (``tasks.evaluate.scoring``; the metric's
states are summed over the ranks by torchmetrics when every rank calls ``compute``, those
without validation data included), and after the last epoch the same on ``train.test_split``.
Validation runs the bare model (no DDP wrapper): no collective in its forward, so ranks may
hold different numbers of validation batches.

``ray.train.report`` every epoch on every rank (a barrier), rank 0 with the checkpoint
(:mod:`tasks.checkpoint`: model, optimiser, scheduler, epoch, step, the config, the data
set's URL and version, this epoch's metrics and the history of all epochs). At start,
``ray.train.get_checkpoint()`` (after a worker failure, or on a rerun with the same run name)
or else ``train.resume_from`` restores all of it; the epoch then restarts from its beginning,
with the same shard order and augmentation (seeded by epoch), so no clip is seen twice.

Mixed precision: ``train.amp=bf16`` runs the forward pass under ``torch.autocast`` with bfloat16
on the worker's device (CUDA, or CPU, where bf16 autocast exists too but is slow without AMX);
the loss is computed outside autocast, in float32 where the loss code asks for it (the
Hungarian matcher hands its costs to scipy). No gradient scaler: bf16 has float32's range.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from infra.config import Config, to_dict
from infra.storage import Storage, is_remote, join
from tasks.evaluate.scoring import model_inputs, new_metric, predict, score_clips, set_targets, to_device
from tasks.shards.loader import make_loader
from tasks.checkpoint import CheckpointMeta, LoadedCheckpoint, load_checkpoint, save_checkpoint
from tasks.train.optim import build_optimizer, build_scheduler


@dataclass
class TrainPlan:
    """What the driver settled before any worker started (tasks.train.run.prepare)."""

    model: str  # registry name
    model_options: dict[str, Any]  # the builder's keyword arguments, num_classes resolved
    num_classes: int  # foreground classes C
    setting: str  # s4 | ms3 | avss
    dataset_url: str
    dataset_version: str
    steps_per_epoch: int  # an upper bound (the poly schedule spans epochs x this)
    run_dir: str  # {storage_path}/{run name}
    init_checkpoint: str | None = None  # train.resume_from, when the run has no checkpoint yet
    latest_checkpoint: str | None = None  # the run's own latest checkpoint (checked), when it has one


def start_state(bare: torch.nn.Module, t: Any, plan: TrainPlan, restored: Any) -> tuple:
    """The optimiser and schedule of a run (COMBO's, tasks/train/optim.py) and the (epoch, step,
    history) it starts from; all restored from ``restored`` (a loaded checkpoint) when resuming."""
    optimizer = build_optimizer(bare, t)
    scheduler = build_scheduler(optimizer, t, total_steps=t.epochs * plan.steps_per_epoch)
    start_epoch, step, history = 0, 0, []
    if restored is not None:
        optimizer.load_state_dict(restored.train_state["optimizer"])
        scheduler.load_state_dict(restored.train_state["scheduler"])
        start_epoch, step, history = restored.train_state["epoch"], restored.train_state["step"], list(restored.meta.history)
    return optimizer, scheduler, start_epoch, step, history


@dataclass
class WorkerContext:
    """What every training loop's worker starts from: its config and plan, storage, rank, device and
    autocast (bf16 when ``train.amp=bf16``)."""

    cfg: Config
    plan: TrainPlan
    storage: Storage
    rank: int
    world: int
    device: torch.device
    amp: Any


def worker_context(config: dict[str, Any], storage: Storage | None = None) -> WorkerContext:
    cfg: Config = config["cfg"]
    device = ray.train.torch.get_device()
    ctx = ray.train.get_context()
    return WorkerContext(cfg=cfg, plan=config["plan"], storage=storage or Storage(cfg.storage),
                         rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=device,
                         amp=torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.amp == "bf16"))


def prepared_model(w: WorkerContext, build: Any) -> tuple[torch.nn.Module, torch.nn.Module, tuple]:
    """The worker's model: ``build()`` under the run's seed, the run's last checkpoint restored when it
    has one, moved to the device (DDP when world > 1). Returns (model, the bare module, ``start_state``)."""
    torch.manual_seed(w.cfg.seed)
    model = build()
    restored = _restore(w.plan, w.storage)
    if restored is not None:
        model.load_state_dict(restored.model_state)
    model = ray.train.torch.prepare_model(model)
    bare = getattr(model, "module", model)
    return model, bare, start_state(bare, w.cfg.train, w.plan, restored)


def train_loop_per_worker(config: dict[str, Any], storage: Storage | None = None) -> None:
    w = worker_context(config, storage)
    cfg, plan, storage, rank, world, device, amp = w.cfg, w.plan, w.storage, w.rank, w.world, w.device, w.amp
    t = cfg.train
    model, bare, (optimizer, scheduler, start_epoch, step, history) = prepared_model(w, lambda: build_run_model(plan, storage))

    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        model.train()
        batches = iter(make_loader(plan.dataset_url, storage, t.loader, "train", epoch))
        last, sums, clips, rank_batches, clip_ids = None, {}, 0, 0, []
        while True:
            batch = _next_batch(batches, rank, epoch)
            has_data = batch is not None
            active = sum_over_ranks(float(has_data), device)  # ranks that still have a batch
            if active == 0:
                break
            if has_data:
                last = batch = to_device(batch, device)
            elif last is None:
                raise RuntimeError(f"rank {rank} got no training batch in epoch {epoch + 1} while other ranks did: "
                                   "every rank needs at least one train shard")
            else:
                batch = last  # ran out: step along with a zero loss (module docstring)
            with amp:
                outputs = model(**model_inputs(batch))
            losses = bare.loss(outputs, set_targets(batch, plan.num_classes))
            weight = world / active if has_data else 0.0
            optimizer.zero_grad(set_to_none=True)
            (losses["loss"] * weight).backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(bare.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n = len(batch["clip_id"]) if has_data else 0
            for key, value in losses.items():
                if key == "loss" or not key.rsplit("_", 1)[-1].isdigit():  # totals, not per-layer parts
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
            clips, rank_batches = clips + n, rank_batches + has_data
            if t.hooks.report_clip_ids and has_data:
                clip_ids.extend(batch["clip_id"])
            _maybe_fail_once(t, rank, step, plan, storage)

        end_epoch(model, optimizer, scheduler, cfg, plan, storage, device, amp, epoch, step, started, sums, clips,
                  history, rank_batches, clip_ids)


def end_epoch(model: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: Config, plan: TrainPlan,
              storage: Storage, device: torch.device, amp: Any, epoch: int, step: int, started: float,
              sums: dict[str, float], samples: int, history: list[dict[str, Any]], rank_batches: int,
              ids: list[str], extra: dict[str, Any] | None = None) -> None:
    """Every rank, at the end of an epoch: this rank's loss sums (weighted by its samples) summed
    over ranks, val scored (and test after the last epoch), the epoch's metrics (plus ``extra``)
    appended to ``history``; rank 0 writes the checkpoint; every rank reports. ``ids``: what this
    rank trained on, reported under train.hooks.report_clip_ids."""
    t = cfg.train
    rank = ray.train.get_context().get_world_rank()
    bare = getattr(model, "module", model)
    names = sorted(sums)
    totals = sum_over_ranks([sums[k] for k in names] + [float(samples)], device)
    train_seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "epoch": epoch + 1, "step": step, "lr": max(scheduler.get_last_lr()),
        **{f"train_{k}": v / max(totals[-1], 1.0) for k, v in zip(names, totals[:-1])},
        "samples": int(totals[-1]), "samples_per_s": totals[-1] / train_seconds, **(extra or {}),
    }
    if t.val_split:
        metrics.update(_score_split(bare, t.val_split, plan, cfg, storage, device, amp))
    if t.test_split and epoch + 1 == t.epochs:
        metrics.update(_score_split(bare, t.test_split, plan, cfg, storage, device, amp))
    metrics["epoch_s"] = time.perf_counter() - started
    metrics["eta_s"] = metrics["epoch_s"] * (t.epochs - epoch - 1)
    history.append(metrics)

    rank_metrics = {**metrics, "rank": rank, "rank_samples": samples, "rank_batches": rank_batches,
                    "node_id": ray.get_runtime_context().get_node_id()}
    if t.hooks.report_clip_ids:
        rank_metrics["clip_ids"] = ids
    report_epoch(model, optimizer, scheduler, cfg, plan, epoch, step, metrics, history, rank_metrics)


def report_epoch(model: torch.nn.Module, optimizer: Any, scheduler: Any, cfg: Config, plan: TrainPlan, epoch: int,
                 step: int, metrics: dict[str, Any], history: list[dict[str, Any]],
                 rank_metrics: dict[str, Any]) -> None:
    """Rank 0 (``rank_metrics["rank"]``) writes the epoch's checkpoint (tasks.checkpoint's format)
    when ``train.checkpoint_every`` or the last epoch says so; every rank reports its rank_metrics."""
    t = cfg.train
    with tempfile.TemporaryDirectory(prefix="avs-ckpt-") as folder:
        checkpoint, name = None, None
        if rank_metrics["rank"] == 0 and ((epoch + 1) % t.checkpoint_every == 0 or epoch + 1 == t.epochs):
            meta = CheckpointMeta(model=plan.model, model_options=plan.model_options, epoch=epoch + 1, step=step,
                                  dataset_url=plan.dataset_url, dataset_version=plan.dataset_version,
                                  setting=plan.setting, config=to_dict(cfg), metrics=metrics, history=history)
            save_checkpoint(folder, model, meta, optimizer, scheduler)
            checkpoint, name = ray.train.Checkpoint.from_directory(folder), f"checkpoint_epoch{epoch + 1:04d}"
        ray.train.report(rank_metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def build_run_model(plan: TrainPlan, storage: Storage) -> torch.nn.Module:
    """The registry's model; weight files given as s3:// are fetched to local temp files first."""
    from models.build import build_model

    with contextlib.ExitStack() as stack:
        options = {k: (stack.enter_context(storage.local_path(v)) if k.endswith("_weights") and is_remote(v) else v)
                   for k, v in plan.model_options.items()}
        return build_model(plan.model, **options)


def _restore(plan: TrainPlan, storage: Storage) -> LoadedCheckpoint | None:
    """This run's latest checkpoint (a restart or a rerun), else train.resume_from, else None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return load_checkpoint(folder, expect_model=plan.model, with_train_state=True)
    if plan.init_checkpoint:
        return load_checkpoint(plan.init_checkpoint, storage, expect_model=plan.model, with_train_state=True)
    return None


def _next_batch(batches: Any, rank: int, epoch: int) -> dict[str, Any] | None:
    try:
        return next(batches, None)
    except ValueError as e:
        hint = ("; preprocess with data.num_frames=<T> so every clip has one length, or set train.loader.batch_size=1"
                if "different lengths" in str(e) else "")
        raise RuntimeError(f"rank {rank}, epoch {epoch + 1}: reading the training shards failed: {e}{hint}") from e


def sum_over_ranks(values: float | list[float], device: torch.device) -> Any:
    """values summed over every rank (float64, on the device the backend needs)."""
    x = torch.tensor(values if isinstance(values, list) else [values], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    out = x.tolist()
    return out if isinstance(values, list) else out[0]


@torch.no_grad()
def _score_split(bare: torch.nn.Module, split: str, plan: TrainPlan, cfg: Config, storage: Storage,
                 device: torch.device, amp: torch.autocast) -> dict[str, float]:
    """AVSBench scores of this rank's share of split, summed over all ranks (every rank calls
    compute once, with or without data): {split}_miou, {split}_fscore and the variants."""
    metric = new_metric(plan.setting, plan.num_classes).to(device)
    for batch, pred in split_predictions(bare, split, plan, cfg, storage, device, amp):
        score_clips(metric, pred, batch)
    with warnings.catch_warnings():  # a rank without data of this split computes too: expected
        warnings.filterwarnings("ignore", message=".*compute.*before the ``update``")
        scores = metric.compute()
    return {f"{split}_{k}": float(v) for k, v in scores.items() if v.numel() == 1}


def split_predictions(bare: torch.nn.Module, split: str, plan: TrainPlan, cfg: Config, storage: Storage,
                      device: torch.device, amp: Any) -> Any:
    """(batch on device, ``predict`` output) for this rank's share of split, the model in eval
    mode without gradients meanwhile (its train / eval mode restored after)."""
    plain = dataclasses.replace(cfg.train.loader, augment=False, shuffle_buffer=0)
    was_training = bare.training
    bare.eval()
    try:
        for batch in make_loader(plan.dataset_url, storage, plain, split):
            batch = to_device(batch, device)
            with torch.no_grad(), amp:
                outputs = bare(**model_inputs(batch))
                pred = predict(bare, outputs, batch)
            yield batch, pred
    finally:
        bare.train(was_training)


def _maybe_fail_once(t: Any, rank: int, step: int, plan: TrainPlan, storage: Storage) -> None:
    """TEST-ONLY (train.hooks): rank fail_rank dies as a killed worker would, once per run."""
    if t.hooks.fail_once_at_step != step or rank != t.hooks.fail_rank:
        return
    marker = join(plan.run_dir, f".test-hook-failed-at-step-{step}")
    if storage.exists(marker):
        return
    storage.write_text(marker, f"rank {rank} exited at step {step}\n")
    os._exit(1)
