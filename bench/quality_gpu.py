"""Quality on one GPU without Ray or Prefect: bench/quality.py's models, recipe and scoring, in one process.

    .venv/bin/python bench/quality_gpu.py --budget-s 330          # on a GPU machine
    .venv/bin/python bench/quality_gpu.py --quick --device cpu    # a smoke run anywhere

Why it exists. ``bench/quality.py`` runs each model through the flows (Prefect, Ray Data, Ray
Train), which is what a user runs. A machine lent for a few minutes may have a GPU but not that
stack (the device machines this project is lent hold PyTorch but no Ray, and Ray's wheel alone is
larger than what may be carried there). This script answers the benchmark's question there: how far
do the models get on SynthAVS when steps are cheap?

The same as ``bench/quality.py``: the SynthAVS clips (generator, preset ``hard`` / ``sync``, seed,
split sizes), S4 train clips annotated on frame 1 only (as the AVSBench writer lays them out), the
Maskige (``MaskigeMaker``, classical ``chroma`` by default), the shard sample encoding and decoding
(``clip_to_sample`` / ``decode_sample``: JPEG frames, PNG Maskiges and masks, log-mel), the training
transform (``ClipTransform``: crop, flip, silent clips), the models (``conf/model/*``, the registry),
their losses, the optimiser and schedule (``tasks.train.optim``, recipe ``conf/train/synth_gpu.yaml``),
the AVSBench metric with per-video scores (``tasks.evaluate.scoring``), the oracles and the paired
bootstrap.

What differs, all of it on purpose:
- no H.264 round trip: the generator's frames go straight into the sample encoding (the flows write
  mp4 at CRF 20 and decode it), and no tar files: the encoded samples stay in memory;
- one process, no Ray Train and no DDP; no validation split and no checkpoint;
- run length: every model of the run trains for the same number of optimiser steps, fixed before the
  first one from a timed probe of each model (``--probe-steps``) so that all of them fit ``--budget-s``
  of training. ``--steps`` fixes it by hand.

A diagnostic row beyond ``bench/quality.py``'s: ``reference_unet`` (``bench/reference_unet.py``), a
small audio-FiLM U-Net trained with TPAVI-tiny's recipe and loss, to tell whether a set can be
learned from scratch in the steps given at all (``--plan s4:reference_unet``).

A diagnostic input beyond it: ``--audio oracle`` gives every model, in place of each clip's log-mel,
a clean code of which on-screen categories sound in each second (``oracle_logmel``). What a model
still misses with it is the visual half of the task (which shape a category has, which object is
the one), so the gap between ``--audio real`` and ``--audio oracle`` is what learning the sounds
costs. ``--init-unet PATH`` starts the reference U-Net from an image path trained on SynthAVS's dense
category labels (``bench/shape_probe.py --save PATH``), as the papers start from pretrained backbones.

Last line: ``{"device", "steps", "batch", "s4": {"combo": {"miou", "fscore", "train_s", "steps",
"epochs"}, ..., "oracles": {...}, "combo_minus_no_audio": {...}, "combo_minus_tpavi": {...}},
"ms3": {...}, "sync_s4": {...}}`` (the keys of ``bench/quality.py``). ``--json-out`` rewrites the same
object after every model, so a run cut short keeps what it finished.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

# one BLAS / OpenMP thread per process, set before numpy loads: the clip generators run one
# process per core. The first GPU run, without this, generated 34 clips/s with 16 processes,
# what 2-3 single-threaded ones give on our CPU machine; oversubscribed threads are the likely
# cause (not verified there).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))  # quality.py

from quality import MODELS as FLOW_MODELS  # noqa: E402  (bench/, the script's folder)
from quality import SETS as FLOW_SETS  # noqa: E402
from quality import SUPERVISED  # noqa: E402
from reference_unet import ReferenceUNet  # noqa: E402  (bench/)

from infra.config import compose  # noqa: E402
from models.build import build_model  # noqa: E402
from tasks.enrich.maskige import MaskigeMaker  # noqa: E402
from tasks.evaluate.compare import paired_bootstrap  # noqa: E402
from tasks.evaluate.scoring import model_inputs, new_metric, predict, score_clips, set_targets, to_device  # noqa: E402
from tasks.shards.loader import ClipTransform, collate_clips  # noqa: E402
from tasks.shards.schema import clip_to_sample, decode_sample  # noqa: E402
from tasks.synthavs.generate import generate_clip  # noqa: E402
from tasks.synthavs.oracles import ORACLES, OracleScores  # noqa: E402
from tasks.train.optim import build_optimizer, build_scheduler  # noqa: E402

# bench/quality.py's sets and supervised models (MoCA trains from mined pairs, which this script
# does not mine), and on every set the diagnostic reference learner (bench/reference_unet.py; its
# config is TPAVI-tiny's, for the optimiser and the recipe: the network is built here)
REFERENCE = "reference_unet"
SETS = {name: (preset, setting, tuple(m for m in models if m in SUPERVISED) + (REFERENCE,))
        for name, (preset, setting, models) in FLOW_SETS.items()}
MODELS = {**{m: FLOW_MODELS[m] for m in SUPERVISED}, REFERENCE: FLOW_MODELS["tpavi"]}


# -- data: encoded samples in memory ----------------------------------------------------------
_WORKER: dict = {}


def _init_worker(synth_cfg, maskige_cfg, audio: str = "real") -> None:
    torch.set_num_threads(1)
    _WORKER.update(synth=synth_cfg, maker=MaskigeMaker(maskige_cfg), audio=audio)


ORACLE_LOW, ORACLE_HIGH = -2.0, 3.0  # about the 5th percentile and the maximum of a SynthAVS log-mel


def oracle_logmel(objects: list[dict], num_seconds: int, num_categories: int) -> np.ndarray:
    """float32 [T, 96, 64]: what the ``--audio oracle`` diagnostic gives the models in place of the
    log-mel, a clean code of which on-screen categories sound in each second. The 64 mel bins are cut
    into ``num_categories`` bands; the band of category id c (1-based) is ORACLE_HIGH over the whole
    second when an object of c sounds in it, everything else ORACLE_LOW. Off-screen sounds and noise
    are left out: a model given this code has nothing left to learn about sound, only which shape a
    category has."""
    code = np.full((num_seconds, 96, 64), ORACLE_LOW, np.float32)
    width = 64 // num_categories
    for obj in objects:
        c = obj["category_id"] - 1
        if not 0 <= c < num_categories:
            raise ValueError(f"category id {obj['category_id']} outside 1..{num_categories}")
        for t, on in enumerate(obj["sounding"][:num_seconds]):
            if on:
                code[t, :, c * width:(c + 1) * width] = ORACLE_HIGH
    return code


def _make_sample(job: tuple[str, str, int]) -> tuple[dict, tuple | None]:
    """One clip as a shard sample (bytes), plus what the oracles need for test clips."""
    setting, split, index = job
    scene = generate_clip(_WORKER["synth"], setting, split, index)
    clip = scene.clip
    if _WORKER.get("audio") == "oracle":
        clip.logmel = oracle_logmel(clip.meta["objects"], clip.num_frames, _WORKER["synth"].num_categories)
    if setting == "s4" and split == "train":  # AVSBench S4 train: ground truth on frame 1 only
        clip.masks = clip.masks.copy()
        clip.masks[1:] = 0
        clip.gt_frames = [True] + [False] * (clip.num_frames - 1)
    maskiges, _ = _WORKER["maker"](clip.frames)
    sample = clip_to_sample(clip, maskiges=np.asarray(maskiges))
    sample.pop("wav.flac", None)  # the models read the log-mel only
    oracle = None
    if split == "test":
        oracle = (clip.clip_id, scene.id_maps, clip.meta["objects"], clip.masks, list(clip.gt_frames))
    return sample, oracle


def make_samples(synth_cfg, maskige_cfg, setting: str, split: str, count: int, procs: int,
                 audio: str = "real") -> tuple[list, list]:
    jobs = [(setting, split, i) for i in range(count)]
    ctx = mp.get_context("fork")
    with ctx.Pool(procs, initializer=_init_worker, initargs=(synth_cfg, maskige_cfg, audio)) as pool:
        out = pool.map(_make_sample, jobs, chunksize=max(1, count // (procs * 8)))
    return [s for s, _ in out], [o for _, o in out if o is not None]


class MemoryClips(torch.utils.data.Dataset):
    """Encoded samples -> training examples. Index k is (epoch, clip) = divmod(k, len): the
    augmentation of a clip is seeded by (seed, epoch, clip), so a run is reproducible."""

    def __init__(self, samples: list[dict], transform: ClipTransform, seed: int) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, k: int) -> dict:
        epoch, i = divmod(int(k), len(self.samples))
        rng = np.random.default_rng([self.seed, epoch, i])
        return self.transform(decode_sample(self.samples[i], with_audio=False, with_dino=False), rng)


class EpochShuffle(torch.utils.data.Sampler):
    """steps x batch indices over as many shuffled epochs as it takes; index = epoch * n + clip."""

    def __init__(self, n: int, total: int, seed: int) -> None:
        self.n, self.total, self.seed = n, total, seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        given, epoch = 0, 0
        while given < self.total:
            order = np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)
            for i in order[: self.total - given]:
                yield int(epoch * self.n + i)
            given += min(self.n, self.total - given)
            epoch += 1


# -- one model ----------------------------------------------------------------------------------
def _loader(data: MemoryClips, sampler, batch: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers,
                                       collate_fn=collate_clips, pin_memory=torch.cuda.is_available(),
                                       persistent_workers=False, prefetch_factor=4 if workers else None)


_INIT_UNET: dict = {}  # --init-unet: the state dict the reference U-Net starts from


def init_from(model: torch.nn.Module, state: dict) -> list[str]:
    """Copy every tensor of ``state`` whose name and shape ``model`` shares (not the output head of
    another task, not the audio path of a model trained without one); returns the names copied."""
    own = model.state_dict()
    same = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(same, strict=False)
    return sorted(same)


def _build(cfg, device: torch.device, name: str) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    if name == REFERENCE:
        model = ReferenceUNet()
        if _INIT_UNET:
            init_from(model, _INIT_UNET)
        return model.to(device)
    return build_model(cfg.model.registry_name, **cfg.model.builder_options(num_classes=1)).to(device)


def _step(model, batch, optimizer, scheduler, t, amp) -> dict:
    with amp:
        outputs = model(**model_inputs(batch))
    losses = model.loss(outputs, set_targets(batch, 1))
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    optimizer.step()
    scheduler.step()
    return losses


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(cfg, train: list[dict], device: torch.device, steps: int, workers: int, name: str) -> float:
    """Seconds per optimiser step of model ``name`` (after two warm-up steps)."""
    t = cfg.train
    model = _build(cfg, device, name).train()
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, total_steps=1000)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp == "bf16")
    data = MemoryClips(train, ClipTransform.from_config(t.loader), cfg.seed)
    batches = [to_device(b, device) for b in _loader(data, EpochShuffle(len(train), (steps + 2) * t.loader.batch_size, 99),
                                                     t.loader.batch_size, workers)]
    for b in batches[:2]:
        _step(model, b, optimizer, scheduler, t, amp)
    _sync(device)
    start = time.perf_counter()
    for b in batches[2:]:
        _step(model, b, optimizer, scheduler, t, amp)
    _sync(device)
    return (time.perf_counter() - start) / max(1, len(batches) - 2)


def train_and_score(cfg, train: list[dict], test: list[dict], steps: int, device: torch.device, workers: int,
                    label: str) -> dict:
    t = cfg.train
    model = _build(cfg, device, label).train()
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, total_steps=steps)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp == "bf16")
    batch = t.loader.batch_size
    data = MemoryClips(train, ClipTransform.from_config(t.loader), cfg.seed)
    loader = _loader(data, EpochShuffle(len(train), steps * batch, cfg.seed), batch, workers)
    start = time.perf_counter()
    every = max(1, steps // 5)
    running = []
    for step, b in enumerate(loader, 1):
        losses = _step(model, to_device(b, device), optimizer, scheduler, t, amp)
        running.append(losses["loss"].detach())
        if step % every == 0 or step == steps:
            mean = float(torch.stack(running).float().mean())
            running.clear()
            print(f"    {label}: step {step}/{steps}  loss {mean:.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    _sync(device)
    train_s = time.perf_counter() - start

    model.eval()
    plain = ClipTransform(t.loader.image_size, augment=False)
    metric = new_metric("s4", 1).to(device)  # binary metric for s4 and ms3 alike
    rows = []
    with torch.no_grad():
        for b in _loader(MemoryClips(test, plain, cfg.seed), None, batch, workers):
            b = to_device(b, device)
            with amp:
                outputs = model(**model_inputs(b))
            rows += score_clips(metric, predict(model, outputs, b), b)
    scores = metric.compute()
    return {"miou": float(scores["miou"]), "fscore": float(scores["fscore"]), "train_s": round(train_s, 1),
            "steps": steps, "epochs": round(steps * batch / len(train), 2),
            "per_video_miou": {r["clip_id"]: r["miou"] for r in rows}}


# -- the benchmark ------------------------------------------------------------------------------
# Runs in the order they are dropped last: when the budget gives fewer than --min-steps steps to
# every run, runs are dropped from the end of this list until it does.
PRIORITY = ("s4:combo", "s4:combo_no_audio", "s4:tpavi", "s4:reference_unet", "ms3:combo", "ms3:combo_no_audio",
            "s4:avsac", "s4:combo_no_maskige", "s4:combo_no_consistency", "sync_s4:combo", "sync_s4:tpavi",
            "ms3:tpavi", "ms3:avsac", "ms3:combo_no_maskige", "ms3:combo_no_consistency")


def set_config(args, set_name: str, model: str = "combo"):
    preset, setting, _ = SETS[set_name]
    size = args.size
    return compose([
        f"data={preset}", f"data.setting={setting}", f"data.synth.frame_height={size}", f"data.synth.frame_width={size}",
        f"data.synth.seed={args.seed}", f"preprocess.maskige.classical_method={args.mask_source}",
        f"train={args.recipe}", f"train.loader.image_size={size}", *MODELS[model], *args.train_override,
    ])


def parse_plan(items: list[str]) -> list[tuple[str, str]]:
    plan = []
    for item in items:
        set_name, _, model = item.partition(":")
        if set_name not in SETS or model not in SETS[set_name][2]:
            raise SystemExit(f"--plan: {item!r} is not SET:MODEL with a set of {list(SETS)} and one of its models")
        plan.append((set_name, model))
    return plan


def fit_plan(plan: list[tuple[str, str]], per_step: dict[str, float], budget_s: float, min_steps: int,
             max_steps: int) -> tuple[list[tuple[str, str]], int]:
    """The longest head of plan whose runs all get >= min_steps steps in budget_s, and those steps."""
    for n in range(len(plan), 0, -1):
        total = sum(per_step[m] for _, m in plan[:n])
        steps = min(max_steps, int(budget_s / total))
        if steps >= min_steps or n == 1:
            return plan[:n], max(1, steps)
    raise ValueError("empty plan")


class Data:
    """Each set's encoded train and test samples and its oracles, generated on first use."""

    def __init__(self, args) -> None:
        self.args, self.sets = args, {}

    def __call__(self, set_name: str) -> tuple[list, list, dict]:
        if set_name not in self.sets:
            args = self.args
            _, setting, _ = SETS[set_name]
            cfg = set_config(args, set_name)
            t0 = time.perf_counter()
            train, _ = make_samples(cfg.data.synth, cfg.preprocess.maskige, setting, "train",
                                    args.train_clips.get(set_name, 2000), args.procs, args.audio)
            test, rows = make_samples(cfg.data.synth, cfg.preprocess.maskige, setting, "test", args.test_clips,
                                      args.procs, args.audio)
            oracles = OracleScores()
            for row in rows:
                oracles.add(*row)
            self.sets[set_name] = (train, test, oracles.totals())
            print(f"{set_name}: SynthAVS {cfg.data.synth.preset} {setting}, {args.size} px, {args.audio} audio: "
                  f"{len(train)} train / {len(test)} test clips generated in {time.perf_counter() - t0:.0f} s "
                  f"({args.procs} processes)",
                  flush=True)
        return self.sets[set_name]


def print_set(set_name: str, out: dict, steps: int, batch: int) -> None:
    print(f"\n{set_name}: test mIoU / F-score ({out['test_clips']} videos, {steps} steps of {batch} clips)")
    for model in MODELS:
        r = out.get(model)
        if r and "error" in r:
            print(f"  {model:30s} failed: {r['error']}")
        elif r:
            print(f"  {model:30s} {r['miou']:7.4f} {r['fscore']:7.4f}  train {r['train_s']:5.0f} s")
    for o in ORACLES:
        print(f"  {'oracle: ' + o:30s} {out['oracles'][o]['miou']:7.4f} {out['oracles'][o]['fscore']:7.4f}")
    for key in ("combo_minus_no_audio", "combo_minus_tpavi"):
        if key in out:
            d = out[key]
            print(f"  {key}: {d['diff']:+.4f}, 95% interval [{d['low']:+.4f}, {d['high']:+.4f}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", nargs="+", default=list(PRIORITY), metavar="SET:MODEL",
                   help="runs in priority order (the last are dropped first when the budget is short)")
    p.add_argument("--train-clips", nargs="*", default=["s4=6000", "ms3=1000", "sync_s4=2000"], metavar="SET=N")
    p.add_argument("--test-clips", type=int, default=128)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--mask-source", default="chroma", choices=("felzenszwalb", "slic", "chroma"))
    p.add_argument("--recipe", default="synth_gpu", help="conf/train/<recipe>.yaml")
    p.add_argument("--train-override", nargs="*", default=[])
    p.add_argument("--budget-s", type=float, default=300.0, help="training seconds for all runs together")
    p.add_argument("--min-steps", type=int, default=1500, help="fewer steps per run than this: drop runs")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run, every run kept (no probe)")
    p.add_argument("--probe-steps", type=int, default=6)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes generating clips")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the recipe's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio", default="real", choices=("real", "oracle"),
                   help="oracle: every clip's log-mel replaced by a clean code of the sounding categories "
                        "(oracle_logmel), a diagnostic of what is left when sound is understood perfectly")
    p.add_argument("--init-unet", default=None, help="state dict the reference U-Net starts from (its image path "
                                                     "pretrained by bench/shape_probe.py --save)")
    p.add_argument("--json-out", default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 24 train / 8 test clips, 2 steps a run")
    args = p.parse_args()
    args.train_clips = {k: int(v) for k, v in (x.split("=", 1) for x in args.train_clips)}
    plan = parse_plan(args.plan)
    if args.quick:
        args.train_clips = {k: 24 for k in SETS}
        args.test_clips, args.probe_steps = 8, 1
        args.steps = args.steps or 2
    device = torch.device(args.device)
    if args.init_unet:
        _INIT_UNET.update(torch.load(args.init_unet, map_location="cpu", weights_only=True))
        copied = init_from(ReferenceUNet(), _INIT_UNET)
        print(f"reference_unet starts from {args.init_unet}: {len(copied)} of {len(_INIT_UNET)} tensors", flush=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # the main process computes on CPU runs
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}", flush=True)

    data = Data(args)
    recipe = set_config(args, plan[0][0]).train
    workers = recipe.loader.num_workers if args.workers is None else args.workers
    batch = recipe.loader.batch_size
    if args.steps is None:  # time each model on the first run's set, then fit the plan to the budget
        probe_set = plan[0][0]
        per_step = {m: probe(set_config(args, probe_set, m), data(probe_set)[0], device, args.probe_steps, workers, m)
                    for m in dict.fromkeys(m for _, m in plan)}
        kept, steps = fit_plan(plan, per_step, args.budget_s, args.min_steps, args.max_steps)
        print("probe (s per step): " + ", ".join(f"{m} {s:.3f}" for m, s in per_step.items())
              + f"\n-> {steps} steps of {batch} clips for each of {len(kept)} runs in about "
              f"{steps * sum(per_step[m] for _, m in kept):.0f} s of training"
              + (f"; dropped for the budget: {', '.join(f'{s}:{m}' for s, m in plan[len(kept):])}" if len(kept) < len(plan) else ""),
              flush=True)
        plan = kept
    else:
        steps = args.steps
    summary: dict = {"device": name, "steps": steps, "batch": batch, "recipe": args.recipe, "size": args.size,
                     "audio": args.audio, "init_unet": args.init_unet, "torch": torch.__version__}
    per_video: dict = {}

    def save() -> None:
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(summary, sort_keys=True))

    for set_name, model in plan:
        train, test, oracles = data(set_name)
        out = summary.setdefault(set_name, {"train_clips": len(train), "test_clips": len(test),
                                            "mask_source_used": args.mask_source, "oracles": oracles})
        print(f"  {set_name} / {model}: {steps} steps of {batch} clips ...", flush=True)
        try:
            r = train_and_score(set_config(args, set_name, model), train, test, steps, device, workers, model)
        except Exception as e:  # noqa: BLE001 - one broken run must not cost the others
            import traceback

            traceback.print_exc()
            out[model] = {"error": f"{type(e).__name__}: {e}"[:300]}
            save()
            continue
        per_video[(set_name, model)] = r.pop("per_video_miou")
        out[model] = r
        print(f"  {set_name} / {model:22s} mIoU {r['miou']:.4f}  F {r['fscore']:.4f}  (train {r['train_s']:.0f} s, "
              f"{r['epochs']} epochs)", flush=True)
        for other, key in (("combo_no_audio", "combo_minus_no_audio"), ("tpavi", "combo_minus_tpavi")):
            a, b = per_video.get((set_name, "combo")), per_video.get((set_name, other))
            if a and b and key not in out:
                d = paired_bootstrap(a, b, seed=args.seed)
                out[key] = {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
        save()
    for set_name in dict.fromkeys(s for s, _ in plan):
        print_set(set_name, summary[set_name], steps, batch)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
