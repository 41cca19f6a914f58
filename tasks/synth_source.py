"""SynthAVS as a source: generate it once per configuration, then read it like AVSBench."""
from __future__ import annotations

import json
import logging

from infra.config import Config, config_hash, to_dict
from infra.storage import Storage, join

log = logging.getLogger(__name__)
MARKER = "synthavs.json"


def synth_root(cfg: Config, settings: tuple[str, ...] | None = None) -> str:
    """Where this configuration's SynthAVS lives: a folder per generator config, never overwritten."""
    settings = settings or (cfg.data.setting,)
    digest = config_hash({"synth": to_dict(cfg.data.synth), "settings": sorted(settings)})
    return join(cfg.data.uri, f"sv-{digest}-{'-'.join(sorted(settings))}")


def ensure_synthavs(cfg: Config, storage: Storage, settings: tuple[str, ...] | None = None,
                    progress: bool = True) -> tuple[str, dict, bool]:
    """Generate SynthAVS unless this exact configuration is already there. Returns (root, summary, generated)."""
    from tasks.synthavs import generate_synthavs

    settings = settings or (cfg.data.setting,)
    root = synth_root(cfg, settings)
    marker = join(root, MARKER)
    if storage.exists(marker):
        log.info("SynthAVS at %s is complete: reusing it", root)
        return root, json.loads(storage.read_text(marker)), False
    summary = generate_synthavs(cfg.data.synth, root, storage, settings=tuple(settings), progress=progress)
    storage.write_text(marker, json.dumps({"config": to_dict(cfg.data.synth), "summary": summary},
                                          sort_keys=True, default=str))  # last: marks it complete
    return root, summary, True
