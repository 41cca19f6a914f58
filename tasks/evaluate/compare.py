"""Comparing two models on the same test clips: the paired bootstrap of a per-video score.

The AVSBench mIoU and F-score are means over videos of a per-video value, so the difference
of two models' scores is the mean over videos of the per-video differences. Resampling the
videos (with replacement, the same draw for both models: paired) gives its spread; the
percentile interval of the resampled means is the 95% interval printed beside a difference.
The videos are the unit because frames of one video are not independent.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import numpy as np


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], num_resamples: int = 10000,
                     level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of a - b over the clips both score, and its percentile bootstrap interval.

    a, b: clip id -> per-video score. Returns {"diff", "low", "high", "num_clips", "level"}.
    Raises ValueError when the two share no clip, or when the clip sets differ (a comparison
    over different clips is not paired).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise ValueError(f"paired bootstrap needs the same clips on both sides: {len(only_a)} only in the first "
                         f"(e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]})")
    if not a:
        raise ValueError("paired bootstrap of no clips")
    ids = sorted(a)
    d = np.array([float(a[k]) - float(b[k]) for k in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(num_resamples, len(d)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "num_clips": len(d), "level": level}


def read_per_video(text: str, column: str = "miou") -> dict[str, float]:
    """clip id -> value of ``column`` from an evaluation report's per_video.csv."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and column not in rows[0]:
        raise ValueError(f"per_video.csv has no column {column!r} (columns: {list(rows[0])})")
    return {r["clip_id"]: float(r[column]) for r in rows}
