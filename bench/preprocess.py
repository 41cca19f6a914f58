"""The preprocess flow against a naive sequential loop, and the quality of mined pairs.

    .venv/bin/python bench/preprocess.py [--clips 256] [--size 224] [--preset hard]

Both sides get the same SynthAVS S4 clips (AVSBench layout) and the same mask source
(classical Felzenszwalb unless --mask-source says otherwise):
- baseline: one process, clip after clip, as offline Maskige scripts do: decode the
  clip, generate masks frame by frame, build each Maskige, write one PNG per frame, and
  embed the frames (the same work as the flow; the masks-only loop is reported too);
- pipeline: tasks.preprocess.run_preprocess (Ray Data: decode tasks, Maskige and
  embedding actor pools, shard writing, pair mining, manifest) on a local Ray that is
  already running (its start-up is not counted).
Pair precision: the share of mined positives whose clip shares a visible object category
with the anchor's clip (classical embedding unless --embed-source says otherwise).
The last line is one JSON object: pipeline_clips_per_s, baseline_clips_per_s, speedup,
pair_precision.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def baseline(refs, cfg, storage, out_dir: str, embed: bool) -> float:
    """Sequential: decode, masks frame by frame, Maskige, one PNG file per frame (and, with
    embed, one embedding file per clip: the same work as the flow). Returns seconds."""
    from tasks.enrich.embed import FrameEmbedder
    from tasks.enrich.maskige import MaskigeMaker, maskige_png
    from tasks.decode.sources import decode_or_reject

    maker = MaskigeMaker(cfg.preprocess.maskige, storage)
    embedder = FrameEmbedder(cfg.preprocess.embed, storage) if embed else None
    start = time.perf_counter()
    for ref in refs:
        clip = decode_or_reject(ref, storage, cfg.data.num_frames, cfg.data.frame_size)
        if hasattr(clip, "reason"):
            continue
        folder = os.path.join(out_dir, ref.clip_id)
        os.makedirs(folder, exist_ok=True)
        for t in range(clip.num_frames):
            maskige, _ = maker(clip.frames[t : t + 1])
            with open(os.path.join(folder, f"{t}.png"), "wb") as f:
                f.write(maskige_png(maskige[0]))
        if embedder is not None:
            import numpy as np

            np.save(os.path.join(folder, "dino.npy"), embedder(clip.frames))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=256, help="train clips; val and test get a quarter each (384 in all: enough to reach a steady state; about 8 minutes here)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--preset", default="hard", choices=["easy", "hard", "sync"])
    ap.add_argument("--mask-source", default="classical")
    ap.add_argument("--embed-source", default="classical")
    ap.add_argument("--repeats", type=int, default=1, help="pipeline and baseline runs (medians reported)")
    args = ap.parse_args()

    import statistics

    from infra.config import compose
    from infra.ray_runtime import init_ray
    from infra.storage import Storage, join
    from tasks.enrich.pairs import pair_precision, read_pairs
    from tasks.preprocess import list_source, run_preprocess
    from tasks.shards.schema import sample_key
    from tasks.synthavs import ensure_synthavs
    from tasks.synthavs import generate_clip

    q = max(1, args.clips // 4)
    work = tempfile.mkdtemp(prefix="bench-preprocess-")
    storage = Storage()
    overrides = [
        f"data=synth_{args.preset}", f"data.uri={work}/synth", f"data.synth.frame_height={args.size}",
        f"data.synth.frame_width={args.size}", f"data.synth.num_train_clips={args.clips}",
        f"data.synth.num_val_clips={q}", f"data.synth.num_test_clips={q}",
        f"preprocess.maskige.source={args.mask_source}", f"preprocess.embed.source={args.embed_source}",
        "preprocess.shards.samples_per_shard=8",
    ]
    try:
        cfg = compose(overrides)
        init_ray(cfg.cluster)
        root, _, _ = ensure_synthavs(cfg, storage, progress=False)
        refs, _ = list_source(cfg, storage, root)
        n = len(refs)
        print(f"{n} SynthAVS S4 clips ({args.preset}, {args.size} px, T={cfg.data.num_frames}); "
              f"masks: {args.mask_source}; embeddings: {args.embed_source}; {os.cpu_count()} CPUs")

        base_s, masks_only_s, pipe_s = [], [], []
        for r in range(args.repeats):
            masks_only_s.append(baseline(refs, cfg, storage, f"{work}/masks-only-{r}", embed=False))
            print(f"baseline, masks only     run {r}: {masks_only_s[-1]:.1f} s = {n / masks_only_s[-1]:.3f} clips/s")
            base_s.append(baseline(refs, cfg, storage, f"{work}/baseline-{r}", embed=True))
            print(f"baseline, masks + embed  run {r}: {base_s[-1]:.1f} s = {n / base_s[-1]:.3f} clips/s")
            cfg_r = compose(overrides + [f"preprocess.output={work}/datasets-{r}"])
            t0 = time.perf_counter()
            result = run_preprocess(cfg_r, storage, source_root=root, progress=False)
            pipe_s.append(time.perf_counter() - t0)
            print(f"pipeline (Ray Data flow) run {r}: {pipe_s[-1]:.1f} s = {n / pipe_s[-1]:.3f} clips/s "
                  f"({result.manifest.num_samples} samples, {len(result.manifest.shards)} shards, "
                  f"{len(result.manifest.rejects)} rejects)")

        # Pair precision against the generator's ground truth of what is on screen.
        visible = {}
        for ref in refs:
            split, index = ref.split, int(ref.clip_id.rsplit("_", 1)[1])
            visible[ref.clip_id] = set(generate_clip(cfg.data.synth, "s4", split, index).clip.meta["visible_categories"])
        pairs = read_pairs(join(result.dataset_url, "pairs.parquet"), storage)
        key_to_clip = {}
        for ref in refs:
            for t in range(cfg.data.num_frames):
                key_to_clip[f"{sample_key(ref.clip_id)}/{t:03d}"] = ref.clip_id
        precision = pair_precision(pairs, visible, key_to_clip)
        cats = [len(v) for v in visible.values()]
        print(f"pair precision: {precision:.3f} (k_pos={cfg.preprocess.pairs.k_pos}; "
              f"{statistics.mean(cats):.1f} visible categories per clip of {cfg.data.synth.num_categories})")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pipe, base, masks_only = statistics.median(pipe_s), statistics.median(base_s), statistics.median(masks_only_s)
    print(json.dumps({
        "pipeline_clips_per_s": round(n / pipe, 3),
        "baseline_clips_per_s": round(n / base, 3),
        "speedup": round(base / pipe, 3),
        "baseline_masks_only_clips_per_s": round(n / masks_only, 3),
        "speedup_vs_masks_only": round(masks_only / pipe, 3),
        "pair_precision": round(precision, 3),
        "clips": n, "frame_size": args.size, "preset": args.preset, "mask_source": args.mask_source,
        "embed_source": args.embed_source, "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
