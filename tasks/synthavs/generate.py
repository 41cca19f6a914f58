"""SynthAVS clips and data sets: scene -> Clip with exact masks -> AVSBench folders and mp4 files.

`generate_clip` is a pure function of (cfg, setting, split, index); `write_clip` writes one
clip and returns its metadata row; `generate_synthavs` runs it over every clip (in this
process or as Ray tasks) and writes the metadata last; `ensure_synthavs` is SynthAVS as a
source: generated once per configuration, found again by a marker.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from infra.config import Config, config_hash, to_dict
from infra.schema.synth import SynthConfig
from infra.storage import Storage, absolute, join, require_shared
from tasks.clip import SAMPLE_RATE, SETTINGS, Clip, Source
from tasks.decode import avsbench
from tasks.decode.logmel import log_mel_examples
from tasks.synthavs import render, sound, writers
from tasks.synthavs.categories import categories
from tasks.synthavs.scene import FRAME_OFFSET_S, SPLITS, SceneSpec, sample_scene

log = logging.getLogger(__name__)

SYNTH_VERSION = 2  # 2: VGGish log-mel framing (0.96 s steps), label2idx.json with 1-based values as released
MAX_ATTEMPTS = 50  # scenes whose sounding objects are hidden too much are redrawn
FORMATS = ("avsbench", "video")
MARKER = "synthavs.json"  # written last by ensure_synthavs: the folder is complete


@dataclass
class SynthScene:
    """One generated clip and what the writers need besides it.

    clip:     the Clip (frames at t + 0.5 s, audio, log-mel, masks [T, H, W]: binary for s4 / ms3,
              category ids for avss; gt_frames all True).
    spec:     the sampled scene (objects, roles, levels, geometry).
    id_maps:  int16 [T, H, W] instance map of each frame: 0 background, k + 1 object k, -1 occluder.
    background: uint8 [H, W, 3].
    occluder: render.occluder_layer of the clip's occluder, or None.
    """

    clip: Clip
    spec: SceneSpec
    id_maps: np.ndarray
    background: np.ndarray
    occluder: tuple | None = None

    @property
    def instance_masks(self) -> np.ndarray:
        """bool [N, T, H, W]: visible (non-occluded) pixels of each object in each frame."""
        n = len(self.spec.objects)
        return self.id_maps[None] == (np.arange(1, n + 1, dtype=np.int16)[:, None, None, None])

    @property
    def category_maps(self) -> np.ndarray:
        """uint8 [T, H, W]: the category id (1..K) of the object on each pixel, 0 elsewhere."""
        return category_maps(self.id_maps, self.clip.meta["objects"])

    @property
    def audible(self) -> np.ndarray:
        """bool [T, K]: category id c (column c - 1) can be heard in second t, from an object on screen
        or from off screen (noise belongs to no category)."""
        heard = np.zeros((self.spec.num_seconds, len(self.spec.category_table)), dtype=bool)
        for obj in self.spec.objects:
            heard[obj.sounding, obj.category.id - 1] = True
        if self.spec.offscreen is not None:
            heard[self.spec.offscreen.levels > 0, self.spec.offscreen.category.id - 1] = True
        return heard

    def render_at(self, time_s: float) -> np.ndarray:
        """uint8 [H, W, 3]: the scene at time_s (the video's frame i is render_at(i / fps))."""
        return render.render_frame(self.spec, time_s, self.background, self.occluder)[0]


def category_maps(id_maps: np.ndarray, objects: list[dict]) -> np.ndarray:
    """uint8 [T, H, W]: the category id (1..K) of the object on each pixel, 0 elsewhere (background
    and occluders). ``id_maps``: instance maps (0 background, k + 1 object k, -1 occluder);
    ``objects``: the clip's ``meta["objects"]``."""
    lut = np.zeros(max([o["id"] for o in objects], default=0) + 2, np.uint8)  # index -1: occluder -> 0
    for o in objects:
        lut[o["id"]] = o["category_id"]
    return lut[np.asarray(id_maps)]


def _visible_enough(spec: SceneSpec, id_maps: np.ndarray, min_fraction: float) -> bool:
    for t in range(spec.num_seconds):
        for obj in spec.objects:
            if obj.sounding[t]:
                full = render.object_mask(obj, spec, t + FRAME_OFFSET_S).sum()
                shown = int((id_maps[t] == obj.index + 1).sum())
                if full == 0 or shown < min_fraction * full:
                    return False
    return True


def _ground_truth(spec: SceneSpec, id_maps: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W]: pixels of the objects sounding in each second (ids for avss, else 0/1)."""
    masks = np.zeros(id_maps.shape, dtype=np.uint8)
    for t in range(spec.num_seconds):
        for obj in spec.objects:
            if obj.sounding[t]:
                masks[t][id_maps[t] == obj.index + 1] = obj.category.id if spec.setting == "avss" else 1
    return masks


def _meta(cfg: SynthConfig, spec: SceneSpec) -> dict:
    return {
        "generator": "synthavs",
        "synth_version": SYNTH_VERSION,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "index": spec.index,
        "attempt": spec.attempt,
        "category": spec.primary_category.name,
        "silent": spec.silent,
        "visible_categories": sorted({o.category.name for o in spec.objects}),
        "offscreen_sound": spec.offscreen is not None,
        "offscreen_category": spec.offscreen.category.name if spec.offscreen else None,
        "occluded": spec.occluder is not None,
        "noise_snr_db": spec.noise_snr_db,
        "avss_label": spec.avss_label,
        "frame_time_offset_s": FRAME_OFFSET_S,
        "objects": [
            {"id": o.index + 1, "category": o.category.name, "category_id": o.category.id, "role": o.role,
             "sounding": [bool(s) for s in o.sounding], "levels": [round(float(x), 4) for x in o.levels],
             "radius": round(o.radius, 2), "z": o.z}
            for o in spec.objects
        ],
    }


def generate_clip(cfg: SynthConfig, setting: str, split: str, index: int) -> SynthScene:
    """The clip (setting, split, index) of the SynthAVS data set cfg describes; deterministic."""
    for attempt in range(MAX_ATTEMPTS):
        spec = sample_scene(cfg, setting, split, index, attempt)
        background = render.background_image(spec.background, spec.height, spec.width)
        occluder = render.occluder_layer(spec.occluder, spec.height, spec.width) if spec.occluder else None
        rendered = [render.render_frame(spec, t + FRAME_OFFSET_S, background, occluder)
                    for t in range(spec.num_seconds)]
        id_maps = np.stack([ids for _, ids in rendered])
        if _visible_enough(spec, id_maps, cfg.min_visible_fraction):
            break
    else:
        raise RuntimeError(
            f"SynthAVS clip {spec.clip_id}: no scene in {MAX_ATTEMPTS} attempts keeps every sounding object "
            f"{cfg.min_visible_fraction:.0%} visible; lower synth.min_visible_fraction, synth.occluder_prob "
            "or synth.object_scale_max, or use fewer objects"
        )
    frames = np.stack([f for f, _ in rendered])
    audio = sound.render_audio(spec)
    t_count = spec.num_seconds
    sounding_names: list[str] = []
    for obj in spec.objects:
        if obj.sounds_at_all and obj.category.name not in sounding_names:
            sounding_names.append(obj.category.name)
    clip = Clip(
        clip_id=spec.clip_id,
        frames=frames,
        audio=audio,
        logmel=log_mel_examples(audio, t_count, SAMPLE_RATE),
        masks=_ground_truth(spec, id_maps),
        gt_frames=[True] * t_count,
        setting=setting,
        split=split,
        labels=sounding_names,
        source_uri=f"synthavs://seed={cfg.seed}/{setting}/{split}/{index}",
        sample_rate=SAMPLE_RATE,
        meta=_meta(cfg, spec),
    )
    clip.validate()
    return SynthScene(clip=clip, spec=spec, id_maps=id_maps, background=background, occluder=occluder)


def clip_tasks(cfg: SynthConfig, settings=SETTINGS) -> list[tuple[str, str, int]]:
    """Every (setting, split, index) the data set holds, in a fixed order."""
    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"settings must be drawn from {SETTINGS}, got {s!r}")
    counts = cfg.clips_per_split()
    return [(s, sp, i) for s in settings for sp in SPLITS for i in range(counts[sp])]


def _check_formats(formats) -> None:
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"formats must be drawn from {FORMATS}, got {f!r}")


def write_clip(cfg: SynthConfig, out: str, storage: Storage, setting: str, split: str, index: int,
               formats=FORMATS) -> dict:
    """Generate and write one clip; returns {setting, split, index, clip_id, row, video}."""
    _check_formats(formats)
    scene = generate_clip(cfg, setting, split, index)
    result = {"setting": setting, "split": split, "index": index, "clip_id": scene.clip.clip_id,
              "row": None, "video": None}
    if "avsbench" in formats:
        result["row"] = writers.write_avsbench_clip(scene, out, storage, cfg.jpeg_quality)
    if "video" in formats:
        result["video"] = writers.write_video_clip(scene, out, storage, cfg.video_fps, cfg.video_crf)
    return result


def write_metadata(cfg: SynthConfig, out: str, storage: Storage, results: list[dict],
                   settings=SETTINGS, formats=FORMATS) -> dict[str, str]:
    """Metadata CSVs and label2idx.json (avsbench format) and synthavs_meta.json (always), written last."""
    paths: dict[str, str] = {}
    if "avsbench" in formats:
        rows = {s: [(r["split"], r["index"], r["row"]) for r in results if r["setting"] == s] for s in settings}
        names = [c.name for c in sorted(categories(cfg.num_categories), key=lambda c: c.id)]  # key order = id
        paths.update(writers.write_avsbench_metadata(out, storage, rows, names))
    info = {
        "generator": "synthavs",
        "synth_version": SYNTH_VERSION,
        "config": cfg.to_dict(),
        "categories": [c.to_dict() for c in categories(cfg.num_categories)],
        "settings": list(settings),
        "formats": list(formats),
        "frame_time_offset_s": FRAME_OFFSET_S,
        "sample_rate": SAMPLE_RATE,
        "counts": {s: {sp: sum(1 for r in results if r["setting"] == s and r["split"] == sp) for sp in SPLITS}
                   for s in settings},
    }
    paths["synthavs"] = join(out, "synthavs_meta.json")
    storage.write_text(paths["synthavs"], json.dumps(info, indent=1, sort_keys=True) + "\n")
    return paths


def generate_synthavs(cfg: SynthConfig, out: str, storage: Storage, settings=SETTINGS,
                      formats=FORMATS, progress: bool = True, use_ray: bool = False) -> dict:
    """Generate the whole SynthAVS data set into `out` (local path or s3://).

    Each clip is a pure function of (seed, setting, split, index), so with use_ray the clips
    are written by independent Ray tasks (Ray must be initialised); otherwise one after the
    other in this process. The metadata CSVs come last. Returns a summary: counts per setting
    and split, the metadata paths, roots of each format, and the generation rate.
    """
    _check_formats(formats)
    settings = tuple(settings)
    jobs = clip_tasks(cfg, settings)
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="synthavs", unit="clip", disable=not progress)
    results = []
    if use_ray:
        import ray

        write = ray.remote(num_cpus=1)(write_clip)
        pending = [write.remote(cfg, out, storage, s, sp, i, formats) for s, sp, i in jobs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=5.0)
            results.extend(ray.get(ready))
            bar.update(len(ready))
        order = {job: n for n, job in enumerate(jobs)}
        results.sort(key=lambda r: order[(r["setting"], r["split"], r["index"])])
    else:
        for s, sp, i in jobs:
            results.append(write_clip(cfg, out, storage, s, sp, i, formats))
            bar.update(1)
    bar.close()
    paths = write_metadata(cfg, out, storage, results, settings, formats)
    seconds = time.perf_counter() - start
    summary = {
        "root": out,
        "counts": {s: {sp: sum(1 for r in results if r["setting"] == s and r["split"] == sp) for sp in SPLITS}
                   for s in settings},
        "clips": len(results),
        "paths": paths,
        "roots": {"avsbench_object": join(out, writers.OBJECT_ROOT),
                  "avsbench_semantic": join(out, writers.SEMANTIC_ROOT),
                  "videos": join(out, writers.VIDEO_ROOT)},
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(results) / seconds, 3) if seconds > 0 else None,
    }
    log.info("SynthAVS: %d clips into %s in %.1f s (%.2f clips/s)", len(results), out, seconds,
             summary["clips_per_s"] or 0.0)
    return summary


def synth_root(cfg: Config, settings: tuple[str, ...] | None = None) -> str:
    """Where this configuration's SynthAVS lives: a folder per generator config, never overwritten."""
    settings = settings or (cfg.data.setting,)
    digest = config_hash({"synth": to_dict(cfg.data.synth), "settings": sorted(settings),
                          "synth_version": SYNTH_VERSION})
    return join(absolute(cfg.data.uri), f"sv-{digest}-{'-'.join(sorted(settings))}")


def ensure_synthavs(cfg: Config, storage: Storage, settings: tuple[str, ...] | None = None,
                    progress: bool = True, use_ray: bool = True) -> tuple[str, dict, bool]:
    """SynthAVS as a source: generate it (on Ray) unless this exact configuration is already
    complete under data.uri. Returns (root, summary, generated). A marker written after the
    metadata says the folder is complete."""
    settings = tuple(settings or (cfg.data.setting,))
    root = synth_root(cfg, settings)
    marker = join(root, MARKER)
    if storage.exists(marker):
        log.info("SynthAVS at %s is complete: reusing it", root)
        return root, json.loads(storage.read_text(marker))["summary"], False
    if use_ray:
        from infra.ray_runtime import init_ray

        init_ray(cfg.cluster)
        require_shared(root, "data.uri")
    summary = generate_synthavs(cfg.data.synth, root, storage, settings, progress=progress, use_ray=use_ray)
    storage.write_text(marker, json.dumps({"config": to_dict(cfg.data.synth), "summary": summary}, sort_keys=True))
    return root, summary, True


# SynthAVS as a data source (tasks.decode.registry): made when missing, then read as the AVSBench
# folder it is written as (its clips are AVSBench refs, decoded by the AVSBench reader).
SOURCE = Source("synth", list=avsbench.SOURCE.list, prepare=ensure_synthavs, prepare_name="synthavs")

