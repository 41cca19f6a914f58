"""Can the visual half of SynthAVS be learned from scratch? A probe without sound.

    .venv/bin/python bench/shape_probe.py                                  # hard, 96 px, about 15 CPU min
    .venv/bin/python bench/shape_probe.py --synth-override colour_follows_category=true texture_follows_category=true
    .venv/bin/python bench/shape_probe.py --quick                          # a smoke run

Why it exists. On SynthAVS ``hard`` every model of the quality benchmark stays below "every object",
and ``bench/quality_gpu.py --audio oracle`` (sound replaced by a clean code of the sounding
categories) showed that perfect audio does not lift them: what they miss is telling which object
is of which category from the pixels. This probe asks that question alone: the reference learner's
U-Net (``bench/reference_unet.py``, without audio) labels every pixel with the category of the
object on it (K categories + background; every object of every frame labelled, where the S4
benchmark labels one object on one frame of five), trained from scratch with cross-entropy.

Reported on the test clips: the per-category IoU (dataset-level: summed intersections over summed
unions, one confusion matrix over all test pixels), their mean over the K categories, the
background's IoU, and the share of object pixels given their own category. A model that cannot
reach a high category mIoU here cannot pick the sounding object in ``hard`` either, whatever it
hears.

Then the composed oracle (``--compose-clips``, 128 S4 test clips): no training at all, the probe's
category of each pixel kept where perfect hearing says that category sounds in that second, scored
by the AVSBench metric. It is what a learner with those two inputs (the probe's sight, perfect
hearing) can reach; a trained model far below it is missing something its inputs hold.

Last line: ``{"preset", "size", "train_clips", "test_clips", "steps", "batch", "train_s",
"miou_categories", "iou_background", "object_pixel_accuracy", "per_category_iou": {name: iou},
"composed_oracle": {"argmax": {"miou", "fscore"}, "posterior": {"miou", "fscore"}}}``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # clip generators: one thread each (set before numpy loads)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

from reference_unet import ReferenceUNet  # noqa: E402  (bench/)

from infra.config import compose  # noqa: E402
from tasks.pretrain.run import category_scores as scores  # noqa: E402  (the tests read it here)
from tasks.synthavs.categories import categories  # noqa: E402
from tasks.synthavs.generate import category_maps as category_map  # noqa: E402,F401  (the tests read it here)
from tasks.synthavs.generate import generate_clip  # noqa: E402

_SYNTH: dict = {}


def _init(synth_cfg) -> None:
    torch.set_num_threads(1)
    _SYNTH["cfg"] = synth_cfg


def _clip(job: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
    split, index = job
    scene = generate_clip(_SYNTH["cfg"], "s4", split, index)
    return scene.clip.frames, scene.category_maps


def make_clips(synth_cfg, split: str, count: int, procs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 frames [N, T, H, W, 3] and category maps [N, T, H, W] of ``count`` S4 clips."""
    with mp.get_context("fork").Pool(procs, initializer=_init, initargs=(synth_cfg,)) as pool:
        out = pool.map(_clip, [(split, i) for i in range(count)], chunksize=max(1, count // (procs * 8)))
    return torch.from_numpy(np.stack([f for f, _ in out])), torch.from_numpy(np.stack([c for _, c in out]))


def build_probe(num_categories: int, seed: int) -> ReferenceUNet:
    """The reference U-Net without audio, its 1-channel head swapped for K + 1 class logits."""
    torch.manual_seed(seed)
    model = ReferenceUNet(use_audio=False)
    model.head = nn.Conv2d(model.head.in_channels, num_categories + 1, 1)
    return model


def _frames(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 1, 4, 2, 3).float().div_(255)  # B x T x H x W x 3 uint8 -> B x T x 3 x H x W


def confusion(model: ReferenceUNet, frames: torch.Tensor, cats: torch.Tensor, num_classes: int,
              batch: int) -> torch.Tensor:
    """[C, C] pixel counts, rows = truth, columns = prediction, over every frame given."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            pred = model(_frames(frames[i:i + batch]))["masks"].argmax(1)
            truth = cats[i:i + batch].flatten(0, 1).long()
            conf += torch.bincount(truth.flatten() * num_classes + pred.flatten(),
                                   minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return conf


@torch.no_grad()
def composed_oracle(model: ReferenceUNet, synth_cfg, num_clips: int, num_categories: int) -> dict:
    """What the two halves of S4 allow with no training at all: the probe's category of each pixel,
    kept where perfect hearing says that category sounds in that second, scored by the AVSBench
    metric on ``num_clips`` S4 test clips (every frame annotated). Two readings of the probe:
    ``argmax`` (the pixel's most likely category is a sounding one) and ``posterior`` (the probe's
    probability that the pixel's category sounds, thresholded at 0.5 as the protocol thresholds a
    model's probability)."""
    from models.metrics import BinaryAVSMetric

    metrics = {"argmax": BinaryAVSMetric(), "posterior": BinaryAVSMetric()}
    model.eval()
    for i in range(num_clips):
        scene = generate_clip(synth_cfg, "s4", "test", i)
        logits = model(_frames(torch.from_numpy(scene.clip.frames)[None]))["masks"]  # T x (K+1) x H x W
        t = logits.shape[0]
        sounds = torch.zeros(t, num_categories + 1)
        for o in scene.clip.meta["objects"]:
            sounds[torch.tensor(o["sounding"][:t]), o["category_id"]] = 1.0
        gt = torch.from_numpy(scene.clip.masks).long()
        picked = sounds.gather(1, logits.argmax(1).flatten(1)).reshape(gt.shape)
        metrics["argmax"].update(picked * 20 - 10, gt)  # logits far from the threshold either way
        p = (logits.softmax(1) * sounds[:, :, None, None]).sum(1).clamp(1e-6, 1 - 1e-6)
        metrics["posterior"].update(torch.logit(p), gt)
    return {name: {k: float(v) for k, v in m.compute().items() if k in ("miou", "fscore")} for name, m in metrics.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="hard", help="conf/data/synth_<preset>.yaml")
    p.add_argument("--synth-override", nargs="*", default=[], metavar="KEY=VALUE", help="data.synth.KEY=VALUE")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--train-clips", type=int, default=1500)
    p.add_argument("--test-clips", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4, help="clips per step (every frame of each is labelled)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compose-clips", type=int, default=128, help="S4 test clips of the composed oracle (0: none)")
    p.add_argument("--save", default=None, help="write the trained U-Net's state dict here (for bench/quality_gpu.py "
                                                "--init-unet: a SynthAVS-pretrained image path)")
    p.add_argument("--quick", action="store_true", help="24 train / 8 test clips, 3 steps")
    args = p.parse_args()
    if args.quick:
        args.train_clips, args.test_clips, args.steps, args.compose_clips = 24, 8, 3, 4
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = compose([f"data=synth_{args.preset}", "data.setting=s4", f"data.synth.frame_height={args.size}",
                   f"data.synth.frame_width={args.size}", f"data.synth.seed={args.seed}",
                   *(f"data.synth.{kv}" for kv in args.synth_override)])
    synth = cfg.data.synth
    k = synth.num_categories
    t0 = time.perf_counter()
    train_x, train_y = make_clips(synth, "train", args.train_clips, args.procs)
    test_x, test_y = make_clips(synth, "test", args.test_clips, args.procs)
    print(f"SynthAVS {args.preset} {' '.join(args.synth_override)} S4, {args.size} px: {len(train_x)} train / "
          f"{len(test_x)} test clips in {time.perf_counter() - t0:.0f} s; {k} categories", flush=True)

    model = build_probe(k, args.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng(args.seed)
    start, running, every = time.perf_counter(), [], max(1, args.steps // 5)
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.choice(len(train_x), args.batch, replace=False))
        x, y = train_x[idx], train_y[idx]
        if rng.random() < 0.5:  # horizontal flip: shapes and categories do not change under it
            x, y = x.flip(3), y.flip(3)
        logits = model(_frames(x))["masks"]
        loss = F.cross_entropy(logits, y.flatten(0, 1).long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running.append(float(loss.detach()))
        if step % every == 0 or step == args.steps:
            print(f"  step {step}/{args.steps}  loss {np.mean(running):.4f}  {time.perf_counter() - start:.0f} s",
                  flush=True)
            running.clear()
    train_s = time.perf_counter() - start

    if args.save:
        torch.save(model.state_dict(), args.save)
    result = scores(confusion(model, test_x, test_y, k + 1, args.batch))
    names = {c.id: c.name for c in categories(k)}
    per_category = {names[i + 1]: round(v, 4) for i, v in enumerate(result["iou"][1:])}
    print(f"\ntest ({len(test_x)} clips, every frame): category mIoU {result['miou_categories']:.4f}, background IoU "
          f"{result['iou_background']:.4f}, object pixels with their own category {result['object_pixel_accuracy']:.4f}")
    for name, v in per_category.items():
        print(f"  {name:12s} {v:.4f}")
    composed = composed_oracle(model, synth, args.compose_clips, k) if args.compose_clips else None
    if composed:
        print(f"composed oracle on {args.compose_clips} S4 test clips (the probe's categories kept where perfect hearing "
              f"says they sound, no training): mIoU {composed['argmax']['miou']:.4f} (argmax), "
              f"{composed['posterior']['miou']:.4f} (probability of a sounding category > 0.5)")
    print(json.dumps({"preset": args.preset, "synth_override": args.synth_override, "size": args.size,
                      "train_clips": len(train_x), "test_clips": len(test_x), "steps": args.steps,
                      "batch": args.batch, "train_s": round(train_s, 1),
                      "miou_categories": round(result["miou_categories"], 4),
                      "iou_background": round(result["iou_background"], 4),
                      "object_pixel_accuracy": round(result["object_pixel_accuracy"], 4),
                      "per_category_iou": per_category, "composed_oracle": composed}))


if __name__ == "__main__":
    main()
