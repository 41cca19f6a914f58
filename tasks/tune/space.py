"""The search space of a tune run and what one trial trains: ``conf/tune/`` ranges -> Ray Tune
distributions -> a sampled point -> the trial's Config, and the same point as Hydra overrides.

A sampled point is a flat dict over :data:`~infra.schema.tune.SEARCH_KEYS` (``lambda_ada``,
``weight_class``, ``weight_mask``, ``weight_dice``, ``lr``); :func:`trial_config` puts it into
``cfg.model`` / ``cfg.train`` with ``dataclasses.replace`` (the schemas' checks run again), and
:func:`as_overrides` writes it as the overrides that train the same thing with
``flows.train_combo``: ``model.lambda_ada=7.3 model.weight_dice=4.1 train.lr=0.00021``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from infra.config import Config
from infra.schema.tune import SEARCH_KEYS


def search_space(cfg: Config) -> dict[str, Any]:
    """Ray Tune's param_space: a log-uniform distribution per searched key (a constant where
    low == high)."""
    from ray import tune

    return {key: (tune.loguniform(lo, hi) if lo < hi else lo) for key, (lo, hi) in cfg.tune.ranges().items()}


def trial_size(cfg: Config) -> tuple[int, float, bool]:
    """(Ray Train workers per trial, CPUs per worker, a GPU per worker) from tune.*, else train.*."""
    t, tu = cfg.train, cfg.tune
    workers = tu.workers_per_trial if tu.workers_per_trial is not None else t.num_workers
    cpus = tu.cpus_per_worker if tu.cpus_per_worker is not None else t.cpus_per_worker
    gpu = bool(tu.gpus_per_worker) if tu.gpus_per_worker is not None else t.use_gpu
    return workers, cpus, gpu


def trial_config(cfg: Config, point: dict[str, Any], run_name: str, storage_path: str) -> Config:
    """The Config one trial trains: cfg with the sampled values, tune.max_epochs epochs, the
    trial's size, its own run under storage_path, and no test split (model selection sees
    validation only; the best config is trained and tested afterwards)."""
    unknown = sorted(set(point) - set(SEARCH_KEYS))
    if unknown:
        raise ValueError(f"not searchable: {unknown}; searchable: {sorted(SEARCH_KEYS)}")
    values = {k: float(v) for k, v in point.items()}
    workers, cpus, gpu = trial_size(cfg)
    model = dataclasses.replace(cfg.model, **{k: v for k, v in values.items() if SEARCH_KEYS[k] == "model"})
    train = dataclasses.replace(
        cfg.train, **{k: v for k, v in values.items() if SEARCH_KEYS[k] == "train"},
        epochs=cfg.tune.max_epochs, num_workers=workers, cpus_per_worker=cpus, use_gpu=gpu,
        run_name=run_name, storage_path=storage_path, test_split=None, evaluate=False)
    return dataclasses.replace(cfg, model=model, train=train)


def as_overrides(point: dict[str, Any]) -> list[str]:
    """The point as Hydra overrides, in SEARCH_KEYS order; values exact (repr of the float)."""
    return [f"{SEARCH_KEYS[k]}.{k}={float(point[k])!r}" for k in SEARCH_KEYS if k in point]
