"""Where one training step spends its time: forward, loss (with COMBO's Hungarian matching),
backward, optimiser, each timed alone (the device synchronised between phases, so phases do not
overlap as they do in a real step: their sum is above a real step's time).

    python bench/train_step_phases.py                                   # GPU: r50 models, 224 px, B=8, T=5
    .venv/bin/python bench/train_step_phases.py --device cpu --models combo_tiny tpavi_tiny --size 64 --batch 2

Needs only torch, timm, scipy and the project's ``models/``. Random weights, random frames, one
square object per frame as ground truth on every frame. Median of ``--steps`` steps after 3
warm-ups. The last line is one JSON object: ``{model: {"forward", "loss", "backward",
"optimizer", "step"}}`` in seconds (``step``: a whole step without synchronisation between
phases).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from models.build import build_model  # noqa: E402
from models.losses import targets_from_masks  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def phases(name: str, device: str, b: int, t: int, size: int, steps: int) -> dict[str, float]:
    model = build_model(name, num_classes=1, channels_last=True).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(b, t, 3, size, size, generator=g).to(device)
    logmel = torch.randn(b, t, 96, 64, generator=g).to(device)
    maskige = torch.rand(b, t, 3, size, size, generator=g).to(device)
    ids = torch.zeros(b * t, size, size, dtype=torch.long)
    ids[:, size // 4: size // 2, size // 4: 5 * size // 8] = 1
    targets = [{k: v.to(device) for k, v in tg.items()} for tg in targets_from_masks(ids, 1)]
    times: dict[str, list[float]] = {"forward": [], "loss": [], "backward": [], "optimizer": [], "step": []}
    for step in range(steps + 3):
        sync(device)
        t0 = time.perf_counter()
        outputs = model(frames, logmel, maskige)
        sync(device)
        t1 = time.perf_counter()
        loss = model.loss(outputs, targets)["loss"]
        sync(device)
        t2 = time.perf_counter()
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        t4 = time.perf_counter()
        model.loss(model(frames, logmel, maskige), targets)["loss"].backward()  # a whole step, phases overlapping
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        t5 = time.perf_counter()
        if step >= 3:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[key].append(value)
    del model, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["combo_r50", "tpavi_r50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"{where}, torch {torch.__version__}: B={args.batch} T={args.frames} {args.size} px, "
          f"median of {args.steps} steps", flush=True)
    report = {}
    for name in args.models:
        report[name] = phases(name, args.device, args.batch, args.frames, args.size, args.steps)
        print(f"{name}: {report[name]}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
