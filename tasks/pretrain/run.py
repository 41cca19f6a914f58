"""Pretraining the tiny encoders on Ray Train, and releasing their weights with a card.

::

    prepare_pretraining(cfg, storage, set_url, name)   on the driver: checks, the plan (no worker yet)
      -> run_training(..., plan_fn, pretrain_loop_per_worker)   tasks.train.run's TorchTrainer, run folder,
                                                             resume, checkpoints and per-epoch lines
      -> release(...)                                        backbone.pt, vggish.pt, card.json, card.md

The model is ``models.build.pretrain_registry[...]`` (``models.pretrain.EncoderPretraining``): the
backbone with a dense category head (cross-entropy over K categories + background on every pixel
of every frame) and VGGish with a linear tagger (binary cross-entropy per category, per second).

Each worker holds its share of the pretraining set in memory (chunks split by rank, ``tasks.pretrain.data``;
SynthAVS at 96 px is about 250 KB a clip) and makes ``steps_per_epoch`` steps an epoch, the same on
every rank (each rank draws batches from its own clips, in a permutation per epoch): no rank waits for
another in DDP. Clips go through the shard loader's own training transform
(``tasks.shards.loader.ClipTransform``: one random resized crop and flip per clip, frames bilinear,
category maps nearest), at ``train.loader.image_size``. After every epoch the held-out clips of the
pretraining set (its ``val`` split) are scored: the category IoU per category (pooled over all
pixels: summed intersections over summed unions), their mean, the background's, the share of object
pixels given their own category, and the audio tagger's average precision per category and its mean
(mAP) over the seconds; confusion counts and tag scores are summed over the ranks.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from infra.config import Config
from infra.storage import Storage, absolute, join
from tasks.pretrain.data import MANIFEST, PretrainArrays, read_chunks
from tasks.shards.loader import ClipTransform
from tasks.checkpoint import load_checkpoint
from tasks.train.loop import TrainPlan, prepared_model, report_epoch, sum_over_ranks, worker_context
from tasks.train.run import TrainResult, TrainSetupError, check_existing_run, runs_root, run_training

MODEL = "encoders_tiny"  # models.build.pretrain_registry
SETTING = "pretrain"
RELEASE_FILES = {"backbone": "backbone.pt", "audio_encoder": "vggish.pt"}  # state dict prefix -> file


# -- the plan, on the driver -------------------------------------------------------------------
def prepare_pretraining(cfg: Config, storage: Storage, set_url: str, run_name: str) -> TrainPlan:
    """Checks before any worker starts, and what every worker needs."""
    t = cfg.train
    manifest_url = join(set_url, MANIFEST)
    if not storage.exists(manifest_url):
        raise TrainSetupError(f"pretraining set {set_url}: no {MANIFEST} there (missing or unfinished)")
    manifest = json.loads(storage.read_text(manifest_url))
    train_chunks = manifest["chunks"]["train"]
    if len(train_chunks) < t.num_workers:
        raise TrainSetupError(f"pretraining set {set_url} has {len(train_chunks)} train chunk(s) for "
                              f"train.num_workers={t.num_workers}: use fewer workers or smaller pretrain.clips_per_chunk")
    if t.loader.image_size > min(manifest["frame_size"]):
        raise TrainSetupError(f"train.loader.image_size={t.loader.image_size} is larger than the pretraining set's "
                              f"frames {manifest['frame_size']}")
    version = "p-" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    run_dir = join(runs_root(cfg), run_name)
    latest = check_existing_run(run_dir, run_name, storage, cfg, MODEL, version)
    clips_per_rank = math.ceil(manifest["counts"]["train"] / t.num_workers)
    options = {"num_categories": int(manifest["num_categories"]), "head_dim": cfg.pretrain.head_dim}
    return TrainPlan(model=MODEL, model_options=options, num_classes=options["num_categories"], setting=SETTING,
                     dataset_url=absolute(set_url), dataset_version=version,
                     steps_per_epoch=max(1, math.ceil(clips_per_rank / t.loader.batch_size)), run_dir=run_dir,
                     latest_checkpoint=latest)


# -- held-out scores ---------------------------------------------------------------------------
def category_scores(conf: torch.Tensor) -> dict[str, Any]:
    """From a [K+1, K+1] pixel confusion matrix (rows truth, columns prediction, 0 background): the
    IoU of each class (pooled), their mean over the categories present in truth or prediction, the
    background's IoU, and the share of object pixels given their own category."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    cats = iou[1:]
    seen = ~torch.isnan(cats)
    obj = conf[1:].sum()
    return {"iou": iou.tolist(), "miou_categories": float(cats[seen].mean()) if seen.any() else 0.0,
            "iou_background": float(iou[0]), "object_pixel_accuracy": float(inter[1:].sum() / obj) if obj > 0 else 0.0}


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per column: the average precision of ranking by score (mean of the precision at each positive,
    ties broken by order); NaN for a column without a positive. scores, labels: [N, K]."""
    out = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        y = labels[np.argsort(-scores[:, k], kind="stable"), k].astype(bool)
        if y.any():
            hits = np.cumsum(y)
            out[k] = float(np.mean(hits[y] / (np.flatnonzero(y) + 1)))
    return out


@torch.no_grad()
def held_out_scores(bare: torch.nn.Module, clips: PretrainArrays | None, size: int, batch: int,
                    device: torch.device) -> dict[str, Any]:
    """Category and audio scores of this rank's held-out clips, summed over every rank (each rank
    calls this once, with or without clips)."""
    k = bare.num_categories
    conf = torch.zeros((k + 1) ** 2, dtype=torch.float64, device=device)
    scores, labels = [], []
    plain = ClipTransform(size, augment=False)
    was_training = bare.training
    bare.eval()
    for start in range(0, len(clips) if clips is not None else 0, batch):
        frames, cats, logmel, audible = _batch(clips, range(start, min(start + batch, len(clips))), plain, None, device)
        out = bare(frames, logmel)
        pred = out["categories"].argmax(1).flatten()
        conf += torch.bincount(cats.flatten(0, 1).flatten().long() * (k + 1) + pred, minlength=(k + 1) ** 2).double()
        scores.append(out["audio_tags"].flatten(0, 1).float().cpu())
        labels.append(audible.flatten(0, 1).cpu())
    bare.train(was_training)
    conf = torch.tensor(sum_over_ranks(conf.tolist(), device)).reshape(k + 1, k + 1)
    s = torch.cat(scores) if scores else torch.zeros(0, k)
    y = torch.cat(labels) if labels else torch.zeros(0, k)
    if dist.is_available() and dist.is_initialized():  # every rank's tag scores, for the ranking
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (s.numpy(), y.numpy()))
        s = torch.from_numpy(np.concatenate([g[0] for g in gathered]))
        y = torch.from_numpy(np.concatenate([g[1] for g in gathered]))
    cat = category_scores(conf)
    ap = average_precision(s.numpy(), y.numpy()) if len(s) else np.full(k, np.nan)
    return {"val_category_miou": cat["miou_categories"], "val_iou_background": cat["iou_background"],
            "val_object_pixel_accuracy": cat["object_pixel_accuracy"], "val_category_iou": cat["iou"][1:],
            "val_audio_map": float(np.nanmean(ap)) if not np.isnan(ap).all() else 0.0,
            "val_audio_ap": [None if np.isnan(v) else float(v) for v in ap]}


# -- the per-worker loop -------------------------------------------------------------------------
def _batch(clips: PretrainArrays, idx: Any, transform: ClipTransform, rng: np.random.Generator | None,
           device: torch.device) -> tuple[torch.Tensor, ...]:
    """Frames B x T x 3 x S x S in [0, 1], category maps B x T x S x S, log-mel, audible, on device:
    each clip through ``transform`` (its category maps warped as masks are)."""
    rng = rng or np.random.default_rng(0)  # no augmentation draws anything from it
    out = []
    for i in idx:
        clip = SimpleNamespace(frames=clips.frames[i], maskiges=None, masks=clips.categories[i],
                               gt_frames=[True] * clips.frames.shape[1], logmel=clips.logmel[i], clip_id=str(i))
        out.append(transform(clip, rng))
    frames = torch.stack([o["frames"] for o in out]).to(device)
    cats = torch.stack([o["masks"] for o in out]).to(device)
    logmel = torch.from_numpy(np.stack([clips.logmel[i] for i in idx]).astype(np.float32)).to(device)
    audible = torch.from_numpy(np.stack([clips.audible[i] for i in idx])).to(device)
    return frames, cats, logmel, audible


def pretrain_loop_per_worker(config: dict[str, Any], storage: Storage | None = None) -> None:
    from models.build import pretrain_registry

    w = worker_context(config, storage)
    cfg, plan, storage, rank, world, device, amp = w.cfg, w.plan, w.storage, w.rank, w.world, w.device, w.amp
    t = cfg.train
    model, bare, (optimizer, scheduler, start_epoch, step, history) = prepared_model(
        w, lambda: pretrain_registry[plan.model](**plan.model_options))

    manifest = json.loads(storage.read_text(join(plan.dataset_url, MANIFEST)))
    train = read_chunks(plan.dataset_url, manifest["chunks"]["train"][rank::world], storage)
    val_names = manifest["chunks"]["val"][rank::world] if t.val_split else []
    val = read_chunks(plan.dataset_url, val_names, storage) if val_names else None
    loader = t.loader
    transform = ClipTransform(loader.image_size, loader.augment, tuple(loader.crop_scale), loader.hflip_p)
    batch = loader.batch_size

    for epoch in range(start_epoch, t.epochs):
        started = time.perf_counter()
        model.train()
        rng = np.random.default_rng([loader.seed, epoch, rank])
        need = plan.steps_per_epoch * batch
        order = np.concatenate([rng.permutation(len(train)) for _ in range(math.ceil(need / len(train)))])[:need]
        sums = {"loss": 0.0, "loss_categories": 0.0, "loss_audio": 0.0}
        for s in range(plan.steps_per_epoch):
            frames, cats, logmel, audible = _batch(train, order[s * batch:(s + 1) * batch], transform, rng, device)
            with amp:
                outputs = model(frames, logmel)
            losses = bare.loss({k: v.float() for k, v in outputs.items()}, cats, audible)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(bare.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            for key in sums:
                sums[key] += float(losses[key].detach()) * batch
        totals = sum_over_ranks([sums[k] for k in sorted(sums)] + [float(need)], device)
        seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": max(scheduler.get_last_lr()),
                                   **{f"train_{k}": v / totals[-1] for k, v in zip(sorted(sums), totals[:-1])},
                                   "samples": int(totals[-1]), "samples_per_s": totals[-1] / seconds}
        if t.val_split:
            metrics.update(held_out_scores(bare, val, loader.image_size, batch, device))
        metrics["epoch_s"] = time.perf_counter() - started
        metrics["eta_s"] = metrics["epoch_s"] * (t.epochs - epoch - 1)
        history.append(metrics)
        report_epoch(model, optimizer, scheduler, cfg, plan, epoch, step, metrics, history, {**metrics, "rank": rank})


def run_pretraining(cfg: Config, storage: Storage, set_url: str, logger: Any = None) -> TrainResult:
    """tasks.train.run.run_training with the pretraining plan and loop (module docstring)."""
    return run_training(cfg, storage, set_url, logger, plan_fn=prepare_pretraining, loop=pretrain_loop_per_worker,
                        kind="encoder pretraining")


# -- the release -------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def embedding_scale(vggish_state: dict[str, torch.Tensor], logmel: np.ndarray, batch: int = 256) -> dict[str, Any]:
    """Scale the tiny VGGish's last layer so that its embeddings have a root mean square of 1 per
    dimension (mean norm sqrt(D)) on the given seconds (``logmel [N, 96, 64]``, held out).

    Trained through a linear tagger alone, the encoder's embeddings grow freely: the first release had
    a mean norm of about 240 for 128 dimensions (held-out seconds), and every model that fuses them (FiLM, attention,
    Maskige conditioning) starts from inputs two orders of magnitude larger than its image features.
    The last layer is Linear then ReLU, which is positively homogeneous: multiplying its weight and bias
    by c > 0 multiplies every embedding by c exactly and changes no ranking of the tags. Returns the new
    state with ``scale``, ``norm_before`` and ``norm_after``.
    """
    from models.build import pretrain_registry

    enc = pretrain_registry[MODEL]().audio_encoder
    enc.load_state_dict(vggish_state)
    enc.eval()
    last = max(i for i, m in enumerate(enc.embeddings) if isinstance(m, torch.nn.Linear))

    def mean_norm() -> float:
        with torch.no_grad():
            norms = [enc(torch.from_numpy(logmel[i:i + batch].astype(np.float32))).norm(dim=1)
                     for i in range(0, len(logmel), batch)]
        return float(torch.cat(norms).mean())

    before = mean_norm()
    if not before > 0:
        raise ValueError(f"the VGGish embeddings of the {len(logmel)} held-out seconds are all zero: nothing to scale")
    scale = math.sqrt(enc.out_dim) / before
    with torch.no_grad():
        enc.embeddings[last].weight.mul_(scale)
        enc.embeddings[last].bias.mul_(scale)
    return {"state": {k: v.detach().clone() for k, v in enc.state_dict().items()}, "scale": scale,
            "norm_before": before, "norm_after": mean_norm()}


def release(cfg: Config, storage: Storage, result: TrainResult, out_dir: str, set_manifest: dict[str, Any],
            overrides: list[str], held_out_logmel: np.ndarray | None = None) -> dict[str, Any]:
    """From the run's last checkpoint: ``backbone.pt`` (the TinyCNN, for ``model.backbone_weights``),
    ``vggish.pt`` (the VGGish, for ``model.vggish_weights``), ``card.json`` and ``card.md`` in out_dir
    (local or s3://). ``overrides``: the flow's, written on the card as the command that remakes it.
    ``held_out_logmel`` (``[N, 96, 64]``, the held-out seconds): VGGish's embeddings are rescaled to a
    root mean square of 1 on them (``embedding_scale``); None keeps them as trained. Returns the card."""
    from tasks.synthavs.categories import categories

    loaded = load_checkpoint(result.checkpoint_uri, storage, expect_model=MODEL)
    files: dict[str, Any] = {}
    scaling: dict[str, float] | None = None
    for prefix, name in RELEASE_FILES.items():
        part = {k[len(prefix) + 1:]: v for k, v in loaded.model_state.items() if k.startswith(prefix + ".")}
        if name == "vggish.pt" and held_out_logmel is not None:
            scaled = embedding_scale(part, held_out_logmel)
            part = scaled.pop("state")
            scaling = {k: round(v, 6) for k, v in scaled.items()}
        buf = io.BytesIO()
        torch.save(part, buf)
        data = buf.getvalue()
        storage.write_bytes(join(out_dir, name), data)
        files[name] = {"sha256": _sha256(data), "bytes": len(data), "tensors": len(part)}
    files["backbone.pt"]["loads_as"] = "model.backbone_weights (TinyCNN, channels 16-32-64-128: every *_tiny model)"
    files["vggish.pt"]["loads_as"] = "model.vggish_weights (VGGish widths 8-16-32-32, FC 128-128, 128-d: every *_tiny model)"
    if scaling is not None:
        files["vggish.pt"]["embedding_scale"] = scaling
    last = result.metrics
    k = int(set_manifest["num_categories"])
    names = [c.name for c in sorted(categories(k), key=lambda c: c.id)]
    t = cfg.train
    card = {
        "name": "synthavs-tiny",
        "what": "The tiny encoders every *_tiny model builds, pretrained on SynthAVS: the TinyCNN by dense "
                "segmentation of every object's category on every frame, the tiny VGGish by the categories "
                "heard in each second (multi-label)",
        "files": files,
        "data": {"generator": "SynthAVS", "seed": set_manifest["synth"]["seed"], "preset": set_manifest["synth"]["preset"],
                 "setting": set_manifest["setting"], "train_clips": set_manifest["counts"]["train"],
                 "held_out_clips": set_manifest["counts"]["val"], "seconds_per_clip": set_manifest["num_seconds"],
                 "frame_size": set_manifest["frame_size"], "categories": names,
                 "disjoint_from": "every scored split: those are drawn with data.synth.seed (0 unless changed)"},
        "training": {"run": result.run_name, "checkpoint": result.checkpoint_uri, "epochs": last.get("epoch"),
                     "steps": last.get("step"), "batch_clips": t.loader.batch_size, "image_size": t.loader.image_size,
                     "lr": t.lr, "optimizer": t.optimizer, "workers": t.num_workers,
                     "train_s": round(sum(h.get("epoch_s", 0.0) for h in result.history), 1)},
        "held_out": {"category_miou": last.get("val_category_miou"), "iou_background": last.get("val_iou_background"),
                     "object_pixel_accuracy": last.get("val_object_pixel_accuracy"),
                     "category_iou": dict(zip(names, last.get("val_category_iou") or [])),
                     "audio_map": last.get("val_audio_map"), "audio_ap": dict(zip(names, last.get("val_audio_ap") or []))},
        "made_by": " ".join(["python -m flows.pretrain", *overrides]),
        "made": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    storage.write_text(join(out_dir, "card.json"), json.dumps(card, indent=1) + "\n")
    storage.write_text(join(out_dir, "card.md"), card_markdown(card))
    return card


def _scaling_lines(scaling: dict[str, float] | None) -> list[str]:
    if not scaling:
        return []
    return [f"VGGish's last layer is scaled by {scaling['scale']:.4g} (`embedding_scale`): the mean embedding norm on "
            f"the held-out seconds goes from {scaling['norm_before']:.1f} to {scaling['norm_after']:.2f} (root mean "
            "square 1 per dimension); the tags' ranking, hence the mAP, is unchanged.", ""]


def card_markdown(card: dict[str, Any]) -> str:
    """The card for people: what, data, training, held-out figures, files and their sha256."""
    d, tr, h = card["data"], card["training"], card["held_out"]
    lines = [f"# {card['name']}: pretrained tiny encoders", "", card["what"] + ".", "",
             "## Data", "",
             f"SynthAVS ({d['preset']}, seed {d['seed']}, setting {d['setting']}): {d['train_clips']} clips for training, "
             f"{d['held_out_clips']} held out, {d['seconds_per_clip']} s each, {d['frame_size'][0]}x{d['frame_size'][1]} px, "
             f"categories {', '.join(d['categories'])}. Disjoint from {d['disjoint_from']}.", "",
             "## Training", "",
             f"{tr['epochs']} epochs, {tr['steps']} steps of {tr['batch_clips']} clips at {tr['image_size']} px, "
             f"{tr['optimizer']} lr {tr['lr']}, {tr['workers']} Ray Train worker(s), {tr['train_s']} s. Run `{tr['run']}`.", "",
             f"Remake: `{card['made_by']}` ({card['made']}).", "",
             "## Held out", "",
             f"- image: category mIoU {h['category_miou']:.3f}, background IoU {h['iou_background']:.3f}, "
             f"object pixels given their own category {h['object_pixel_accuracy']:.3f}",
             "  (" + ", ".join(f"{n} {v:.2f}" for n, v in h["category_iou"].items() if v is not None) + ")",
             f"- audio: mAP {h['audio_map']:.3f} over the held-out seconds",
             "  (" + ", ".join(f"{n} {v:.2f}" for n, v in h["audio_ap"].items() if v is not None) + ")", "",
             *_scaling_lines(card["files"].get("vggish.pt", {}).get("embedding_scale")),
             "## Files", "", "| file | loads as | bytes | sha256 |", "| --- | --- | --- | --- |"]
    lines += [f"| `{n}` | {f['loads_as']} | {f['bytes']} | `{f['sha256']}` |" for n, f in card["files"].items()]
    return "\n".join(lines) + "\n"


def check_release(folder: str, storage: Storage) -> dict[str, Any]:
    """A release folder's card, after checking every file's sha256 against it (ValueError naming the file)."""
    card = json.loads(storage.read_text(join(folder, "card.json")))
    for name, f in card["files"].items():
        digest = _sha256(storage.read_bytes(join(folder, name)))
        if digest != f["sha256"]:
            raise ValueError(f"{join(folder, name)}: sha256 {digest} differs from its card's {f['sha256']}")
    return card

