"""The data sources: ``data.source`` -> the module that lists and decodes its clips.

Adding a source is one module that defines ``SOURCE = Source(...)`` (:class:`tasks.clip.Source`:
how to list the clips under a root, how to decode one, and, for a source that must be made first,
how to make it) and one line in :data:`REGISTRY`. Modules are named by their import path and
imported on first use, so the registry depends on no reader and no reader on the registry.
"""
from __future__ import annotations

import importlib

from infra.config import ConfigError
from tasks.clip import Source

REGISTRY: dict[str, str] = {
    "avsbench": "tasks.decode.avsbench",  # AVSBench S4 / MS3 / AVSS folders, as released
    "videos": "tasks.decode.video",  # any folder or bucket of video files FFmpeg opens
    "synth": "tasks.synthavs.generate",  # SynthAVS, generated when missing, read as AVSBench
}


class UnknownSourceError(ConfigError):
    """data.source names no registered source (a config error)."""


def source(name: str) -> Source:
    """The registered source called name; UnknownSourceError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise UnknownSourceError(f"data.source must be one of {sorted(REGISTRY)}, got {name!r}")
    found = getattr(importlib.import_module(REGISTRY[name]), "SOURCE", None)
    if not isinstance(found, Source) or found.name != name:
        raise TypeError(f"{REGISTRY[name]} must define SOURCE = Source(name={name!r}, ...)")
    return found


def sources() -> list[Source]:
    return [source(name) for name in REGISTRY]


def source_of_kind(kind: str) -> Source | None:
    """The source that decodes refs of this kind, or None."""
    return next((s for s in sources() if kind in s.kinds and s.decode is not None), None)


def known_kinds() -> list[str]:
    return sorted(k for s in sources() for k in s.kinds)
