"""What a tune run leaves: one row per trial (results.csv), the best trial, its overrides and
checkpoint (best_overrides.txt, best_checkpoint.txt).

A row: ``trial_id``, ``status`` (``completed``: ran ``tune.max_epochs``; ``stopped``: ASHA ended it
at a rung; ``error``), the sampled values under their tune keys (``lambda_ada`` ... ``lr``),
``epochs`` run, the metric's last and best value (``val_miou``, ``best_val_miou``), the last
``val_fscore`` and ``train_loss``, ``checkpoint`` (the URI of the trial's last checkpoint) and
``error`` (its last line, for a failed trial).
"""
from __future__ import annotations

import csv
import io
import math
import posixpath
from typing import Any

from infra.config import Config
from infra.schema.tune import SEARCH_KEYS
from infra.storage import join

RESULTS_FILE = "results.csv"
BEST_OVERRIDES_FILE = "best_overrides.txt"
BEST_CHECKPOINT_FILE = "best_checkpoint.txt"


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _last_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def trial_row(result: Any, cfg: Config, train_root: str) -> dict[str, Any]:
    """The row of one ray.tune.Result (its last metrics, every epoch's in metrics_dataframe);
    the checkpoint: the trial's Ray Train run under train_root, named by the trial id."""
    metric, max_epochs = cfg.tune.metric, cfg.tune.max_epochs
    last = result.metrics or {}
    history = result.metrics_dataframe
    records = history.to_dict("records") if history is not None else []
    trial_id = last.get("trial_id") or posixpath.basename(result.path.rstrip("/"))
    values = [v for v in (_number(r.get(metric)) for r in records) if v is not None]
    checkpoints = [r["checkpoint_path"] for r in records if isinstance(r.get("checkpoint_path"), str)]
    epochs = int(last.get("epoch") or 0)
    better = max if cfg.tune.mode == "max" else min
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": "error" if result.error else ("completed" if epochs >= max_epochs else "stopped"),
        **{k: float(result.config[k]) for k in SEARCH_KEYS if k in result.config},
        "epochs": epochs, metric: _number(last.get(metric)), f"best_{metric}": better(values) if values else None,
    }
    for key in ("val_miou", "val_fscore", "train_loss"):
        row.setdefault(key, _number(last.get(key)))
    row["checkpoint"] = (join(train_root, trial_id, posixpath.basename(checkpoints[-1].rstrip("/")))
                         if checkpoints else None)
    row["error"] = f"{type(result.error).__name__}: {_last_line(result.error)}" if result.error else ""
    return row


def results_csv(rows: list[dict[str, Any]]) -> str:
    """results.csv: the rows in trial id order, empty cells for missing values."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def best_row(grid: Any, rows: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """The row of ``ResultGrid.get_best_result(metric, mode, scope="last")``: the trial whose
    last reported metric is best. RuntimeError, naming each trial's error, when none reported it."""
    metric, mode = cfg.tune.metric, cfg.tune.mode
    row = None
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="last")
        trial_id = (best.metrics or {}).get("trial_id") or posixpath.basename(best.path.rstrip("/"))
        row = next((r for r in rows if r["trial_id"] == trial_id), None)
    except RuntimeError:  # no trial has a finite value of the metric
        pass
    if row is None or row[metric] is None:
        errors = "; ".join(f"{r['trial_id']}: {r['error']}" for r in rows if r["error"]) or "no trial failed"
        raise RuntimeError(f"no trial reported {metric} ({errors})")
    return row
