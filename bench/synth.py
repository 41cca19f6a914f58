"""SynthAVS generation rate and decode rate on this machine.

    .venv/bin/python bench/synth.py [--clips 64] [--size 224]

Generation: S4 clips of the hard preset written in both formats (AVSBench layout + mp4),
once in one process and once as parallel Ray tasks (what the flows do). Decoding: the
same clips read back by the AVSBench reader and by the video reader, in one process and
through the per-clip deadline child the preprocess flow uses (the cost of the deadline).
The last line is one JSON object with synth_clips_per_s, decode_clips_per_s and the
``*_deadline_clips_per_s`` figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=64, help="train clips (val/test get a quarter each)")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()

    import ray

    from infra.config import compose
    from infra.storage import Storage
    from tasks.decode.sources import decode_or_reject, list_avsbench, list_videos
    from tasks.synthavs import ensure_synthavs

    q = max(1, args.clips // 4)
    work = tempfile.mkdtemp(prefix="bench-synth-")
    storage = Storage()
    figures = {}
    try:
        for mode in ("sequential", "ray"):
            cfg = compose([f"data.uri={work}/{mode}", f"data.synth.frame_height={args.size}",
                           f"data.synth.frame_width={args.size}", f"data.synth.num_train_clips={args.clips}",
                           f"data.synth.num_val_clips={q}", f"data.synth.num_test_clips={q}"])
            t0 = time.perf_counter()
            root, summary, _ = ensure_synthavs(cfg, storage, ("s4",), progress=False, use_ray=mode == "ray")
            seconds = time.perf_counter() - t0
            figures[f"synth_{mode}_clips_per_s"] = summary["clips"] / seconds
            print(f"generate ({mode:10s}): {summary['clips']} clips of {args.size} px in {seconds:.1f} s "
                  f"= {summary['clips'] / seconds:.2f} clips/s")
        ray.shutdown()

        refs, _ = list_avsbench(root, "s4", storage)
        vids, _ = list_videos(f"{root}/videos", storage)
        # Each reader in this process, then in a deadline child (what the preprocess flow does:
        # the clip and its result cross a pipe); the child is started before the clock runs.
        decode_or_reject(refs[0], storage, 5, args.size, deadline_s=600)
        for name, items, deadline in (("avsbench", refs, None), ("video", vids, None),
                                      ("avsbench_deadline", refs, 600), ("video_deadline", vids, 600)):
            t0 = time.perf_counter()
            ok = sum(1 for r in items if not hasattr(decode_or_reject(r, storage, 5, args.size, deadline), "reason"))
            seconds = time.perf_counter() - t0
            figures[f"decode_{name}_clips_per_s"] = len(items) / seconds
            print(f"decode ({name:17s}): {ok}/{len(items)} clips in {seconds:.1f} s = "
                  f"{len(items) / seconds:.2f} clips/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "synth_clips_per_s": round(figures["synth_ray_clips_per_s"], 3),
        "synth_sequential_clips_per_s": round(figures["synth_sequential_clips_per_s"], 3),
        "decode_clips_per_s": round(figures["decode_avsbench_clips_per_s"], 3),
        "decode_video_clips_per_s": round(figures["decode_video_clips_per_s"], 3),
        "decode_deadline_clips_per_s": round(figures["decode_avsbench_deadline_clips_per_s"], 3),
        "decode_video_deadline_clips_per_s": round(figures["decode_video_deadline_clips_per_s"], 3),
        "frame_size": args.size,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
