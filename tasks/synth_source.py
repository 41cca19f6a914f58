"""SynthAVS as a source: generate it once per configuration (clips in parallel on Ray), then
read it back like any AVSBench folder."""
from __future__ import annotations

import json
import logging
import time

from tqdm import tqdm

from infra.config import Config, config_hash, to_dict
from infra.storage import Storage, absolute, join, require_shared

log = logging.getLogger(__name__)
MARKER = "synthavs.json"


def synth_root(cfg: Config, settings: tuple[str, ...] | None = None) -> str:
    """Where this configuration's SynthAVS lives: a folder per generator config, never overwritten."""
    settings = settings or (cfg.data.setting,)
    digest = config_hash({"synth": to_dict(cfg.data.synth), "settings": sorted(settings)})
    return join(absolute(cfg.data.uri), f"sv-{digest}-{'-'.join(sorted(settings))}")


def ensure_synthavs(cfg: Config, storage: Storage, settings: tuple[str, ...] | None = None,
                    progress: bool = True, use_ray: bool = True) -> tuple[str, dict, bool]:
    """Generate SynthAVS unless this exact configuration is already there. Returns (root, summary, generated).

    Each clip is a pure function of (seed, setting, split, index), so clips are written by
    independent Ray tasks; the metadata CSVs and then the completion marker come last.
    """
    from tasks.synthavs import clip_tasks, write_clip, write_metadata

    settings = tuple(settings or (cfg.data.setting,))
    synth = cfg.data.synth
    root = synth_root(cfg, settings)
    marker = join(root, MARKER)
    if storage.exists(marker):
        log.info("SynthAVS at %s is complete: reusing it", root)
        return root, json.loads(storage.read_text(marker))["summary"], False

    start = time.perf_counter()
    jobs = clip_tasks(synth, settings)
    bar = tqdm(total=len(jobs), desc="synthavs", unit="clip", disable=not progress)
    if use_ray:
        import ray

        from infra.ray_runtime import init_ray

        init_ray(cfg.cluster)
        require_shared(root, "data.uri")
        write = ray.remote(num_cpus=1)(write_clip)
        pending = [write.remote(synth, root, storage, s, sp, i) for s, sp, i in jobs]
        results_by_ref = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=5.0)
            for ref, result in zip(ready, ray.get(ready)):
                results_by_ref[ref] = result
            bar.update(len(ready))
        results = sorted(results_by_ref.values(), key=lambda r: (r["setting"], r["split"], r["index"]))
    else:
        results = []
        for s, sp, i in jobs:
            results.append(write_clip(synth, root, storage, s, sp, i))
            bar.update(1)
    bar.close()
    paths = write_metadata(synth, root, storage, results, settings)
    seconds = time.perf_counter() - start
    summary = {
        "root": root,
        "clips": len(results),
        "counts": {s: {sp: sum(1 for r in results if r["setting"] == s and r["split"] == sp)
                       for sp in ("train", "val", "test")} for s in settings},
        "paths": paths,
        "seconds": round(seconds, 2),
        "clips_per_s": round(len(results) / seconds, 3) if seconds else None,
    }
    storage.write_text(marker, json.dumps({"config": to_dict(synth), "summary": summary}, sort_keys=True))
    log.info("SynthAVS: %d clips into %s in %.1f s (%.2f clips/s)", len(results), root, seconds,
             summary["clips_per_s"] or 0)
    return root, summary, True
