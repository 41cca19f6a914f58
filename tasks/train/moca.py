"""Training MoCA (``models.moca``) on Ray Train from mined pairs, never from masks.

::

    prepare_moca(cfg, storage, dataset_url, name)   on the driver, no worker yet: TrainSetupError on bad input
      -> TorchTrainer(moca_loop_per_worker, ...)     the same ScalingConfig, RunConfig, storage, resume,
                                                     checkpoints and EpochProgress as tasks.train.run
      -> fit() -> TrainResult                        a checkpoint of tasks.checkpoint's format

A training example is one ANCHOR frame of the train split with its second of log-mel, its
``K`` positive and ``M`` negative partner frames from ``pairs.parquet`` (beside the shards,
written by the preprocess step: ``key`` = ``{sample key}/{frame:03d}``, ``positives`` /
``negatives`` = lists of such keys, mined within one split). ``K`` and ``M`` are the most
positives and negatives any train row holds (``preprocess.pairs.k_pos`` / ``num_neg`` when the
pairs were mined); rows with fewer, or naming frames the store lacks (a rejected clip), are
padded, with ``positive_valid`` / ``negative_valid`` False there (``MoCA.training_loss`` masks
them out). Anchors without a single valid negative are left out (they would add nothing).

The frame store (:class:`FrameStore`): every Ray Train worker reads the train split's shards
once, at start, into memory: every frame resized to ``train.loader.image_size`` (S) as uint8
``[N, 3, S, S]`` and every second of log-mel as float16 ``[N, 96, 64]``, keyed by frame key.
Random access to any partner is then an index into one tensor. Memory per worker:
``N x (3 S^2 + 12288)`` bytes, N = train frames (clips x T): SynthAVS 1000 clips x 5 frames at
S = 224 is 5000 x 162 816 B = 0.8 GB; at S = 128, 0.3 GB; every worker of a node holds its own
copy. Fine for SynthAVS-size data; a larger data set wants an index key -> (shard, member) and
ranged reads instead.

No mask is ever read in training: :func:`strip_ground_truth` drops the ``m*.png`` members
(and the Maskiges, which training does not use) from each raw sample and marks the sample as
having none, before :func:`tasks.shards.schema.decode_sample` sees it; only the train split is
read. The validation and test scores (``train.val_split`` every epoch, ``train.test_split``
after the last; both AVSBench metrics on the masks, as for every model) are evaluation, not
training: they never reach the loss; ``train.val_split=null`` drops the per-epoch one.

Anchors are split between the ranks as torch's ``DistributedSampler`` does: one permutation
per epoch (``train.loader.seed + epoch``), padded by repetition to a multiple of the world
size, rank r taking every W-th; so every rank makes the same number of steps (no DDP deadlock)
and ``steps_per_epoch`` is exact (the poly schedule reaches 0 at the last step). Augmentation
(``train.loader.augment``): a random resized crop (``crop_scale``) and horizontal flip drawn
for every image on its own (anchor and partners alike), seeded by (seed, epoch, rank, step).

The step: ``model(frames=B x 3 x S x S, logmel=B x 96 x 64, positive_frames=B x K x 3 x S x S,
negative_frames=B x M x ..., positive_valid=B x K, negative_valid=B x M)`` returns the loss
dict (through ``forward``, so DDP syncs the gradients); AdamW (``train.optimizer``) over the
trainable parameters only (``tasks.train.optim`` leaves the frozen backbone and VGGish out);
the gradient clipped to ``train.grad_clip``; a checkpoint every ``train.checkpoint_every``
epochs and after the last, resumed as ``tasks.train.loop`` resumes.

The inference threshold (:func:`calibrate_threshold`): after the last epoch, before the test
scores and the last checkpoint, the threshold on the cosine map becomes the one of a grid
(-0.9 .. 0.9) that scores the best mIoU on ``train.moca_threshold_split`` (default val), stored
in the checkpoint's model options so that every later evaluation uses it. It is one number read
off that split's masks, as a threshold is chosen on validation data for any model; the train
split's masks are still never read. ``train.moca_threshold_split=null`` keeps ``model.threshold``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from infra.config import Config
from infra.storage import Storage, StorageError, join
from tasks.train.loop import TrainPlan, build_run_model, end_epoch, prepared_model, worker_context
from tasks.train.run import TrainResult, TrainSetupError, prepare, run_training

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.parquet"  # tasks.preprocess.PAIRS_FILE (not imported: that module pulls in Ray Data and SAM)
TRAIN_SPLIT = "train"
LOGMEL_SHAPE = (96, 64)
_MASK_MEMBER = re.compile(r"^m\d{3}\.png$")
_MASKIGE_MEMBER = re.compile(r"^g\d{3}\.png$")


def trainable_moca_models() -> tuple[str, ...]:
    """Registry names this trainer trains: MoCA and the similarity baseline."""
    from models.build import MOCA_MODELS

    return tuple(m for m in MOCA_MODELS if not training_free(m))


def training_free(name: str) -> bool:
    """The saliency baseline learns nothing (frozen features, the most salient Maskige proposal):
    its run is one checkpoint of its frozen weights, written without Ray Train."""
    return "saliency" in name


# -- reading the train split without its masks -------------------------------------------------
def strip_ground_truth(sample: Mapping[str, Any]) -> dict[str, Any]:
    """A raw sample without its ground-truth masks (``m*.png``) and Maskiges (``g*.png``), its
    meta.json saying it has neither, so that ``decode_sample`` cannot read them."""
    from tasks.shards.schema import sample_meta

    meta = dict(sample_meta(sample))
    meta["has_masks"] = False
    meta["has_maskige"] = False
    meta["gt_frames"] = [False] * int(meta.get("num_frames", 0))
    out = {k: sample[k] for k in list(sample.keys())
           if k != "meta.json" and not _MASK_MEMBER.match(k) and not _MASKIGE_MEMBER.match(k)}
    out["meta.json"] = json.dumps(meta).encode()
    return out


def frame_key(sample_key: str, t: int) -> str:
    """The key of frame t of a sample in pairs.parquet (tasks.preprocess.mine_dataset_pairs)."""
    return f"{sample_key}/{t:03d}"


@dataclass
class FrameStore:
    """The train split's frames in memory (module docstring): uint8 ``frames [N, 3, S, S]``,
    float16 ``logmel [N, 96, 64]``, ``index`` frame key -> row."""

    keys: list[str]
    index: dict[str, int]
    frames: torch.Tensor
    logmel: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.frames.numel() * self.frames.element_size() + self.logmel.numel() * self.logmel.element_size()

    @classmethod
    def load(cls, dataset_url: str, storage: Storage, image_size: int, split: str = TRAIN_SPLIT) -> FrameStore:
        """Read every sample of split (its masks and Maskiges stripped before decoding)."""
        from tasks.shards.loader import shard_urls
        from tasks.shards.schema import decode_sample, read_shard, sample_meta

        keys: list[str] = []
        frames: list[torch.Tensor] = []
        logmels: list[np.ndarray] = []
        for url in shard_urls(dataset_url, storage, split):
            for raw in read_shard(url, storage):
                if sample_meta(raw).get("split") != split:
                    continue
                clip = decode_sample(strip_ground_truth(raw), with_audio=False, with_dino=False)
                x = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)  # T x 3 x H x W uint8
                if tuple(x.shape[-2:]) != (image_size, image_size):
                    x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear",
                                      align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
                frames.append(x.contiguous())
                logmels.append(np.asarray(clip.logmel, np.float16))
                keys.extend(frame_key(clip.key, t) for t in range(x.shape[0]))
        if not keys:
            raise ValueError(f"data set {dataset_url} holds no clip of split {split!r}")
        return cls(keys=keys, index={k: i for i, k in enumerate(keys)}, frames=torch.cat(frames),
                   logmel=torch.from_numpy(np.concatenate(logmels)))


# -- pairs ---------------------------------------------------------------------------------------------
@dataclass
class PairIndex:
    """Anchors and their partners as rows of a FrameStore: ``anchors [A]``, ``positives [A, K]``,
    ``negatives [A, M]`` (int64, -1 = padding)."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchors.numel())


def train_pairs(pairs_url: str, storage: Storage, split: str = TRAIN_SPLIT) -> Any:
    """The rows of pairs.parquet for split when it has a ``split`` column; else every row (the
    preprocess step writes none: :func:`pair_index` keeps the anchors of the store's split)."""
    from tasks.enrich.pairs import read_pairs

    df = read_pairs(pairs_url, storage)
    if "split" in df.columns:
        df = df[df["split"] == split]
    return df.reset_index(drop=True)


def pair_index(df: Any, index: Mapping[str, int]) -> PairIndex:
    """Rows of the pairs table -> PairIndex over a store's ``index`` (key -> row); partners the
    store lacks are padding; anchors the store lacks, or left with no valid negative, are dropped."""
    k = max((len(p) for p in df["positives"]), default=0)
    m = max((len(n) for n in df["negatives"]), default=0)
    anchors, positives, negatives = [], [], []
    for key, pos, neg in zip(df["key"], df["positives"], df["negatives"]):
        row = index.get(key)
        negs = [index.get(x, -1) for x in neg]
        if row is None or not any(n >= 0 for n in negs):
            continue
        anchors.append(row)
        positives.append([index.get(x, -1) for x in pos] + [-1] * (k - len(pos)))
        negatives.append(negs + [-1] * (m - len(negs)))
    a = len(anchors)
    return PairIndex(torch.tensor(anchors, dtype=torch.long),
                     torch.tensor(positives, dtype=torch.long).reshape(a, k),
                     torch.tensor(negatives, dtype=torch.long).reshape(a, m))


def rank_anchors(n: int, rank: int, world: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """This rank's anchor positions of one epoch (DistributedSampler's rule: every rank the same count)."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(n)
    per_rank = math.ceil(n / world)
    if per_rank * world > n:
        order = torch.cat([order, order[: per_rank * world - n]])
    return order[rank::world]


class PairBatches:
    """Batches of anchors with their partners from a FrameStore (module docstring)."""

    def __init__(self, store: FrameStore, pairs: PairIndex, batch_size: int, image_size: int, augment: bool,
                 crop_scale: Sequence[float] = (0.5, 1.0), hflip_p: float = 0.5, seed: int = 0):
        self.store, self.pairs = store, pairs
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.augment, self.crop_scale, self.hflip_p = augment, (float(crop_scale[0]), float(crop_scale[1])), hflip_p
        self.seed = int(seed)

    def steps(self, world: int) -> int:
        return math.ceil(math.ceil(len(self.pairs) / world) / self.batch_size)

    def _images(self, rows: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Rows (any shape, -1 = padding: zeros) -> float [..., 3, S, S] in [0, 1], each augmented alone."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resized_crop_image

        from tasks.shards.loader import random_resized_crop_box

        flat = rows.reshape(-1)
        x = self.store.frames[flat.clamp(min=0)]  # n x 3 x S x S uint8
        if self.augment:
            s = self.image_size
            out = torch.empty_like(x)
            for i in range(x.shape[0]):
                top, left, h, w = random_resized_crop_box(s, s, self.crop_scale, rng)
                img = resized_crop_image(x[i], top, left, h, w, [s, s], interpolation=InterpolationMode.BILINEAR,
                                         antialias=True)
                out[i] = img.flip(-1) if rng.random() < self.hflip_p else img
            x = out
        x = x.float().div_(255.0) * (flat >= 0).view(-1, 1, 1, 1)
        return x.reshape(*rows.shape, *x.shape[1:])

    def epoch(self, epoch: int, rank: int, world: int) -> Iterator[dict[str, Any]]:
        mine = rank_anchors(len(self.pairs), rank, world, self.seed, epoch, shuffle=True)
        for step, start in enumerate(range(0, len(mine), self.batch_size)):
            pick = mine[start : start + self.batch_size]
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, rank, step]))
            anchors = self.pairs.anchors[pick]
            pos, neg = self.pairs.positives[pick], self.pairs.negatives[pick]
            yield {
                "frames": self._images(anchors, rng),
                "logmel": self.store.logmel[anchors].float(),
                "positive_frames": self._images(pos, rng),
                "negative_frames": self._images(neg, rng),
                "positive_valid": pos >= 0,
                "negative_valid": neg >= 0,
                "anchor_keys": [self.store.keys[int(i)] for i in anchors],
            }


# -- checks before any worker starts --------------------------------------------------------------
def check_moca_model(cfg: Config) -> str:
    from models.build import MOCA_MODELS

    name = cfg.model.registry_name
    if name not in MOCA_MODELS:
        raise TrainSetupError(f"train_moca trains the unsupervised models {', '.join(trainable_moca_models())} from "
                              f"mined pairs (and writes the run of the training-free {', '.join(m for m in MOCA_MODELS if training_free(m))}); "
                              f"model {name!r} (model.name={cfg.model.name}, model.size={cfg.model.size}) is not "
                              "one: pass model=moca_tiny (or moca_r50), or train supervised models with "
                              "flows.train_combo")
    return name


def _check_pairs(dataset_url: str, storage: Storage) -> int:
    """pairs.parquet of the data set: there, readable, with a frame that has a negative partner.
    Returns its number of rows (every split's: the file does not record the split)."""
    url = join(dataset_url, PAIRS_FILE)
    try:
        exists = storage.exists(url)
    except StorageError as e:
        raise TrainSetupError(f"train.dataset={dataset_url}: cannot look for {PAIRS_FILE}: {e}") from None
    if not exists:
        raise TrainSetupError(f"train.dataset={dataset_url} has no {PAIRS_FILE}: MoCA trains on mined pairs; make "
                              "the data set with flows.preprocess and frame embeddings (preprocess.embed), which "
                              "mines them")
    try:
        df = train_pairs(url, storage)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds on a bad file
        raise TrainSetupError(f"{url}: not a readable pairs file ({type(e).__name__}: {e})") from None
    if not any(len(n) for n in df["negatives"]):
        raise TrainSetupError(f"{url}: no frame has a negative partner (preprocess.pairs.num_neg, "
                              "preprocess.pairs.neg_threshold): the contrastive loss needs one")
    return len(df)


def prepare_moca(cfg: Config, storage: Storage, dataset_url: str, run_name: str) -> TrainPlan:
    """The checks of tasks.train.run.prepare, the model being a trainable MoCA and the data set
    having pairs; steps_per_epoch from the train frames (train clips x T, from the manifest; the
    pairs file's rows when T varies): an upper bound, as anchors without a negative in the store
    are dropped by the workers."""
    from tasks.shards.manifest import read_manifest

    check_moca_model(cfg)
    plan = prepare(cfg, storage, dataset_url, run_name)
    rows = _check_pairs(plan.dataset_url, storage)
    manifest = read_manifest(plan.dataset_url, storage)
    t = cfg.train
    num_frames = manifest.provenance.get("config", {}).get("decode", {}).get("num_frames")
    clips = manifest.split_counts().get(TRAIN_SPLIT)
    anchors = min(rows, clips * int(num_frames)) if num_frames and clips else rows
    steps = math.ceil(math.ceil(anchors / t.num_workers) / t.loader.batch_size)
    return dataclasses.replace(plan, steps_per_epoch=max(1, steps))


# -- the per-worker loop ---------------------------------------------------------------------------------
def moca_loop_per_worker(config: dict[str, Any], storage: Storage | None = None) -> None:
    """One Ray Train worker: the frame store, the pairs, the contrastive steps (module docstring)."""
    w = worker_context(config, storage)
    cfg, plan, storage, rank, world, device, amp = w.cfg, w.plan, w.storage, w.rank, w.world, w.device, w.amp
    t, lc = cfg.train, cfg.train.loader

    loaded = time.perf_counter()
    store = FrameStore.load(plan.dataset_url, storage, lc.image_size)
    pairs = pair_index(train_pairs(join(plan.dataset_url, PAIRS_FILE), storage), store.index)
    if len(pairs) == 0:
        raise RuntimeError(f"rank {rank}: no train anchor of {PAIRS_FILE} has a negative partner in the shards")
    batches = PairBatches(store, pairs, lc.batch_size, lc.image_size, lc.augment, lc.crop_scale, lc.hflip_p, lc.seed)
    load_s = time.perf_counter() - loaded

    model, bare, (optimizer, scheduler, start_epoch, step, history) = prepared_model(w, lambda: build_run_model(plan, storage))

    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        anchors, rank_batches, keys = 0, 0, []
        for batch in batches.epoch(epoch, rank, world):
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            with amp:
                losses = model(**inputs)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].float().backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in bare.parameters() if p.requires_grad], t.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n = len(batch["anchor_keys"])
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach().float()) * n
            anchors, rank_batches = anchors + n, rank_batches + 1
            if t.hooks.report_clip_ids:
                keys.extend(batch["anchor_keys"])

        extra = {"anchors": len(pairs), "frame_store_bytes": store.nbytes, "frame_store_load_s": load_s}
        if epoch + 1 == t.epochs and t.moca_threshold_split and hasattr(bare, "threshold"):
            given = bare.threshold
            chosen, table = calibrate_threshold(bare, t.moca_threshold_split, plan, cfg, storage, device, amp)
            bare.threshold = chosen
            plan = dataclasses.replace(plan, model_options={**plan.model_options, "threshold": chosen})
            split = t.moca_threshold_split
            extra.update({"threshold": chosen, "threshold_given": given, f"{split}_miou_at_threshold": table[chosen],
                          f"{split}_miou_at_threshold_given": table.get(round(float(given), 2))})
        end_epoch(model, optimizer, scheduler, cfg, plan, storage, device, amp, epoch, step, started, sums, anchors,
                  history, rank_batches, keys,  # keys: anchor frame keys
                  extra=extra)


# -- the inference threshold -------------------------------------------------------------------------------
THRESHOLD_GRID = tuple(round(-0.9 + 0.05 * i, 2) for i in range(37))  # -0.9 .. 0.9 on the cosine map


@torch.no_grad()
def calibrate_threshold(bare: torch.nn.Module, split: str, plan: TrainPlan, cfg: Config, storage: Storage,
                        device: torch.device, amp: Any) -> tuple[float, dict[float, float]]:
    """The threshold of THRESHOLD_GRID whose predictions score the best mIoU (AVSBench protocol)
    on ``split``, and every threshold's mIoU. The model's logits are ``(score - threshold) *
    logit_scale`` (``models.moca``), so one forward pass gives the scores and every threshold is
    applied to them. Every rank scores its share of the split; the metrics sum over the ranks
    (each rank computes every threshold in the same order). Ties go to the lowest threshold."""
    from tasks.evaluate.scoring import new_metric
    from tasks.train.loop import split_predictions

    metrics = {th: new_metric(plan.setting, plan.num_classes).to(device) for th in THRESHOLD_GRID}
    for batch, pred in split_predictions(bare, split, plan, cfg, storage, device, amp):
        scores = pred.float() / bare.logit_scale + bare.threshold
        for i in range(len(batch["clip_id"])):
            gt = batch["gt_frames"][i]
            if bool(gt.any()):
                for th, metric in metrics.items():
                    metric.update((scores[i][gt] - th) * bare.logit_scale, batch["masks"][i][gt])
    with warnings.catch_warnings():  # a rank without data of this split computes too: expected
        warnings.filterwarnings("ignore", message=".*compute.*before the ``update``")
        table = {th: float(metric.compute()["miou"]) for th, metric in metrics.items()}
    best = max(table.values())
    return next(th for th in THRESHOLD_GRID if table[th] == best), table


# -- the run --------------------------------------------------------------------------------------------
def run_moca_training(cfg: Config, storage: Storage, dataset_url: str,
                      logger: logging.Logger | logging.LoggerAdapter | None = None,
                      callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train a MoCA model (module docstring) with Ray Train, as tasks.train.run.run_training trains
    the supervised ones (the same run folder, resume, progress lines, result), with MoCA's checks
    and per-worker loop. A training-free model (the saliency baseline) gets its run without Ray
    Train: :func:`save_training_free`."""
    if training_free(cfg.model.registry_name):
        return save_training_free(cfg, storage, dataset_url, logger)
    return run_training(cfg, storage, dataset_url, logger, callbacks, plan_fn=prepare_moca,
                        loop=moca_loop_per_worker, kind=f"unsupervised, from {PAIRS_FILE}: no mask is read")


def save_training_free(cfg: Config, storage: Storage, dataset_url: str,
                       logger: logging.Logger | logging.LoggerAdapter | None = None) -> TrainResult:
    """The run of a model that learns nothing: the same checks and run folder as a trained one,
    and one checkpoint (``checkpoint_epoch0000``, epoch 0, no optimiser state) holding its frozen
    weights, so that evaluation, reports and ``flows.evaluate`` take it as any other. A run that
    has its checkpoint already is reused. No pairs are needed: the model reads none."""
    from infra.config import to_dict
    from tasks.checkpoint import CheckpointMeta, read_meta, save_checkpoint

    logger = logger or log
    run_name = cfg.train.run_name or f"{cfg.model.registry_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = prepare(cfg, storage, dataset_url, run_name)
    result = TrainResult(run_name=run_name, run_dir=plan.run_dir, checkpoint_uri=None, metrics={}, history=[],
                         dataset_url=plan.dataset_url, dataset_version=plan.dataset_version, model=plan.model,
                         setting=plan.setting)
    if plan.latest_checkpoint is not None:
        logger.info("run %s has its checkpoint already (%s): %s learns nothing, reusing it", run_name,
                    plan.latest_checkpoint, plan.model)
        meta = read_meta(plan.latest_checkpoint, storage)
        result.checkpoint_uri, result.metrics, result.history = plan.latest_checkpoint, dict(meta.metrics), list(meta.history)
        return result
    torch.manual_seed(cfg.seed)
    model = build_run_model(plan, storage)
    meta = CheckpointMeta(model=plan.model, model_options=plan.model_options, epoch=0, step=0,
                          dataset_url=plan.dataset_url, dataset_version=plan.dataset_version, setting=plan.setting,
                          config=to_dict(cfg), metrics={"epoch": 0, "trained": False}, history=[])
    uri = join(plan.run_dir, "checkpoint_epoch0000")
    with tempfile.TemporaryDirectory(prefix="avs-ckpt-") as folder:
        save_checkpoint(folder, model, meta)
        for name in sorted(os.listdir(folder)):
            storage.put_file(os.path.join(folder, name), join(uri, name))
    logger.info("%s learns nothing (training-free): its frozen weights written as %s, no Ray Train", plan.model, uri)
    result.checkpoint_uri, result.metrics = uri, dict(meta.metrics)
    return result
