"""Training throughput: the flow's data path against the papers' per-clip PNG loop, same model and batch.

    .venv/bin/python bench/train_throughput.py          # CPU benchmark, about 4-5 minutes on 2 quiet cores
    .venv/bin/python bench/train_throughput.py --prepare-gpu-data /tmp/avs-gpu-data   # files for a GPU run
    python bench/train_throughput.py --gpu --gpu-dataset D/dataset --gpu-avsbench D/avsbench   # on the GPU machine
    .venv/bin/python bench/train_throughput.py --gpu --device cpu --gpu-model combo_tiny --gpu-size 64 --steps 2 \\
        --gpu-dataset D/dataset --gpu-avsbench D/avsbench                                   # the GPU mode, tiny, on CPU

Data (CPU benchmark). SynthAVS ``hard`` S4, ``--clips`` train clips of ``--size`` px (224, as
AVSBench), generated in the AVSBench folder layout (per-clip PNG frames, log-mel ``.pkl``, mask
PNGs) by ``tasks.synthavs.ensure_synthavs`` and preprocessed into shards by
``tasks.preprocess.run_preprocess`` (classical Maskige, classical embeddings), both on a composed
config (``infra.config.compose``). Each clip's Maskiges are then read back from the shards
(``read_shard`` / ``decode_sample``) and written as per-frame palette PNGs beside the layout,
where COMBO's offline script (``avs_tools/pre_mask2rgb/mask_precess_s4.py``) leaves them:
``s4_data/pre_SAM_mask/{split}/{category}/{vid}/{vid}_{k}_mask_color.png``. So both paths feed
the model the same frames, Maskiges, masks and log-mels.

Baseline: a plain single-process loop as AVSBench's ``avs_scripts/avs_s4/train.py`` and COMBO
train: a ``torch.utils.data.Dataset`` over the S4 layout (the CSV, then per clip T PNG frames
with PIL, T Maskige PNGs, the annotated mask PNG (train: frame 1 only), the log-mel pickle
unpickled with plain ``pickle.load`` as AVSBench's ``load_audio_lm`` does, or with the project's
``tasks.decode.safe_pickle.load_array`` under ``--pickle safe``), resized to ``--image-size``
(bilinear frames, nearest Maskiges and masks), ``DataLoader(batch_size=B, shuffle=True,
num_workers=N)`` with N = AVSBench's default 8 capped at this machine's cores (2 here), then
forward + loss + backward + gradient clipping + AdamW + poly schedule of the same model with the
project's optimiser (``tasks.train.optim``) and the training loop's own batch functions
(``tasks.evaluate.scoring.model_inputs`` / ``set_targets``); torch's default intra-op threads
(one per core) in the main process, as a plain script gets.

Flow: ``tasks.train.run.run_training`` (what ``flows/train_combo.py`` runs, without the Prefect
wrapper) with Ray Train: ``--flow-workers`` workers (2) of ``--flow-cpus-per-worker`` CPU (1)
each, the global batch split over them (``train.loader.batch_size = B / workers``), the shard
loader (``tasks.shards.loader.make_loader``: random resized crop + flip, shuffle buffer) with
``--flow-loader-workers`` DataLoader processes per Ray worker, no validation or test. The intra-op
threads Ray gives each worker are read inside the workers (a thin wrapper around the loop) and
printed. Ray is shut down after preprocessing, so the flow's wall clock includes Ray's start.

Figures. Both sides run ``--epochs`` epochs (5) over the same clips with the same model, global
batch and image size. Per epoch, samples/s = clips / seconds from the start of the epoch's
loader to its last optimiser step (the flow's own ``samples_per_s`` report, the baseline timed
the same way); **steady state = median over the epochs after the first** (start-up excluded:
the first epoch holds the first-step warm-up): ``flow_samples_per_s`` and
``baseline_samples_per_s``. Wall clock, start-up included (model build, Ray start and worker
group for the flow, per-epoch checkpoints of the flow): ``*_wall_samples_per_s``. Loaders alone
(no model): clips/s of whole epochs through each data path (median of 3), with N DataLoader
workers and in-process, which is the data path's own speedup; and the step alone on a batch in memory, as
the baseline runs it (default threads, batch B) and as the flow's ranks do (1 thread, batch
B / workers, times the ranks): the compute ceilings, which tell whether data or compute
dominates.

Shared machines. Other jobs' CPU use (processes outside this benchmark's tree, read from /proc)
is printed per phase and per epoch and put in the JSON (``foreign_cpu_cores``); each timed phase
first waits (``--quiet-wait``, 180 s at most) for others to use < 0.3 cores; epochs during which
they used more are left out of the steady state (``*_disturbed_epochs``), and a path all of
whose later epochs were disturbed runs again (``--retries``). This matters: with a second job on
one of the 2 cores, the baseline's training process (2 intra-op threads) slows down ~5-8x.

GPU mode (``--gpu``): needs only torch, timm, numpy, PIL, scipy (``models/matcher.py``), pyyaml
(timm's dependency), fsspec (torch's), and for (b) webdataset + soundfile; it imports
``models/``, ``tasks/shards/loader.py`` and plain dataclass schemas, nothing that pulls in ray,
prefect, hydra, av or s3fs (those are blocked at import in this mode, so the CPU check proves
it); without torchmetrics (``tasks.evaluate.scoring`` imports it) it uses a copy of scoring's
``model_inputs`` / ``set_targets``, which the CPU benchmark checks equal to the project's. At ``--gpu-size`` (224) px, ``--gpu-batch`` (8) clips of T=5, ``--gpu-model`` (combo_r50,
random weights), fp32 against bf16 autocast (forward under autocast, loss outside, as
``tasks/train/loop.py``): (a) the training step alone on one batch kept on the device (median
step time, samples/s, peak memory); (b) the step fed by the flow's loader over the shards of
``--gpu-dataset`` and by the baseline's per-clip PNG Dataset over ``--gpu-avsbench``, with
``--gpu-loader-workers`` DataLoader workers (8), both over the small carried data set repeated so
that one epoch covers the timed steps; GPU utilisation sampled every 0.1 s (pynvml, else
nvidia-smi) during each timed part.

The last line is one JSON object: ``{"flow_samples_per_s", "baseline_samples_per_s", "speedup",
...}`` (CPU), or ``{"gpu": {...}}`` (``--gpu``), or the prepared folder's description.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import logging
import math
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

# Put the repository root first (no install needed on a bare machine).
_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
sys.path[:] = [_ROOT] + [p for p in sys.path if os.path.abspath(p or os.curdir) not in (_HERE, _ROOT)]

S4_DIR = ("AVSBench_object", "Single-source")  # under an AVSBench root (SynthAVS writes the same)
S4_CSV = "s4_meta_data.csv"
MASKIGE_DIR = "pre_SAM_mask"  # COMBO's folder of per-frame Maskige PNGs, beside visual_frames
NUM_FRAMES = 5  # S4 clips: 5 frames at 1 fps
PAPERS_NUM_WORKERS = 8  # AVSBench avs_scripts/avs_s4/train.py --num_workers default
GPU_BLOCKED = ("ray", "prefect", "hydra", "omegaconf", "av", "s3fs")  # absent on the GPU machine


def say(msg: str) -> None:
    print(msg, flush=True)


class BenchError(RuntimeError):
    """A clear, one-line reason the benchmark cannot go on."""


# ==============================================================================================
# The baseline's data path: AVSBench S4 layout read per clip, as the papers' loaders do
# ==============================================================================================
def s4_base(avsbench_root: str) -> str:
    return os.path.join(avsbench_root, *S4_DIR)


def maskige_png_path(base: str, split: str, category: str, vid: str, k: int) -> str:
    """Where COMBO's mask_precess_s4.py leaves frame k's Maskige (k from 1)."""
    return os.path.join(base, "s4_data", MASKIGE_DIR, split, category, vid, f"{vid}_{k}_mask_color.png")


def read_s4_rows(avsbench_root: str, split: str) -> list[tuple[str, str]]:
    """(video name, category) of the S4 CSV's rows of split."""
    path = os.path.join(s4_base(avsbench_root), S4_CSV)
    if not os.path.isfile(path):
        raise BenchError(f"no {S4_CSV} at {path}: give the folder that holds AVSBench_object/ (an AVSBench or "
                         "SynthAVS root, or the avsbench/ folder of --prepare-gpu-data)")
    with open(path, newline="") as f:
        rows = [(r["name"], r["category"]) for r in csv.DictReader(f) if r.get("split") == split]
    if not rows:
        raise BenchError(f"{path} lists no clip of split {split!r}")
    return rows


class AVSBenchS4Clips:
    """``torch.utils.data.Dataset`` of S4 clips read from the AVSBench folders, one file per frame.

    Per clip, as AVSBench's ``S4Dataset.__getitem__`` (plus COMBO's Maskige PNGs): the log-mel
    pickle, T PNG frames opened with PIL, T Maskige PNGs, the annotated mask PNG(s) (train: frame
    1 only; ``mode='1'`` as AVSBench); everything resized to size x size (AVSBench's 224 px frames
    need no resize at 224). Returns the dict the shard loader yields (the models normalise their
    own input, so frames stay in [0, 1]: no ImageNet Normalize here). ``repeat`` lists the rows
    that many times (a larger epoch over a small data set).
    """

    def __init__(self, avsbench_root: str, size: int, split: str = "train", pickle_mode: str = "pickle",
                 repeat: int = 1, num_frames: int = NUM_FRAMES):
        self.base = s4_base(avsbench_root)
        self.rows = read_s4_rows(avsbench_root, split)
        self.size, self.split, self.pickle_mode = int(size), split, pickle_mode
        self.repeat, self.num_frames = max(1, int(repeat)), int(num_frames)
        self.mask_num = 1 if split == "train" else self.num_frames
        vid, cat = self.rows[0]
        for path in (self._frame(cat, vid, 1), self._logmel(cat, vid), self._mask(cat, vid, 1),
                     maskige_png_path(self.base, split, cat, vid, 1)):
            if not os.path.isfile(path):
                raise BenchError(f"AVSBench layout incomplete: {path} is missing")

    def __len__(self) -> int:
        return len(self.rows) * self.repeat

    def _frame(self, cat: str, vid: str, k: int) -> str:
        return os.path.join(self.base, "s4_data", "visual_frames", self.split, cat, vid, f"{vid}_{k}.png")

    def _mask(self, cat: str, vid: str, k: int) -> str:
        return os.path.join(self.base, "s4_data", "gt_masks", self.split, cat, vid, f"{vid}_{k}.png")

    def _logmel(self, cat: str, vid: str) -> str:
        return os.path.join(self.base, "s4_data", "audio_log_mel", self.split, cat, f"{vid}.pkl")

    def _load_logmel(self, path: str):
        import torch

        if self.pickle_mode == "safe":
            from tasks.decode.safe_pickle import load_array

            with open(path, "rb") as f:
                array = load_array(f.read(), path)
            return torch.from_numpy(array).reshape(array.shape[0], 96, 64)
        with open(path, "rb") as f:  # AVSBench's load_audio_lm: pickle.load of a torch tensor
            tensor = pickle.load(f)
        return tensor.detach().float().reshape(tensor.shape[0], 96, 64)  # [T, 1, 96, 64] -> [T, 96, 64]

    def _image(self, path: str, mode: str, resample) -> Any:
        from PIL import Image

        img = Image.open(path).convert(mode)
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), resample)
        return img

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np
        import torch
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        vid, cat = self.rows[index % len(self.rows)]
        logmel = self._load_logmel(self._logmel(cat, vid))
        frames, maskiges = [], []
        for k in range(1, self.num_frames + 1):
            frames.append(pil_to_tensor(self._image(self._frame(cat, vid, k), "RGB", Image.BILINEAR)))
            path = maskige_png_path(self.base, self.split, cat, vid, k)
            maskiges.append(pil_to_tensor(self._image(path, "RGB", Image.NEAREST)))  # COMBO reads it as RGB
        masks = torch.zeros(self.num_frames, self.size, self.size, dtype=torch.long)
        gt = torch.zeros(self.num_frames, dtype=torch.bool)
        for k in range(1, self.mask_num + 1):
            m = self._image(self._mask(cat, vid, k), "1", Image.NEAREST)
            masks[k - 1] = torch.from_numpy(np.asarray(m, dtype=np.uint8)).long()
            gt[k - 1] = True
        return {
            "frames": torch.stack(frames).float().div_(255.0),
            "maskige": torch.stack(maskiges).float().div_(255.0),
            "masks": masks,
            "gt_frames": gt,
            "logmel": logmel,
            "has_maskige": True,
            "clip_id": vid,
        }


def baseline_loader(dataset: AVSBenchS4Clips, batch: int, workers: int, seed: int, epoch: int,
                    pin_memory: bool = False):
    """AVSBench's train DataLoader: shuffle, N workers (new ones each epoch, as there)."""
    import torch

    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed + epoch))


# ==============================================================================================
# One training step, as tasks/train/loop.py takes it (no DDP, no rank agreement)
# ==============================================================================================
def batch_functions() -> tuple[Callable, Callable, Callable]:
    """(to_device, model_inputs, set_targets): the project's (tasks.evaluate.scoring) when it
    imports, else the same few lines here (scoring imports models.metrics -> torchmetrics, which
    the GPU machine may lack). check_batch_functions() keeps the copies equal."""
    try:
        from tasks.evaluate.scoring import model_inputs, set_targets, to_device

        return to_device, model_inputs, set_targets
    except ImportError:
        return _to_device, _model_inputs, _set_targets


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    import torch

    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    has = batch.get("has_maskige")
    maskige = batch["maskige"] if has is not None and bool(torch.as_tensor(has).all()) else None
    return {"frames": batch["frames"], "logmel": batch["logmel"], "maskige": maskige}


def _set_targets(batch: dict[str, Any], num_classes: int) -> list:
    from models.losses import targets_from_masks

    return targets_from_masks(batch["masks"].flatten(0, 1), num_classes, has_gt=batch["gt_frames"].flatten().tolist())


def check_batch_functions(batch: dict[str, Any]) -> None:
    """The local copies give what tasks.evaluate.scoring gives (run where scoring imports)."""
    import torch

    from tasks.evaluate.scoring import model_inputs, set_targets

    a, b = model_inputs(batch), _model_inputs(batch)
    assert a.keys() == b.keys() and all((a[k] is None and b[k] is None) or torch.equal(a[k], b[k]) for k in a)
    ta, tb = set_targets(batch, 1), _set_targets(batch, 1)
    assert len(ta) == len(tb) and all((x is None and y is None) or (torch.equal(x["labels"], y["labels"]) and
                                      torch.equal(x["masks"], y["masks"])) for x, y in zip(ta, tb))


class Stepper:
    """Model + optimiser + schedule, and one step as the flow's loop takes it: forward under
    autocast (bf16) or not, the loss outside it, zero_grad, backward, clip, AdamW, schedule."""

    def __init__(self, model_name: str, options: dict[str, Any], train_cfg: Any, total_steps: int, device: Any,
                 amp: str, seed: int, num_classes: int = 1):
        import torch

        from models.build import build_model
        from tasks.train.optim import build_optimizer, build_scheduler

        torch.manual_seed(seed)
        self.model = build_model(model_name, **options).to(device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, train_cfg)
        self.scheduler = build_scheduler(self.optimizer, train_cfg, total_steps=max(1, total_steps))
        self.grad_clip, self.num_classes, self.device = train_cfg.grad_clip, num_classes, device
        self.amp = lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp == "bf16")
        self.to_device, self.model_inputs, self.set_targets = batch_functions()
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self, batch: dict[str, Any], on_device: bool = False) -> float:
        import torch

        if not on_device:
            batch = self.to_device(batch, self.device)
        with self.amp():
            outputs = self.model(**self.model_inputs(batch))
        losses = self.model.loss(outputs, self.set_targets(batch, self.num_classes))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        # the loop reads every total loss back each step (a device sync on GPU): so do we
        return sum(float(v.detach()) for k, v in losses.items() if k == "loss" or not k.rsplit("_", 1)[-1].isdigit())


# ==============================================================================================
# Data preparation (this machine): SynthAVS -> AVSBench layout -> shards -> Maskige PNGs
# ==============================================================================================
def data_overrides(work: str, clips: int, size: int, seed: int, samples_per_shard: int) -> list[str]:
    return [
        "data=synth_hard", f"data.uri={work}/synth", f"data.synth.frame_height={size}",
        f"data.synth.frame_width={size}", f"data.frame_size={size}", f"data.synth.num_train_clips={clips}",
        "data.synth.num_val_clips=0", "data.synth.num_test_clips=0", "data.splits=[train]",
        f"data.synth.seed={seed}", f"seed={seed}",
        "preprocess.maskige.source=classical", "preprocess.embed.source=classical",
        f"preprocess.output={work}/datasets", f"preprocess.shards.samples_per_shard={samples_per_shard}",
    ]


def make_data(work: str, clips: int, size: int, seed: int, samples_per_shard: int) -> tuple[str, str, dict]:
    """Generate SynthAVS S4 and its shards through the project's own code; write the Maskige
    PNGs beside the layout. Returns (SynthAVS root = AVSBench root, data set URL, figures)."""
    from infra.config import compose
    from infra.storage import Storage
    from tasks.preprocess import run_preprocess
    from tasks.synthavs import ensure_synthavs

    cfg = compose(data_overrides(work, clips, size, seed, samples_per_shard))
    storage = Storage(cfg.storage)
    t0 = time.perf_counter()
    root, summary, _ = ensure_synthavs(cfg, storage, progress=False)
    t1 = time.perf_counter()
    say(f"[data] SynthAVS hard S4: {summary['clips']} train clips of {size} px in {t1 - t0:.1f} s at {root}")
    result = run_preprocess(cfg, storage, source_root=root, progress=False)
    t2 = time.perf_counter()
    m = result.manifest
    say(f"[data] shards: {m.num_samples} clips in {len(m.shards)} shards, {len(m.rejects)} rejects, "
        f"in {t2 - t1:.1f} s at {result.dataset_url}")
    if m.rejects:
        say(f"[data] rejects: {[r['reason'] for r in m.rejects[:3]]}")
    n = write_maskige_pngs(result.dataset_url, root, storage)
    say(f"[data] {n} Maskige PNGs written from the shards into s4_data/{MASKIGE_DIR}/ in {time.perf_counter() - t2:.1f} s")
    return root, result.dataset_url, {"synth_s": t1 - t0, "preprocess_s": t2 - t1, "clips": m.num_samples,
                                      "shards": len(m.shards)}


def write_maskige_pngs(dataset_url: str, avsbench_root: str, storage: Any) -> int:
    """Each clip's Maskiges, read from the shards, as per-frame palette PNGs where COMBO's
    offline script leaves them. Returns the number of PNGs written."""
    from tasks.enrich.maskige import maskige_png
    from tasks.shards.manifest import read_manifest
    from tasks.shards.schema import decode_sample, read_shard

    categories = {vid: cat for vid, cat in read_s4_rows(avsbench_root, "train")}
    manifest = read_manifest(dataset_url, storage)
    if manifest is None:
        raise BenchError(f"no manifest.json at {dataset_url}")
    base, written = s4_base(avsbench_root), 0
    for url in manifest.shard_urls(dataset_url):
        for raw in read_shard(url, storage):
            clip = decode_sample(raw)
            if clip.maskiges is None:
                raise BenchError(f"clip {clip.clip_id} in {url} has no Maskige (preprocess.maskige.source?)")
            split = clip.meta["split"]
            category = categories.get(clip.clip_id) or clip.meta["labels"][0]
            for t in range(clip.maskiges.shape[0]):
                path = maskige_png_path(base, split, category, clip.clip_id, t + 1)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(maskige_png(clip.maskiges[t]))
                written += 1
    return written


# ==============================================================================================
# Other users of this machine: CPU used outside this benchmark's process tree
# ==============================================================================================
class ForeignLoad:
    """CPU seconds used by processes outside this benchmark's process tree (its Ray cluster and
    DataLoader workers are inside it), sampled from /proc every `period` s in a thread. On a
    shared machine another job's load slows both paths unevenly (torch's default 2 intra-op
    threads of the baseline's training process stall when the second core is taken), so every
    phase reports the cores others used, and timed phases wait for a quiet machine first."""

    def __init__(self, period: float = 0.5):
        self.period, self.me, self.total = period, os.getpid(), 0.0
        self.available = os.path.isdir("/proc") and hasattr(os, "sysconf")
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self._last: dict[int, float] | None = None
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="foreign-load", daemon=True)

    def _snapshot(self) -> dict[int, tuple[int, float]]:
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self.tick)
            except (OSError, IndexError, ValueError):
                continue
        return out

    def _foreign(self, snap: dict[int, tuple[int, float]]) -> dict[int, float]:
        ours: dict[int, bool] = {self.me: True}

        def is_ours(pid: int) -> bool:
            chain = []
            while pid not in ours and pid > 1 and pid in snap and len(chain) < 64:
                chain.append(pid)
                pid = snap[pid][0]
            verdict = ours.get(pid, False)
            for p in chain:
                ours[p] = verdict
            return verdict

        return {pid: cpu for pid, (_, cpu) in snap.items() if not is_ours(pid)}

    def _sample(self) -> None:
        foreign = self._foreign(self._snapshot())
        with self._lock:
            if self._last is not None:
                for pid, cpu in foreign.items():
                    prev = self._last.get(pid)
                    self.total += cpu if prev is None else max(0.0, cpu - prev)  # new: started since
            self._last = foreign

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(Exception):
                self._sample()

    def start(self) -> ForeignLoad:
        if self.available:
            self._sample()
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def mark(self) -> tuple[float, float]:
        with self._lock:
            return time.perf_counter(), self.total

    def cores_since(self, mark: tuple[float, float]) -> float | None:
        """Average cores others used since mark (None where /proc cannot be read)."""
        if not self.available:
            return None
        now, total = self.mark()
        return (total - mark[1]) / max(now - mark[0], 1e-9)

    def wait_quiet(self, max_wait: float, threshold: float = 0.3, window: float = 5.0) -> float | None:
        """Wait (at most max_wait s) until others used below threshold cores over a window."""
        if not self.available or max_wait <= 0:
            return None
        deadline, said = time.perf_counter() + max_wait, False
        while True:
            mark = self.mark()
            time.sleep(window)
            load = self.cores_since(mark)
            if load is None or load < threshold:
                return load
            if time.perf_counter() >= deadline:
                say(f"[load] other processes still use {load:.2f} cores after waiting {max_wait:.0f} s: going on; "
                    "the figures below are disturbed")
                return load
            if not said:
                say(f"[load] other processes use {load:.2f} of {os.cpu_count()} cores: waiting for a quiet machine "
                    f"(at most {max_wait:.0f} s, --quiet-wait)")
                said = True


# ==============================================================================================
# CPU benchmark
# ==============================================================================================
def run_baseline(avsbench_root: str, args: argparse.Namespace, options: dict, train_cfg: Any,
                 workers: int, load: ForeignLoad) -> dict[str, Any]:
    """The papers' loop; per-epoch samples/s timed as the flow's loop times its epochs."""
    import torch

    wall0 = time.perf_counter()
    random.seed(args.seed)
    dataset = AVSBenchS4Clips(avsbench_root, args.image_size, "train", args.pickle)
    steps_per_epoch = math.ceil(len(dataset) / args.batch)
    stepper = Stepper(args.model, options, train_cfg, args.epochs * steps_per_epoch, "cpu", "none", args.seed)
    say(f"[baseline] {args.model} ({stepper.params / 1e6:.2f} M params), {len(dataset)} clips, batch {args.batch}, "
        f"{args.image_size} px, DataLoader workers {workers}, torch threads {torch.get_num_threads()}, "
        f"log-mel via {'pickle.load' if args.pickle == 'pickle' else 'tasks.decode.safe_pickle.load_array'}")
    epochs = []
    for epoch in range(args.epochs):
        started, mark = time.perf_counter(), load.mark()
        clips, wait, steps = 0, 0.0, 0
        batches = iter(baseline_loader(dataset, args.batch, workers, args.seed, epoch))
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - t
            if batch is None:
                break
            stepper.step(batch)
            clips, steps = clips + len(batch["clip_id"]), steps + 1
        seconds = time.perf_counter() - started
        others = load.cores_since(mark)
        epochs.append({"epoch": epoch + 1, "samples": clips, "seconds": seconds, "samples_per_s": clips / seconds,
                       "data_wait_share": wait / seconds, "steps": steps, "foreign_cores": others})
        say(f"[baseline] epoch {epoch + 1}/{args.epochs}: {clips} clips in {seconds:.1f} s = "
            f"{clips / seconds:.2f} samples/s ({100 * wait / seconds:.0f}% waiting for data){_others(others)}")
    wall = time.perf_counter() - wall0
    total = sum(e["samples"] for e in epochs)
    return {"epochs": epochs, "wall_s": wall, "wall_samples_per_s": total / wall,
            "steady_samples_per_s": steady(epochs),
            "torch_threads": torch.get_num_threads(), "data_wait_share": statistics.median(
                e["data_wait_share"] for e in epochs[1:] or epochs)}


DISTURBED_CORES = 0.3  # an epoch during which other processes used more is left out of the steady state


def steady(epochs: list[dict[str, Any]]) -> float:
    """Median samples/s of the epochs after the first (all of them when there is one), leaving
    out epochs during which other processes used > DISTURBED_CORES cores, unless all were."""
    later = epochs[1:] or epochs
    quiet = [e for e in later if (e.get("foreign_cores") or 0.0) <= DISTURBED_CORES] or later
    return statistics.median(e["samples_per_s"] for e in quiet)


def disturbed(epochs: list[dict[str, Any]]) -> list[int]:
    return [e["epoch"] for e in epochs if (e.get("foreign_cores") or 0.0) > DISTURBED_CORES]


def all_disturbed(epochs: list[dict[str, Any]]) -> bool:
    """No undisturbed epoch after the first: the steady state is another job's, not ours."""
    later = epochs[1:] or epochs
    return all((e.get("foreign_cores") or 0.0) > DISTURBED_CORES for e in later)


def _probe_threads(config: dict, *, _probe_dir: str, _inner: Callable, **kwargs: Any) -> None:
    """Runs in each Ray Train worker: records the threads Ray left it, then the real loop."""
    import ray.train
    import torch

    rank = ray.train.get_context().get_world_rank()
    info = {"rank": rank, "pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    with open(os.path.join(_probe_dir, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)
    return _inner(config, **kwargs)


def run_flow(dataset_url: str, work: str, args: argparse.Namespace, load: ForeignLoad,
             run_name: str = "bench") -> dict[str, Any]:
    """tasks.train.run.run_training with Ray Train workers; figures from its own reports."""
    import ray

    import tasks.train.run as run_mod
    from infra.config import compose
    from infra.storage import Storage

    per_worker = args.batch // args.flow_workers
    overrides = [
        f"model={args.model}", "train=cpu", f"train.num_workers={args.flow_workers}",
        f"train.cpus_per_worker={args.flow_cpus_per_worker}", f"train.loader.batch_size={per_worker}",
        f"train.loader.num_workers={args.flow_loader_workers}", f"train.loader.image_size={args.image_size}",
        f"train.loader.seed={args.seed}", f"train.epochs={args.epochs}", "train.val_split=null",
        "train.test_split=null", "train.evaluate=false", f"train.storage_path={work}/runs", f"train.run_name={run_name}",
        f"output={work}/outputs", f"seed={args.seed}",
    ]
    cfg = compose(overrides)
    say(f"[flow] run_training: {args.flow_workers} Ray Train worker(s) x {args.flow_cpus_per_worker} CPU, "
        f"{per_worker} clips per worker (global batch {per_worker * args.flow_workers}), "
        f"{args.flow_loader_workers} DataLoader worker(s) per Ray worker, shuffle buffer "
        f"{cfg.train.loader.shuffle_buffer}, augment {cfg.train.loader.augment}")
    marks: list[tuple[float, float]] = []

    class EpochMarks(logging.Handler):
        """Notes the foreign-load counter as each epoch's report line reaches the driver."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("epoch "):
                marks.append(load.mark())

    logger = logging.getLogger("bench.train_throughput")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[flow] %(message)s"))
    logger.addHandler(handler)
    logger.addHandler(EpochMarks())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    probe_dir = os.path.join(work, "thread-probe")
    os.makedirs(probe_dir, exist_ok=True)
    original = run_mod.train_loop_per_worker
    run_mod.train_loop_per_worker = functools.partial(_probe_threads, _probe_dir=probe_dir, _inner=original)
    try:
        t0, start = time.perf_counter(), load.mark()
        result = run_mod.run_training(cfg, Storage(cfg.storage), dataset_url, logger=logger)
        wall = time.perf_counter() - t0
        whole = load.cores_since(start)
    finally:
        run_mod.train_loop_per_worker = original
        if ray.is_initialized():
            ray.shutdown()
    if result.failures:
        raise BenchError(f"the flow's training had worker failures: {result.failures}")
    reports = [r[0] for r in result.reports]  # rank 0's metrics (global samples, rank 0's clock)
    if len(reports) != args.epochs:
        raise BenchError(f"the flow reported {len(reports)} epoch(s), expected {args.epochs}")
    epochs = [{"epoch": r["epoch"], "samples": r["samples"], "samples_per_s": r["samples_per_s"],
               "epoch_s": r["epoch_s"]} for r in reports]
    if load.available and len(marks) == len(epochs):  # others' cores between consecutive epoch reports
        for i in range(1, len(epochs)):
            (t_a, c_a), (t_b, c_b) = marks[i - 1], marks[i]
            epochs[i]["foreign_cores"] = (c_b - c_a) / max(t_b - t_a, 1e-9)
    for e in epochs:
        say(f"[flow] epoch {e['epoch']}/{args.epochs}: {e['samples_per_s']:.2f} samples/s (its own report)"
            f"{_others(e.get('foreign_cores'))}")
    threads = []
    for name in sorted(os.listdir(probe_dir)):
        with open(os.path.join(probe_dir, name)) as f:
            threads.append(json.load(f))
    total = sum(e["samples"] for e in epochs)
    return {"epochs": epochs, "wall_s": wall, "wall_samples_per_s": total / wall,
            "steady_samples_per_s": steady(epochs),
            "worker_threads": threads, "per_worker_batch": per_worker, "foreign_cores": whole}


def _others(cores: float | None) -> str:
    return "" if cores is None else f"; other processes used {cores:.2f} cores"



def compute_alone(args: argparse.Namespace, options: dict, train_cfg: Any, load: ForeignLoad,
                  warmup: int = 2, steps: int = 6) -> dict[str, float]:
    """Samples/s of the training step alone on a batch held in memory (no loader): as the
    baseline runs it (one process, torch's default threads, batch B) and as one flow rank runs
    it (1 thread, batch B / workers) times the number of ranks (the ceiling of W ranks on W cores)."""
    import torch

    out = {}
    default_threads = torch.get_num_threads()
    for key, threads, batch, ranks in (("baseline", default_threads, args.batch, 1),
                                       ("flow", 1, args.batch // args.flow_workers, args.flow_workers)):
        torch.set_num_threads(threads)
        try:
            stepper = Stepper(args.model, options, train_cfg, warmup + steps, "cpu", "none", args.seed)
            data = synthetic_batch(batch, NUM_FRAMES, args.image_size)
            mark = load.mark()
            result = step_alone(stepper, data, warmup, steps, UtilSampler("cpu"))
        finally:
            torch.set_num_threads(default_threads)
        out[f"{key}_compute_samples_per_s"] = result["samples_per_s"] * ranks
        say(f"[compute] {key:8s} step alone ({threads} thread(s), batch {batch}{f', x {ranks} ranks' if ranks > 1 else ''}): "
            f"{out[f'{key}_compute_samples_per_s']:.2f} samples/s ({1000 / out[f'{key}_compute_samples_per_s']:.0f} ms "
            f"of compute per clip){_others(load.cores_since(mark))}")
    return out


def loaders_alone(avsbench_root: str, dataset_url: str, args: argparse.Namespace, workers: int,
                  load: ForeignLoad, epochs: int = 3) -> dict[str, float]:
    """Clips/s of each data path without the model: whole epochs (loader start included), the
    median over `epochs` epochs (those disturbed by other processes left out, unless all were),
    with `workers` DataLoader workers and in-process."""
    from infra.schema.shards import LoaderConfig
    from infra.storage import Storage
    from tasks.shards.loader import make_loader

    storage = Storage()
    dataset = AVSBenchS4Clips(avsbench_root, args.image_size, "train", args.pickle)
    out: dict[str, float] = {}
    checked = False
    for n in sorted({workers, 0}, reverse=True):
        cfg = LoaderConfig(batch_size=args.batch, num_workers=n, image_size=args.image_size,
                           shuffle_buffer=args.shuffle_buffer, seed=args.seed)
        for name, make in (("baseline", lambda e: baseline_loader(dataset, args.batch, n, args.seed, e)),
                           ("flow", lambda e: make_loader(dataset_url, storage, cfg, "train", e))):
            runs = []
            for epoch in range(epochs):
                t0, clips, mark = time.perf_counter(), 0, load.mark()
                for batch in make(epoch):
                    clips += len(batch["clip_id"])
                    if not checked:
                        check_batch_functions(batch)
                        checked = True
                runs.append({"epoch": epoch + 1, "samples_per_s": clips / (time.perf_counter() - t0),
                             "foreign_cores": load.cores_since(mark)})
            quiet = [r for r in runs if (r["foreign_cores"] or 0.0) <= DISTURBED_CORES] or runs
            key = f"{name}_loader_{'workers' if n else 'inprocess'}_clips_per_s"
            out[key] = statistics.median(r["samples_per_s"] for r in quiet)
            left_out = len(runs) - len(quiet)
            say(f"[loaders] {name:8s} {'%d DataLoader workers' % n if n else 'in-process':22s}: "
                f"{out[key]:7.1f} clips/s ({clips} clips per epoch, median of {len(quiet)} epochs"
                f"{f'; {left_out} disturbed left out' if left_out else ''})"
                f"{_others(max((r['foreign_cores'] or 0.0) for r in quiet) if load.available else None)}")
    return out


def cpu_main(args: argparse.Namespace) -> None:
    import torch

    cpus = os.cpu_count() or 1
    workers = min(PAPERS_NUM_WORKERS, cpus) if args.baseline_workers is None else args.baseline_workers
    if args.batch % args.flow_workers:
        raise BenchError(f"--batch {args.batch} must divide over --flow-workers {args.flow_workers}")
    if args.image_size % 32:
        raise BenchError(f"--image-size must be a multiple of 32 (the backbones' stride), got {args.image_size}")
    if args.epochs < 2:
        say("note: with --epochs 1 the steady state includes the first epoch's start-up")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    work = args.work or tempfile.mkdtemp(prefix="bench-train-")
    os.makedirs(work, exist_ok=True)
    say(f"train throughput: {args.model}, {args.clips} clips of {args.size} px -> {args.image_size} px, batch "
        f"{args.batch}, {args.epochs} epochs; {cpus} CPUs, torch {torch.__version__}; work folder {work}")
    try:
        import ray

        from infra.config import compose

        load = ForeignLoad().start()
        root, dataset_url, data = make_data(work, args.clips, args.size, args.seed, args.samples_per_shard)
        if ray.is_initialized():
            ray.shutdown()  # the flow starts its own (its wall clock includes that); the baseline runs without Ray
        cfg = compose([f"model={args.model}", "train=cpu"])
        options = cfg.model.builder_options(num_classes=1)
        args.shuffle_buffer = cfg.train.loader.shuffle_buffer
        phases: dict[str, float | None] = {}
        loaders: dict[str, float] = {}
        if not args.skip_loaders:
            load.wait_quiet(args.quiet_wait)
            mark = load.mark()
            loaders = loaders_alone(root, dataset_url, args, workers, load)
            loaders.update(compute_alone(args, options, cfg.train, load))
            phases["loaders"] = load.cores_since(mark)
        for attempt in range(1 + args.retries):
            load.wait_quiet(args.quiet_wait)
            mark = load.mark()
            base = run_baseline(root, args, options, cfg.train, workers, load)
            phases["baseline"] = load.cores_since(mark)
            if not all_disturbed(base["epochs"]) or attempt == args.retries:
                break
            say("[load] every steady epoch of the baseline was disturbed by other processes: running it again")
        for attempt in range(1 + args.retries):
            load.wait_quiet(args.quiet_wait)
            flow = run_flow(dataset_url, work, args, load, run_name=f"bench-{attempt}")  # a new run, not a resume
            phases["flow"] = flow["foreign_cores"]
            if not all_disturbed(flow["epochs"]) or attempt == args.retries:
                break
            say("[load] every steady epoch of the flow was disturbed by other processes: running it again")
        load.stop()
    finally:
        if args.keep:
            say(f"kept the work folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    speedup = flow["steady_samples_per_s"] / base["steady_samples_per_s"]
    wall_speedup = flow["wall_samples_per_s"] / base["wall_samples_per_s"]
    threads = sorted({(t["torch_threads"], t["OMP_NUM_THREADS"]) for t in flow["worker_threads"]})
    say("")
    say(f"{'path':58s} {'steady':>8s} {'wall':>8s}   per epoch (samples/s)")
    say(f"{'baseline: 1 process, ' + str(workers) + ' DataLoader workers, PNG + pkl per clip':58s} "
        f"{base['steady_samples_per_s']:8.2f} {base['wall_samples_per_s']:8.2f}   "
        + " ".join(f"{e['samples_per_s']:.2f}" for e in base["epochs"]))
    label = f"flow: {args.flow_workers} Ray Train workers, shards, {args.flow_loader_workers} loader worker(s) each"
    say(f"{label:58s} {flow['steady_samples_per_s']:8.2f} {flow['wall_samples_per_s']:8.2f}   "
        + " ".join(f"{e['samples_per_s']:.2f}" for e in flow["epochs"]))
    say(f"{'speedup (flow / baseline)':58s} {speedup:8.2f} {wall_speedup:8.2f}")
    say(f"steady = median samples/s of epochs 2..{args.epochs}; wall = all clips / wall clock, start-up included "
        f"(baseline {base['wall_s']:.1f} s, flow {flow['wall_s']:.1f} s incl. Ray start)")
    say(f"baseline: {base['torch_threads']} torch threads in the training process; "
        f"{100 * base['data_wait_share']:.0f}% of a steady epoch waiting for data")
    say(f"flow: Ray Train workers' (torch intra-op threads, OMP_NUM_THREADS): {threads} "
        f"({[t['torch_threads'] for t in flow['worker_threads']]} per rank)")
    if loaders:
        say(f"loaders alone (clips/s, no model): baseline {loaders.get('baseline_loader_workers_clips_per_s', 0):.1f} "
            f"vs flow {loaders.get('flow_loader_workers_clips_per_s', 0):.1f} with {workers} workers; in-process "
            f"baseline {loaders['baseline_loader_inprocess_clips_per_s']:.1f} vs flow "
            f"{loaders['flow_loader_inprocess_clips_per_s']:.1f}")
        data_ms = {k: 1000 / loaders[f"{k}_loader_inprocess_clips_per_s"] for k in ("baseline", "flow")}
        rank_ms = 1000 * args.flow_workers / loaders["flow_compute_samples_per_s"]
        say(f"per clip: reading it costs {data_ms['baseline']:.0f} ms (baseline) / {data_ms['flow']:.0f} ms (flow) of one "
            f"core; training on it {1000 / loaders['baseline_compute_samples_per_s']:.0f} ms of wall time (baseline's step, "
            f"{base['torch_threads']} threads) / {rank_ms:.0f} ms of one core (a flow rank): "
            f"{'compute' if max(data_ms.values()) < rank_ms else 'data'} dominates. Step-alone "
            f"ceilings: baseline {loaders['baseline_compute_samples_per_s']:.2f}, flow "
            f"{loaders['flow_compute_samples_per_s']:.2f} samples/s ({args.flow_workers} ranks x 1 thread, no all-reduce)")
    if load.available:
        say("other processes on this machine used (cores, average): " + ", ".join(
            f"{k} {v:.2f}" for k, v in phases.items() if v is not None)
            + ("  <- disturbed: rerun on a quiet machine" if any((v or 0) > 0.3 for v in phases.values()) else ""))
    aim = "met" if speedup >= 2 else "NOT met"
    say(f"aim (flow >= 2x baseline, steady state): {aim} ({speedup:.2f}x)")
    summary = {
        "flow_samples_per_s": round(flow["steady_samples_per_s"], 3),
        "baseline_samples_per_s": round(base["steady_samples_per_s"], 3),
        "speedup": round(speedup, 3),
        "flow_wall_samples_per_s": round(flow["wall_samples_per_s"], 3),
        "baseline_wall_samples_per_s": round(base["wall_samples_per_s"], 3),
        "wall_speedup": round(wall_speedup, 3),
        "flow_epoch_samples_per_s": [round(e["samples_per_s"], 3) for e in flow["epochs"]],
        "baseline_epoch_samples_per_s": [round(e["samples_per_s"], 3) for e in base["epochs"]],
        "baseline_data_wait_share": round(base["data_wait_share"], 3),
        **{k: round(v, 2) for k, v in loaders.items()},
        "loader_speedup_workers": round(loaders["flow_loader_workers_clips_per_s"]
                                        / loaders["baseline_loader_workers_clips_per_s"], 3) if loaders else None,
        "loader_speedup_inprocess": round(loaders["flow_loader_inprocess_clips_per_s"]
                                          / loaders["baseline_loader_inprocess_clips_per_s"], 3) if loaders else None,
        "flow_disturbed_epochs": disturbed(flow["epochs"]), "baseline_disturbed_epochs": disturbed(base["epochs"]),
        "model": args.model, "clips": data["clips"], "shards": data["shards"], "frame_size": args.size,
        "image_size": args.image_size, "batch": args.batch, "epochs": args.epochs,
        "baseline_loader_workers": workers, "baseline_torch_threads": base["torch_threads"],
        "flow_workers": args.flow_workers, "flow_cpus_per_worker": args.flow_cpus_per_worker,
        "flow_per_worker_batch": flow["per_worker_batch"], "flow_loader_workers": args.flow_loader_workers,
        "flow_worker_torch_threads": [t["torch_threads"] for t in flow["worker_threads"]],
        "pickle": args.pickle, "cpus": os.cpu_count(), "torch": torch.__version__,
        "foreign_cpu_cores": {k: (None if v is None else round(v, 3)) for k, v in phases.items()},
    }
    print(json.dumps(summary), flush=True)


# ==============================================================================================
# Preparation of the GPU run's data (here)
# ==============================================================================================
def _folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def prepare_gpu_data(args: argparse.Namespace) -> None:
    """A small 224-px shard data set and its AVSBench layout + Maskige PNGs in one folder."""
    out = os.path.abspath(args.prepare_gpu_data)
    if os.path.exists(out) and os.listdir(out):
        raise BenchError(f"--prepare-gpu-data {out}: the folder exists and is not empty; give a new one")
    work = tempfile.mkdtemp(prefix="bench-train-prep-")
    try:
        import ray

        root, dataset_url, data = make_data(work, args.gpu_prep_clips, args.size, args.seed, args.gpu_prep_per_shard)
        if ray.is_initialized():
            ray.shutdown()
        os.makedirs(out, exist_ok=True)
        shutil.copytree(dataset_url, os.path.join(out, "dataset"))
        src, dst = s4_base(root), s4_base(os.path.join(out, "avsbench"))
        os.makedirs(dst)
        shutil.copy2(os.path.join(src, S4_CSV), dst)
        for part in ("visual_frames", "audio_log_mel", "gt_masks", MASKIGE_DIR):  # what the baseline reads
            shutil.copytree(os.path.join(src, "s4_data", part), os.path.join(dst, "s4_data", part))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = {p: round(_folder_mb(os.path.join(out, p)), 2) for p in ("dataset", "avsbench")}
    total = sum(sizes.values())
    info = {"prepared": out, "clips": data["clips"], "shards": data["shards"], "frame_size": args.size,
            "mb": sizes, "total_mb": round(total, 2), "seed": args.seed}
    with open(os.path.join(out, "prepared.json"), "w") as f:
        json.dump(info, f, indent=1)
    say(f"prepared {out}: {data['clips']} clips, {data['shards']} shards, {total:.1f} MB "
        f"(dataset {sizes['dataset']} MB, avsbench {sizes['avsbench']} MB)")
    if total > 40:
        say(f"WARNING: {total:.1f} MB is above 40 MB: use fewer --gpu-prep-clips")
    say(f"on the GPU machine: python bench/train_throughput.py --gpu --gpu-dataset {out}/dataset "
        f"--gpu-avsbench {out}/avsbench")
    print(json.dumps(info), flush=True)


# ==============================================================================================
# GPU mode: torch, timm, numpy, PIL, scipy, models/, tasks/shards/loader.py (+ webdataset, soundfile)
# ==============================================================================================
class _Blocker:
    """A sys.meta_path finder that makes `import ray` (and the others) fail, as on the GPU machine."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is blocked in --gpu mode (absent on the GPU machine)", name=fullname)
        return None


def _check_gpu_imports(need_loader: bool) -> None:
    missing = []
    for name, why in (("torch", "models"), ("timm", "models/backbones.py (r50, pvt_b5)"), ("numpy", ""),
                      ("PIL", "the baseline's PNGs"), ("scipy", "models/matcher.py (Hungarian matching)"),
                      ("yaml", "reading conf/model/*.yaml"), ("torchvision", "tasks/shards/loader.py, timm"),
                      ("fsspec", "infra/storage.py")) + ((("webdataset", "tasks/shards/loader.py"),
                                                           ("soundfile", "tasks/shards/schema.py decode_sample")) if need_loader else ()):
        try:
            __import__(name)
        except ImportError as e:
            missing.append(f"{name} (for {why or name}): {e}")
    if missing:
        raise BenchError("--gpu needs these modules: " + "; ".join(missing) + " (carry them as wheels)")


def model_options_from_conf(name: str) -> dict[str, Any]:
    """The builder options of conf/model/{name}.yaml (what compose gives, without Hydra)."""
    import yaml

    from infra.schema.model import ModelConfig

    path = os.path.join(_ROOT, "conf", "model", f"{name}.yaml")
    if not os.path.isfile(path):
        raise BenchError(f"no model config {path} (choices: "
                         f"{sorted(f[:-5] for f in os.listdir(os.path.dirname(path)) if f.endswith('.yaml'))})")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    return ModelConfig(**values).builder_options(num_classes=1)


def gpu_loader_conf() -> dict[str, Any]:
    """conf/train/gpu.yaml's loader block (shuffle buffer etc.), read without Hydra."""
    import yaml

    with open(os.path.join(_ROOT, "conf", "train", "gpu.yaml")) as f:
        return (yaml.safe_load(f) or {}).get("loader", {})


class UtilSampler:
    """GPU utilisation (%) sampled every `period` s in a thread: pynvml, else nvidia-smi."""

    def __init__(self, device: Any, period: float = 0.1):
        import torch

        self.period, self.samples, self.source = period, [], None
        self._stop, self._thread, self._read = threading.Event(), None, None
        if torch.device(device).type != "cuda":
            return
        index = torch.device(device).index or 0
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        uuid = f"GPU-{uuid}" if uuid is not None and not str(uuid).startswith("GPU-") else uuid
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = None
            if uuid is not None:
                with contextlib.suppress(Exception):
                    handle = pynvml.nvmlDeviceGetHandleByUUID(str(uuid))
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self._physical_index(index))
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self._read()
            self.source = "pynvml"
            return
        except Exception as e:  # noqa: BLE001 - not installed, no driver access, ...
            say(f"[gpu] pynvml unavailable ({type(e).__name__}: {e}); trying nvidia-smi")
        if shutil.which("nvidia-smi"):
            target = str(uuid) if uuid is not None else str(self._physical_index(index))
            cmd = ["nvidia-smi", f"--id={target}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

            def read() -> float:
                return float(subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout.split()[0])

            try:
                read()
                self._read, self.source = read, "nvidia-smi"
            except Exception as e:  # noqa: BLE001
                say(f"[gpu] nvidia-smi unusable ({type(e).__name__}: {e}): no utilisation figures")

    @staticmethod
    def _physical_index(index: int) -> int:
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        return int(visible[index]) if index < len(visible) and visible[index].isdigit() else index

    def __enter__(self) -> UtilSampler:
        self.samples = []
        if self._read is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gpu-util", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(self._read())
            self._stop.wait(self.period)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"gpu_util_pct": None, "gpu_util_samples": 0, "gpu_util_source": self.source}
        return {"gpu_util_pct": round(statistics.mean(self.samples), 1),
                "gpu_util_median_pct": round(statistics.median(self.samples), 1),
                "gpu_util_samples": len(self.samples), "gpu_util_source": self.source}


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: Any) -> float | None:
    import torch

    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return None


def synthetic_batch(b: int, t: int, size: int) -> dict[str, Any]:
    """Random clips shaped as a loader batch; a square object on the first frame's mask (S4 train)."""
    import torch

    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(b, t, size, size, dtype=torch.long)
    masks[:, 0, size // 4: size // 2, size // 4: size // 2] = 1
    gt = torch.zeros(b, t, dtype=torch.bool)
    gt[:, 0] = True
    return {"frames": torch.rand(b, t, 3, size, size, generator=g), "maskige": torch.rand(b, t, 3, size, size, generator=g),
            "masks": masks, "gt_frames": gt, "logmel": torch.randn(b, t, 96, 64, generator=g),
            "has_maskige": torch.ones(b, dtype=torch.bool), "clip_id": [f"synthetic_{i}" for i in range(b)]}


def repeated_dataset(dataset_url: str, folder: str, repeat: int) -> str:
    """A data set whose manifest lists every shard of dataset_url `repeat` times (symlinks), so one
    epoch of the flow's loader is `repeat` passes over the small carried data set."""
    import dataclasses

    from infra.storage import Storage
    from tasks.shards.manifest import read_manifest, write_manifest

    storage = Storage()
    manifest = read_manifest(dataset_url, storage)
    if manifest is None:
        raise BenchError(f"--gpu-dataset {dataset_url}: no manifest.json (give a data set version folder, e.g. the "
                         "dataset/ folder of --prepare-gpu-data)")
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    shards = []
    for r in range(repeat):
        for s in sorted(manifest.shards, key=lambda s: s["name"]):
            name = f"r{r:03d}-{s['name']}"
            src = os.path.abspath(manifest.shard_url(dataset_url, s["name"]))
            try:
                os.symlink(src, os.path.join(folder, "shards", name))
            except OSError:
                shutil.copy(src, os.path.join(folder, "shards", name))
            shards.append({**s, "name": name})
    write_manifest(dataclasses.replace(manifest, shards=shards, num_samples=-1, shard_dir="shards"), folder, storage)
    return folder


def fed_run(stepper: Stepper, make_epoch: Callable[[int], Any], warmup: int, steps: int,
            sampler: UtilSampler) -> dict[str, Any]:
    """Steps fed by a loader (a new one per epoch); the last `steps` of warmup + steps are timed."""
    device = stepper.device
    epoch, batches = 0, iter(make_epoch(0))
    clips, wait, t0 = 0, 0.0, None
    for s in range(warmup + steps):
        if s == warmup:
            _sync(device)
            _reset_peak(device)
            sampler.__enter__()
            t0, clips, wait = time.perf_counter(), 0, 0.0
        t = time.perf_counter()
        batch = next(batches, None)
        while batch is None:  # epoch over: a new loader, as the training loop makes per epoch
            epoch += 1
            if epoch > 1000:
                raise BenchError("the loader yields no batch")
            batches = iter(make_epoch(epoch))
            batch = next(batches, None)
        wait += time.perf_counter() - t
        stepper.step(batch)
        clips += len(batch["clip_id"])
    _sync(device)
    seconds = time.perf_counter() - t0
    sampler.__exit__()
    return {"samples_per_s": round(clips / seconds, 3), "step_s": round(seconds / steps, 4),
            "data_wait_share": round(wait / seconds, 3), "peak_mem_gb": _peak_gb(device), "epochs_started": epoch + 1,
            **sampler.summary()}


def step_alone(stepper: Stepper, batch: dict[str, Any], warmup: int, steps: int, sampler: UtilSampler) -> dict[str, Any]:
    device = stepper.device
    batch = stepper.to_device(batch, device)
    for _ in range(warmup):
        stepper.step(batch, on_device=True)
    _sync(device)
    _reset_peak(device)
    times = []
    with sampler:
        for _ in range(steps):
            t = time.perf_counter()
            stepper.step(batch, on_device=True)
            _sync(device)
            times.append(time.perf_counter() - t)
    b = len(batch["clip_id"])
    med = statistics.median(times)
    return {"step_s": round(med, 4), "samples_per_s": round(b / med, 3), "peak_mem_gb": _peak_gb(device),
            **sampler.summary()}


def gpu_main(args: argparse.Namespace) -> None:
    blocker = _Blocker(GPU_BLOCKED)
    sys.meta_path.insert(0, blocker)
    need_loader = bool(args.gpu_dataset)
    _check_gpu_imports(need_loader)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no CUDA device (use --device cpu for the tiny check)")
    from infra.schema.train import TrainConfig

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    options = model_options_from_conf(args.gpu_model)
    train_cfg = TrainConfig()  # COMBO's optimiser: AdamW 1e-4, wd 0.05, backbone x0.1, clip 0.01, poly
    b, t, size = args.gpu_batch, NUM_FRAMES, args.gpu_size
    warmup, steps = args.warmup, args.steps
    cpus = os.cpu_count() or 1
    workers = min(args.gpu_loader_workers, cpus)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpus} cores)"
    say(f"[gpu] {name}, torch {torch.__version__}: {args.gpu_model} at {size} px, batch {b} clips of T={t}, "
        f"{warmup} warm-up + {steps} timed steps, precisions {args.precisions}")
    loader_conf = gpu_loader_conf()
    work = tempfile.mkdtemp(prefix="bench-train-gpu-")
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "model": args.gpu_model, "image_size": size,
                              "batch": b, "frames": t, "steps": steps, "warmup": warmup, "loader_workers": workers,
                              "cpus": cpus}
    try:
        make_flow = make_base = None
        first_batch = None
        if args.gpu_dataset:
            from infra.schema.shards import LoaderConfig
            from infra.storage import Storage
            from tasks.shards.loader import make_loader
            from tasks.shards.manifest import read_manifest

            manifest = read_manifest(os.path.abspath(args.gpu_dataset), Storage())
            if manifest is None:
                raise BenchError(f"--gpu-dataset {args.gpu_dataset}: no manifest.json there")
            n = manifest.split_counts().get("train", 0)
            if not n:
                raise BenchError(f"--gpu-dataset {args.gpu_dataset} holds no train clip")
            repeat = args.gpu_repeat or max(1, math.ceil((warmup + steps) * b / n) + 1)
            url = repeated_dataset(os.path.abspath(args.gpu_dataset), os.path.join(work, "flow-dataset"), repeat)
            lcfg = LoaderConfig(batch_size=b, num_workers=workers, image_size=size,
                                shuffle_buffer=int(loader_conf.get("shuffle_buffer", 256)), seed=args.seed)
            storage = Storage()
            make_flow = lambda e: make_loader(url, storage, lcfg, "train", e)  # noqa: E731
            report["flow_loader"] = {"clips": n, "repeat": repeat, "shards": len(manifest.shards) * repeat,
                                     "shuffle_buffer": lcfg.shuffle_buffer, "augment": lcfg.augment}
            first_batch = next(iter(make_loader(url, storage, LoaderConfig(
                batch_size=b, num_workers=0, image_size=size, shuffle_buffer=0, augment=False), "train")))
        if args.gpu_avsbench:
            rows = len(read_s4_rows(os.path.abspath(args.gpu_avsbench), "train"))
            rep = args.gpu_repeat or max(1, math.ceil((warmup + steps) * b / rows) + 1)
            dataset = AVSBenchS4Clips(os.path.abspath(args.gpu_avsbench), size, "train", args.pickle, repeat=rep)
            pin = device.type == "cuda"  # AVSBench: pin_memory=True
            make_base = lambda e: baseline_loader(dataset, b, workers, args.seed, e, pin_memory=pin)  # noqa: E731
            report["baseline_loader"] = {"clips": rows, "repeat": rep, "pin_memory": pin, "pickle": args.pickle}
        if first_batch is None:
            first_batch = synthetic_batch(b, t, size)
        if len(first_batch["clip_id"]) != b:
            say(f"[gpu] the data set's first batch holds {len(first_batch['clip_id'])} clips; using a synthetic batch")
            first_batch = synthetic_batch(b, t, size)
        report["step_batch"] = "synthetic" if first_batch["clip_id"][0].startswith("synthetic") else "first flow batch"
        sampler = UtilSampler(device)
        report["gpu_util_source"] = sampler.source
        if device.type == "cuda" and sampler.source is None:
            say("[gpu] no GPU utilisation source (pip install nvidia-ml-py, or nvidia-smi on PATH)")
        for precision in args.precisions:
            total = (warmup + steps) * 3 + 10
            stepper = Stepper(args.gpu_model, options, train_cfg, total, device, precision, args.seed)
            if precision == args.precisions[0]:
                report["params"] = stepper.params
            part: dict[str, Any] = {}
            part["step_alone"] = step_alone(stepper, first_batch, warmup, steps, sampler)
            say(f"[gpu] {precision} step alone: {part['step_alone']}")
            for key, make in (("flow_fed", make_flow), ("baseline_fed", make_base)):
                if make is None:
                    continue
                part[key] = fed_run(stepper, make, warmup, steps, sampler)
                say(f"[gpu] {precision} {key}: {part[key]}")
            if "flow_fed" in part and "baseline_fed" in part:
                part["flow_fed_speedup"] = round(part["flow_fed"]["samples_per_s"]
                                                 / part["baseline_fed"]["samples_per_s"], 3)
            report[precision] = part
            del stepper
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "fp32" in report and "bf16" in report:
            report["bf16_step_speedup"] = round(report["fp32"]["step_alone"]["step_s"]
                                                / report["bf16"]["step_alone"]["step_s"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        sys.meta_path.remove(blocker)
    loaded = sorted(m for m in GPU_BLOCKED if m in sys.modules)
    report["blocked_modules_loaded"] = loaded  # [] proves the chain needs none of them
    say("")
    say(f"{'precision':10s} {'what':14s} {'samples/s':>10s} {'step s':>8s} {'GPU util %':>11s} {'peak GB':>8s} "
        f"{'data wait':>10s}")
    for precision in args.precisions:
        for key in ("step_alone", "flow_fed", "baseline_fed"):
            r = report.get(precision, {}).get(key)
            if r:
                util = "-" if r.get("gpu_util_pct") is None else f"{r['gpu_util_pct']:.0f}"
                peak = "-" if r.get("peak_mem_gb") is None else f"{r['peak_mem_gb']:.2f}"
                wait = "-" if "data_wait_share" not in r else f"{100 * r['data_wait_share']:.0f}%"
                say(f"{precision:10s} {key:14s} {r['samples_per_s']:10.2f} {r['step_s']:8.4f} {util:>11s} {peak:>8s} "
                    f"{wait:>10s}")
    print(json.dumps({"gpu": report}), flush=True)


# ==============================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cpu = ap.add_argument_group("CPU benchmark (the default mode)")
    cpu.add_argument("--clips", type=int, default=96, help="train clips (default 96: 24 steps per epoch at batch 4)")
    cpu.add_argument("--size", type=int, default=224, help="frame size written (AVSBench: 224)")
    cpu.add_argument("--image-size", type=int, default=128,
                     help="training image size of both paths (default 128, conf/train/cpu.yaml's; 224 is ~3x slower)")
    cpu.add_argument("--batch", type=int, default=4, help="global batch in clips (AVSBench S4: 4)")
    cpu.add_argument("--epochs", type=int, default=5, help="epochs of each path (steady state: epochs 2..)")
    cpu.add_argument("--model", default="combo_tiny", help="a conf/model/ name (registry name)")
    cpu.add_argument("--samples-per-shard", type=int, default=8)
    cpu.add_argument("--flow-workers", type=int, default=2, help="Ray Train workers (train.num_workers)")
    cpu.add_argument("--flow-cpus-per-worker", type=float, default=1.0, help="train.cpus_per_worker")
    cpu.add_argument("--flow-loader-workers", type=int, default=1,
                     help="DataLoader workers per Ray Train worker (train.loader.num_workers)")
    cpu.add_argument("--baseline-workers", type=int, default=None,
                     help=f"the baseline's DataLoader workers (default: AVSBench's {PAPERS_NUM_WORKERS}, capped at the cores)")
    cpu.add_argument("--pickle", choices=("pickle", "safe"), default="pickle",
                     help="how the baseline reads the log-mel .pkl: pickle.load (AVSBench) or safe_pickle.load_array")
    cpu.add_argument("--skip-loaders", action="store_true", help="skip the loaders-alone measurement")
    cpu.add_argument("--quiet-wait", type=float, default=180.0,
                     help="before each timed phase, wait at most this many seconds for other processes to use "
                          "< 0.3 cores (a shared machine); 0: do not wait")
    cpu.add_argument("--retries", type=int, default=1,
                     help="runs of a path again when other processes disturbed all its steady epochs")
    cpu.add_argument("--work", help="work folder (default: a new temporary one)")
    cpu.add_argument("--keep", action="store_true", help="keep the work folder")
    cpu.add_argument("--seed", type=int, default=0)
    prep = ap.add_argument_group("preparing the GPU run's data")
    prep.add_argument("--prepare-gpu-data", metavar="FOLDER", help="write dataset/ and avsbench/ there (< 40 MB)")
    prep.add_argument("--gpu-prep-clips", type=int, default=40)
    prep.add_argument("--gpu-prep-per-shard", type=int, default=5, help="clips per shard (40 / 5 = 8 shards)")
    gpu = ap.add_argument_group("GPU mode")
    gpu.add_argument("--gpu", action="store_true", help="the GPU measurements (no ray/prefect/hydra needed)")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--gpu-model", default="combo_r50")
    gpu.add_argument("--gpu-size", type=int, default=224)
    gpu.add_argument("--gpu-batch", type=int, default=8)
    gpu.add_argument("--steps", type=int, default=30, help="timed steps of each measurement")
    gpu.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    gpu.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    gpu.add_argument("--gpu-dataset", help="a shard data set version folder (manifest.json, shards/)")
    gpu.add_argument("--gpu-avsbench", help="a folder holding AVSBench_object/Single-source (S4 layout + Maskige PNGs)")
    gpu.add_argument("--gpu-loader-workers", type=int, default=8, help="DataLoader workers of both paths (capped at cores)")
    gpu.add_argument("--gpu-repeat", type=int, default=0,
                     help="passes over the carried clips per epoch (0: enough for one epoch to cover the steps)")
    args = ap.parse_args(argv)
    if args.gpu and args.prepare_gpu_data:
        ap.error("--gpu and --prepare-gpu-data are separate runs")
    for key in ("clips", "batch", "epochs", "flow_workers", "steps", "gpu_batch", "gpu_prep_clips", "samples_per_shard"):
        if getattr(args, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.gpu and args.gpu_size % 32:
        ap.error(f"--gpu-size must be a multiple of 32, got {args.gpu_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.gpu:
            gpu_main(args)
        elif args.prepare_gpu_data:
            prepare_gpu_data(args)
        else:
            cpu_main(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
