"""Pair mining at scale: the approximate IVF miner against the exact one, 20k to 1M frames.

    .venv/bin/python bench/pairs.py                     # 20k, 80k, 320k, 1M frames (about 10 min on 2 cores)
    .venv/bin/python bench/pairs.py --sizes 20000 --exact-sizes 20000 --ray-frames 0   # a quick look

The embeddings are synthetic but shaped like frame embeddings of a video data set (384-d, as
DINO ViT-S): clips of 5 frames, each clip drawn around one of many clusters (a category, a
scene), clusters grouped in families whose centres lie close (cosine about 0.55), so that
neighbourhoods overlap; cluster sizes vary by two orders of magnitude (log-normal weights) and so does their
spread (each cluster its own radius), frames of one clip lie close together. Every size runs
in a child process of its own, so its peak memory (``peak_rss_gb``, the child's maximum
resident set) is its own; the time is the whole ``mine_pairs`` call as the preprocess flow makes
it (index, search, negatives, recall check and the pairs table).

- ``method ivf``: ``tasks.enrich.pairs_ann`` in one process (faiss on every core); recall@10
  against the exact top 10 on 1000 seeded anchors (computed exactly by brute force).
- ``method exact``: the exact blockwise miner, at ``--exact-sizes`` only (it is quadratic), the
  baseline of the speed ratio at those sizes.
- ``--ray-frames N``: the IVF search once more at N frames split over Ray tasks on a local Ray
  (``pairs.partitions``), checked to give the same pairs as the one-process search.

Last line: ``{"sizes": [{"frames", "method", "seconds", "peak_rss_gb", "recall_at_10", ...}, ...],
"speedup_vs_exact": {frames: ratio}, "ray": {...}}``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM = 384
FRAMES_PER_CLIP = 5


def clustered_embeddings(n: int, seed: int = 0, dim: int = DIM):
    """(emb float32 [n, dim], clip ids, keys): clips of 5 frames around clusters of varying size and spread."""
    import numpy as np

    rng = np.random.default_rng(seed)
    clips = -(-n // FRAMES_PER_CLIP)
    num_clusters = max(20, clips // 40)
    weights = rng.lognormal(0.0, 1.2, num_clusters)
    cluster_of_clip = rng.choice(num_clusters, size=clips, p=weights / weights.sum())
    # clusters grouped in families (related categories, similar scenes): centres of one family
    # are close, so neighbourhoods overlap and cells of the index cut across clusters
    families = rng.standard_normal((max(4, num_clusters // 25), dim)).astype(np.float32)
    families /= np.linalg.norm(families, axis=1, keepdims=True)
    centres = families[rng.integers(0, len(families), num_clusters)]
    centres = centres + (0.9 / np.sqrt(dim)) * rng.standard_normal((num_clusters, dim), np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.4, 1.2, num_clusters).astype(np.float32)  # clip offset norm within a cluster
    emb = np.empty((n, dim), np.float32)
    step = 65536
    for c0 in range(0, clips, step):
        c1 = min(c0 + step, clips)
        k = cluster_of_clip[c0:c1]
        clip_centre = centres[k] + (spread[k, None] / np.sqrt(dim)) * rng.standard_normal((c1 - c0, dim), np.float32)
        frames = np.repeat(clip_centre, FRAMES_PER_CLIP, axis=0)
        frames += (0.35 / np.sqrt(dim)) * rng.standard_normal(frames.shape, np.float32)
        r0, r1 = c0 * FRAMES_PER_CLIP, min(c1 * FRAMES_PER_CLIP, n)
        emb[r0:r1] = frames[: r1 - r0]
    clip_ids = [f"c{i // FRAMES_PER_CLIP:07d}" for i in range(n)]
    keys = [f"{c}/{i % FRAMES_PER_CLIP:03d}" for i, c in enumerate(clip_ids)]
    return emb, clip_ids, keys


def _one(frames: int, method: str, k: int, nprobe: int, queue) -> None:
    """Child process: one mining run; puts its figures on the queue."""
    import numpy as np

    from infra.schema.enrich import PairsConfig
    from tasks.enrich.pairs import mine_pairs
    from tasks.enrich.pairs_ann import sampled_recall

    emb, clip_ids, keys = clustered_embeddings(frames)
    cfg = PairsConfig(k_pos=k, num_neg=5, method=method, nprobe=nprobe, partitions=1)
    start = time.perf_counter()
    df = mine_pairs(keys, clip_ids, emb, cfg, device="cpu")
    seconds = time.perf_counter() - start
    row = {"frames": frames, "method": method, "seconds": round(seconds, 1)}
    if method == "ivf":
        row.update(recall_at_10=round(df.attrs["recall_at_k"], 4), nlist=df.attrs["nlist"], nprobe=df.attrs["nprobe"],
                   build_s=df.attrs["build_s"], search_s=df.attrs["search_s"])
    else:  # the exact run's own positives, checked by the same sampled brute force (must be 1)
        index = {key: i for i, key in enumerate(keys)}
        rows = np.array([[index[p] for p in ps] + [frames] * (k - len(ps)) for ps in df["positives"]])
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        _, code = np.unique(np.asarray(clip_ids), return_inverse=True)
        row["recall_at_10"] = round(sampled_recall(x, code.astype(np.int64), rows, k, 1000, 0), 4)
    row["rows_short_of_negatives"] = df.attrs["rows_short_of_negatives"]
    row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    queue.put(row)


def run_child(frames: int, method: str, k: int, nprobe: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(frames, method, k, nprobe, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return row


def ray_run(frames: int, k: int, nprobe: int, partitions: int) -> dict:
    """The IVF search split over Ray tasks against the same search in one process: same pairs?"""
    import ray

    from infra.schema.enrich import PairsConfig
    from tasks.enrich.pairs import mine_pairs

    emb, clip_ids, keys = clustered_embeddings(frames)
    base = dict(k_pos=k, num_neg=5, method="ivf", nprobe=nprobe, recall_sample=0)
    one = mine_pairs(keys, clip_ids, emb, PairsConfig(**base, partitions=1))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        ray.get(ray.remote(lambda: None).remote())  # a worker up: start-up is not the search
        start = time.perf_counter()
        spread = mine_pairs(keys, clip_ids, emb, PairsConfig(**base, partitions=partitions))
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    same = all(list(one[c]) == list(spread[c]) for c in ("positives", "negatives"))
    return {"frames": frames, "partitions": partitions, "seconds": round(seconds, 1),
            "search_s": spread.attrs["search_s"], "one_process_search_s": one.attrs["search_s"], "same_pairs": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 80_000, 320_000, 1_000_000])
    p.add_argument("--exact-sizes", type=int, nargs="*", default=[20_000, 80_000],
                   help="sizes also mined exactly (the speed baseline; quadratic)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--ray-frames", type=int, default=80_000, help="0: skip the Ray run")
    p.add_argument("--ray-partitions", type=int, default=4)
    args = p.parse_args()

    print(f"pair mining, {DIM}-d clustered embeddings, {os.cpu_count()} CPU(s); k = {args.k}, nprobe {args.nprobe}",
          flush=True)
    rows = []
    for frames in args.sizes:
        for method in (("exact", "ivf") if frames in args.exact_sizes else ("ivf",)):
            row = run_child(frames, method, args.k, args.nprobe)
            rows.append(row)
            print(f"  {frames:>9,d} frames  {method:5s}  {row['seconds']:8.1f} s  peak {row['peak_rss_gb']:5.2f} GB"
                  f"  recall@{args.k} {row['recall_at_10']:.4f}"
                  + (f"  (index {row['build_s']} s, search {row['search_s']} s, nlist {row['nlist']})"
                     if method == "ivf" else ""), flush=True)
    speedup = {}
    for frames in args.exact_sizes:
        exact = next((r for r in rows if r["frames"] == frames and r["method"] == "exact"), None)
        ivf = next((r for r in rows if r["frames"] == frames and r["method"] == "ivf"), None)
        if exact and ivf:
            speedup[str(frames)] = round(exact["seconds"] / ivf["seconds"], 2)
            print(f"  {frames:,d} frames: ivf {speedup[str(frames)]:.1f}x faster than exact")
    ray_row = None
    if args.ray_frames:
        ray_row = ray_run(args.ray_frames, args.k, args.nprobe, args.ray_partitions)
        print(f"  Ray, {ray_row['partitions']} tasks, {ray_row['frames']:,d} frames: search {ray_row['search_s']} s "
              f"(one process {ray_row['one_process_search_s']} s); same pairs: {ray_row['same_pairs']}", flush=True)
    print(json.dumps({"dim": DIM, "k": args.k, "nprobe": args.nprobe, "cpus": os.cpu_count(), "sizes": rows,
                      "speedup_vs_exact": speedup, "ray": ray_row}))


if __name__ == "__main__":
    main()
