"""How whole are the objects in a Maskige? Best-match IoU against SynthAVS's exact objects.

A Maskige (:mod:`tasks.enrich.maskige`) helps the model only where its segments line up
with objects: SAM gives one mask per object, while a classical segmenter may cut a striped
or checked object into many pieces, or merge it with the background. On SynthAVS every
object's visible pixels are known exactly (``SynthScene.id_maps``), so this can be measured:

- **best-match IoU** of an object in a frame: the largest IoU between the object's visible
  pixels and any *single* Maskige segment (index k > 0). 1.0: the object is exactly one
  segment. An object cut into two equal halves scores 0.5; a segment holding the object
  plus as much background also scores 0.5.
- **mean best IoU**: the mean of that over every visible object in every frame (each
  object counts once per frame it is visible in, whatever its size).
- **covering**: the same, weighted by the object's visible area (large objects count more);
  the object-only form of the "segmentation covering" measure.
- **segments per frame**: the number of distinct indices > 0 in the Maskige (what the
  model sees after the ``max_index`` cap; segments past the cap are not counted).

Background pixels (id 0) and the occluder bar (id -1) are never scored as objects, but they
do count against a segment that spills onto them.

``measure_mask_sources`` scores several Maskige configurations on generated SynthAVS clips,
making the Maskiges through :class:`~tasks.enrich.maskige.MaskigeMaker` exactly as
preprocessing does. A table of the classical sources::

    .venv/bin/python bench/mask_quality.py --size 96 --clips 16
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root, run as a script

from infra.schema.enrich import MaskigeConfig
from infra.schema.synth import SynthConfig

log = logging.getLogger(__name__)


def _check_pair(maskige: np.ndarray, id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maskige = np.asarray(maskige)
    id_map = np.asarray(id_map)
    if maskige.ndim != 2 or maskige.shape != id_map.shape:
        raise ValueError(f"maskige and id_map must be [h, w] of one size, got {list(maskige.shape)} "
                         f"and {list(id_map.shape)}")
    if not (np.issubdtype(maskige.dtype, np.integer) and np.issubdtype(id_map.dtype, np.integer)):
        raise ValueError(f"maskige and id_map must hold integers, got {maskige.dtype} and {id_map.dtype}")
    m = maskige.ravel().astype(np.int64)
    o = id_map.ravel().astype(np.int64)
    if m.size and m.min() < 0:
        raise ValueError(f"maskige indices must be >= 0, got {int(m.min())}")
    if o.size and o.min() < -1:
        raise ValueError(f"id_map values must be >= -1 (-1 occluder, 0 background), got {int(o.min())}")
    return m, o


def match_objects(maskige: np.ndarray, id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, best IoUs, areas) of the objects visible in one frame, ids ascending.

    ids: int64 [n] object ids (> 0) with at least one pixel; best IoUs: float64 [n], each
    object's best IoU with a single segment (index > 0; 0.0 when the Maskige has none);
    areas: int64 [n] visible pixels. One joint histogram of (segment, object) pairs, so the
    cost is one pass over the pixels plus O(segments x objects).
    """
    m, o = _check_pair(maskige, id_map)
    o = o + 1  # -1 occluder -> 0, 0 background -> 1, object k -> k + 1
    n_seg = int(m.max()) + 1 if m.size else 1
    n_obj = int(o.max()) + 1 if o.size else 1
    joint = np.bincount(m * n_obj + o, minlength=n_seg * n_obj).reshape(n_seg, n_obj)
    seg_area = joint.sum(axis=1)  # [n_seg], every pixel of the segment, occluder and background included
    obj_area = joint.sum(axis=0)  # [n_obj]
    cols = np.nonzero(obj_area[2:])[0] + 2  # present objects (id >= 1)
    ids = cols - 1
    areas = obj_area[cols]
    if n_seg == 1 or cols.size == 0:  # no segment at all
        return ids, np.zeros(cols.size), areas
    inter = joint[1:, cols]  # [segments, objects]
    union = seg_area[1:, None] + areas[None, :] - inter
    iou = inter / np.maximum(union, 1)  # union >= area > 0 for present objects
    return ids, iou.max(axis=0), areas


def best_match_iou(maskige: np.ndarray, id_map: np.ndarray) -> list[float]:
    """Best single-segment IoU of each object visible in a frame, in object-id order.

    maskige: int [h, w], 0 = no mask, k > 0 = segment k. id_map: int [h, w], 0 background,
    -1 occluder, k > 0 object k. Objects with no visible pixel are left out; the occluder is
    not an object. 1.0: the object is exactly one segment (module docstring).
    """
    return [float(x) for x in match_objects(maskige, id_map)[1]]


def segment_count(maskige: np.ndarray) -> int:
    """Distinct segments (indices > 0) in a Maskige."""
    return int(np.count_nonzero(np.bincount(np.asarray(maskige).ravel().astype(np.int64))[1:]))


def measure_mask_sources(synth_cfg: SynthConfig, methods: Mapping[str, MaskigeConfig], num_clips: int,
                         setting: str = "s4", split: str = "test") -> dict[str, dict]:
    """Score Maskige configurations on SynthAVS clips 0..num_clips-1 of (setting, split).

    Each clip is generated once (``generate_clip``); for each configuration its frames go
    through ``MaskigeMaker(cfg)(frames)``, the preprocessing path (the ``max_index`` cap
    included), and every visible object of every frame is scored by best-match IoU.

    Returns {name: {"mean_best_iou", "median_best_iou", "covering" (area-weighted mean),
    "frac_iou_ge_0.5" (objects with a segment of IoU >= 0.5), "segments_per_frame" (mean),
    "max_segments", "capped_frames" (frames with masks past max_index), "frames", "objects",
    "seconds_per_frame" (Maskige making only), "by_role" {role: mean best IoU},
    "clip_means" [mean best IoU of each clip, for paired comparisons between methods]}}.
    """
    from tasks.enrich.maskige import MaskigeMaker
    from tasks.synthavs.generate import generate_clip

    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    scenes = [generate_clip(synth_cfg, setting, split, i) for i in range(num_clips)]
    results: dict[str, dict] = {}
    for name, cfg in methods.items():
        maker = MaskigeMaker(cfg)
        maker(scenes[0].clip.frames[:1])  # untimed warm-up: imports, first-call costs
        ious: list[np.ndarray] = []
        areas: list[np.ndarray] = []
        roles: dict[str, list[float]] = {}
        segments: list[int] = []
        clip_means: list[float] = []
        capped = 0
        seconds = 0.0
        for scene in scenes:
            frames = scene.clip.frames
            start = time.perf_counter()
            maskiges, infos = maker(frames)
            seconds += time.perf_counter() - start
            capped += sum(1 for info in infos if info["capped"])
            role_of = {obj.index + 1: obj.role for obj in scene.spec.objects}
            first = len(ious)
            for maskige, id_map in zip(maskiges, scene.id_maps):
                ids, best, area = match_objects(maskige, id_map)
                ious.append(best)
                areas.append(area)
                segments.append(segment_count(maskige))
                for k, v in zip(ids.tolist(), best.tolist()):
                    roles.setdefault(role_of.get(k, "unknown"), []).append(v)
            clip_iou = np.concatenate(ious[first:])
            clip_means.append(float(clip_iou.mean()) if clip_iou.size else float("nan"))
        iou = np.concatenate(ious) if ious else np.zeros(0)
        area = np.concatenate(areas) if areas else np.zeros(0, dtype=np.int64)
        n_frames = len(segments)
        results[name] = {
            "mean_best_iou": float(iou.mean()) if iou.size else float("nan"),
            "median_best_iou": float(np.median(iou)) if iou.size else float("nan"),
            "covering": float((iou * area).sum() / area.sum()) if area.sum() else float("nan"),
            "frac_iou_ge_0.5": float((iou >= 0.5).mean()) if iou.size else float("nan"),
            "segments_per_frame": float(np.mean(segments)),
            "max_segments": int(max(segments)),
            "capped_frames": capped,
            "frames": n_frames,
            "objects": int(iou.size),
            "seconds_per_frame": seconds / max(n_frames, 1),
            "by_role": {r: float(np.mean(v)) for r, v in sorted(roles.items())},
            "clip_means": clip_means,
        }
    return results


def default_methods() -> dict[str, MaskigeConfig]:
    """The classical sources, each at its defaults and a few other settings, for ``main``'s table."""
    def c(method: str, **kw) -> MaskigeConfig:
        return MaskigeConfig(source="classical", classical_method=method, **kw)

    return {
        "felz default (300/0.8/100)": c("felzenszwalb"),
        "felz 100/0.8/50": c("felzenszwalb", felzenszwalb_scale=100.0, felzenszwalb_min_size=50),
        "felz 300/0.8/50": c("felzenszwalb", felzenszwalb_min_size=50),
        "felz 800/0.8/50": c("felzenszwalb", felzenszwalb_scale=800.0, felzenszwalb_min_size=50),
        "felz 800/0.5/50": c("felzenszwalb", felzenszwalb_scale=800.0, felzenszwalb_sigma=0.5,
                             felzenszwalb_min_size=50),
        "felz 1000/2.0/50": c("felzenszwalb", felzenszwalb_scale=1000.0, felzenszwalb_sigma=2.0,
                              felzenszwalb_min_size=50),
        "slic default (64/10)": c("slic"),
        "slic 16/20": c("slic", slic_n_segments=16, slic_compactness=20.0),
        "slic 24/20": c("slic", slic_n_segments=24, slic_compactness=20.0),
        "slic 32/10": c("slic", slic_n_segments=32),
        "slic 128/10": c("slic", slic_n_segments=128),
        "chroma default (0.035/40)": c("chroma"),
        "chroma 0.02/40": c("chroma", chroma_threshold=0.02),
        "chroma 0.05/40": c("chroma", chroma_threshold=0.05),
        "chroma 0.065/40": c("chroma", chroma_threshold=0.065),
        "chroma 0.065/15": c("chroma", chroma_threshold=0.065, chroma_min_area=15),
        "chroma 0.1/40": c("chroma", chroma_threshold=0.1),
    }


def format_table(results: Mapping[str, dict]) -> str:
    roles = sorted({r for res in results.values() for r in res["by_role"]})
    head = (f"{'method':28s} {'mean':>6s} {'median':>6s} {'cover':>6s} {'>=.5':>5s} "
            + " ".join(f"{r[:6]:>6s}" for r in roles) + f" {'segs':>6s} {'max':>4s} {'cap':>4s} {'ms/fr':>7s}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(
            f"{name:28s} {r['mean_best_iou']:6.3f} {r['median_best_iou']:6.3f} {r['covering']:6.3f} "
            f"{r['frac_iou_ge_0.5']:5.2f} "
            + " ".join(f"{r['by_role'].get(role, float('nan')):6.3f}" for role in roles)
            + f" {r['segments_per_frame']:6.1f} {r['max_segments']:4d} {r['capped_frames']:4d} "
            f"{1000 * r['seconds_per_frame']:7.1f}")
    first = next(iter(results.values()))
    lines.append(f"({first['frames']} frames, {first['objects']} visible objects)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from infra.schema.synth import synth_preset

    p = argparse.ArgumentParser(description="Best-match IoU of classical Maskige sources on SynthAVS")
    p.add_argument("--preset", default="hard")
    p.add_argument("--size", type=int, nargs="+", default=[96, 128])
    p.add_argument("--clips", type=int, default=16)
    p.add_argument("--setting", default="s4")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    out = {}
    for size in args.size:
        cfg = synth_preset(args.preset, frame_height=size, frame_width=size)
        results = measure_mask_sources(cfg, default_methods(), args.clips, args.setting, args.split)
        print(f"\nSynthAVS {args.preset} {args.setting}/{args.split}, {size} px, {args.clips} clips")
        print(format_table(results))
        out[str(size)] = {name: {k: v for k, v in r.items() if k != "clip_means"} for name, r in results.items()}
    print(json.dumps({"preset": args.preset, "setting": args.setting, "split": args.split, "clips": args.clips,
                      "sizes": out}, default=float))


if __name__ == "__main__":
    main()
