"""The main job, end to end on its embedded default: SynthAVS -> decoded clips -> shards -> summary.

    python -m flows.pipeline                       # SynthAVS hard preset, tiny sizes, local Ray
    python -m flows.pipeline data=synth_easy data.synth.num_train_clips=64
"""
from __future__ import annotations

import json
import time

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import Overrides, avs_flow, main
from flows.preprocess import preprocess
from infra.config import compose, redact_overrides
from infra.storage import Storage, join


@avs_flow(name="pipeline")
def pipeline(overrides: Overrides = None) -> dict:
    """End to end: compose, preprocess (a subflow), write the run's summary.

    Args:
        overrides: Hydra override strings, as on the command line. Never credentials: pass
            them through the environment, storage.secret_block=<Secret block name>, or the
            work pool's job variables (see infra/schema/storage.py).
    """
    log = get_run_logger()
    overrides = list(overrides or [])
    cfg = compose(overrides)  # fail on a bad config before any work starts
    storage = Storage(cfg.storage)
    prep = preprocess(overrides)
    summary = {"overrides": redact_overrides(overrides), "preprocess": prep}
    url = join(cfg.output, "runs", time.strftime("%Y%m%d-%H%M%S"), "summary.json")
    storage.write_text(url, json.dumps(summary, indent=2))
    rows = "\n".join(f"| {k} | {v} |" for k, v in prep.items() if not isinstance(v, dict))
    create_markdown_artifact(markdown=f"## Pipeline summary\n\n| what | value |\n|---|---|\n{rows}\n",
                             key="pipeline-summary", description="clips, shards and rejects of this run")
    log.info("summary written to %s", url)
    return summary


if __name__ == "__main__":
    main(pipeline)
