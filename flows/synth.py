"""Flow: generate SynthAVS (AVSBench folder layout + mp4 videos) from a seed.

    python -m flows.synth data=synth_easy data.uri=s3://bucket/synthavs data.synth.seed=7
"""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from infra.config import compose
from infra.storage import Storage
from tasks.synthavs import ensure_synthavs

synthesize = task(ensure_synthavs, name="synthavs", cache_policy=NO_CACHE)


@avs_flow(name="synthavs")
def synth(overrides: Overrides = None, settings: list[str] | None = None) -> dict:
    """Generate SynthAVS for the given settings (default: all three) into data.uri.

    Args:
        overrides: Hydra override strings, as on the command line. Never credentials: pass
            them through the environment, storage.secret_block=<Secret block name>, or the
            work pool's job variables (see infra/schema/storage.py).
        settings: which of s4, ms3, avss to generate.
    """
    cfg = compose(overrides or [])
    root, summary, generated = synthesize(cfg, Storage(cfg.storage), tuple(settings or ("s4", "ms3", "avss")))
    get_run_logger().info("SynthAVS %s at %s", "generated" if generated else "already complete", root)
    return {"root": root, "generated": generated, "summary": summary}


if __name__ == "__main__":
    main(synth)
