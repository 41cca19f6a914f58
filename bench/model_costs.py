"""Model benchmark: parameters, training-step speed and peak memory of COMBO, AVSAC and TPAVI.

On this machine's CPU, for each model at ``tiny`` size:
- parameters;
- forward + loss + backward seconds per clip batch (default B=2, T=5, 128 px), median of
  ``--steps`` steps after one warm-up, in the default memory format and in channels_last
  (``channels_last_speedup`` = default time / channels_last time, > 1 means channels_last wins);
- peak memory in MB: the growth of the process's max RSS from just before the model is built to
  the end of the steps, each model in a fresh subprocess (torch allocations are invisible to
  tracemalloc, and max RSS never goes down, hence one process per measurement).
Parameter counts of the ``r50`` and ``pvt_b5`` sizes (constructed on the meta device: no memory,
no initialisation). With CUDA: one training step (forward, loss, backward, AdamW) of each ``r50``
model at 224 px, B=8 clips of T=5, fp32 against bf16 autocast.

    .venv/bin/python bench/model_costs.py       # ~2-3 minutes on 2 cores

The last line of output is one JSON object: ``{"combo_tiny": {"params", "fwd_bwd_s",
"fwd_bwd_s_channels_last", "channels_last_speedup", "peak_mb"}, "combo_r50": {"params"[,
"train_step_s_fp32", "train_step_s_bf16", "bf16_speedup"]}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from models.build import FAMILIES, SIZES, build_model  # noqa: E402  (after the sys.path line above)
from models.losses import targets_from_masks  # noqa: E402


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def clip_batch(b: int, t: int, size: int, num_classes: int = 1, device: str = "cpu", seed: int = 0):
    """Random frames, log-mel, Maskige and per-frame set targets of one clip batch."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(b, t, 3, size, size, generator=g)
    logmel = torch.randn(b, t, 96, 64, generator=g)
    maskige = torch.rand(b, t, 3, size, size, generator=g)
    # a square object per frame, so every loss has foreground to match
    ids = torch.zeros(b * t, size, size, dtype=torch.long)
    ids[:, size // 4 : size // 2, size // 4 : size // 2] = 1
    targets = targets_from_masks(ids, num_classes)
    targets = [{k: v.to(device) for k, v in tg.items()} for tg in targets]
    return frames.to(device), logmel.to(device), maskige.to(device), targets


def as_float(outputs):
    """Cast floating tensors of a (nested) output dict to fp32: losses run in fp32 under bf16."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: as_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [as_float(v) for v in outputs]
    return outputs


def cpu_worker(name: str, channels_last: bool, b: int, t: int, size: int, steps: int) -> dict:
    """Build ``name`` and time forward + loss + backward; runs in its own process."""
    frames, logmel, maskige, targets = clip_batch(b, t, size)
    base = maxrss_mb()
    model = build_model(name, num_classes=1, channels_last=channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    times = []
    for step in range(steps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        outputs = model(frames, logmel, maskige)
        loss = model.loss(outputs, targets)["loss"]
        loss.backward()
        elapsed = time.perf_counter() - start
        if step:  # step 0 is the warm-up
            times.append(elapsed)
    return {"params": params, "fwd_bwd_s": statistics.median(times), "peak_mb": maxrss_mb() - base}


def run_cpu_worker(name: str, channels_last: bool, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", name,
        "--batch", str(args.batch), "--frames", str(args.frames), "--size", str(args.size), "--steps", str(args.steps),
    ]  # fmt: skip
    if channels_last:
        cmd.append("--channels-last")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"benchmark worker for {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def meta_params(name: str) -> int:
    with torch.device("meta"):
        model = build_model(name, num_classes=1)
    return sum(p.numel() for p in model.parameters())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_time(
    name: str, bf16: bool, b: int = 8, t: int = 5, size: int = 224, steps: int = 5, device: str = "cuda"
) -> float:
    """Median seconds of one training step (fwd, loss in fp32, bwd, AdamW), after 2 warm-ups."""
    model = build_model(name, num_classes=1, channels_last=True).to(device, memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    frames, logmel, maskige, targets = clip_batch(b, t, size, device=device)
    times = []
    for step in range(steps + 2):
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(frames, logmel, maskige)
        loss = model.loss(as_float(outputs), targets)["loss"]
        loss.backward()
        optimizer.step()
        sync(device)
        if step >= 2:
            times.append(time.perf_counter() - start)
    del model, optimizer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU section even when CUDA is available")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = cpu_worker(args.worker, args.channels_last, args.batch, args.frames, args.size, args.steps)
        print(json.dumps(result))
        return

    print(
        f"CPU: B={args.batch} T={args.frames} {args.size}px, median of {args.steps} steps after 1 warm-up, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    report: dict[str, dict] = {}
    for model in args.models:
        name = f"{model}_tiny"
        default = run_cpu_worker(name, False, args)
        nhwc = run_cpu_worker(name, True, args)
        report[name] = {
            "params": default["params"],
            "fwd_bwd_s": round(default["fwd_bwd_s"], 4),
            "fwd_bwd_s_channels_last": round(nhwc["fwd_bwd_s"], 4),
            "channels_last_speedup": round(default["fwd_bwd_s"] / nhwc["fwd_bwd_s"], 3),
            "peak_mb": round(default["peak_mb"], 1),
        }
        print(f"{name}: {report[name]}", flush=True)
    for model in args.models:
        for size in (s for s in SIZES if s != "tiny"):
            name = f"{model}_{size}"
            report[name] = {"params": meta_params(name)}
            print(f"{name}: {report[name]}", flush=True)

    if torch.cuda.is_available() and not args.no_cuda:
        print(f"CUDA ({torch.cuda.get_device_name()}): r50 training step, B=8 T=5 224px, fp32 vs bf16 autocast", flush=True)
        for model in args.models:
            name = f"{model}_r50"
            fp32 = train_step_time(name, bf16=False)
            bf16 = train_step_time(name, bf16=True)
            report[name].update(
                {"train_step_s_fp32": round(fp32, 4), "train_step_s_bf16": round(bf16, 4), "bf16_speedup": round(fp32 / bf16, 3)}
            )
            print(f"{name}: {report[name]}", flush=True)

    print(json.dumps(report))


if __name__ == "__main__":
    main()
