"""Training checkpoints: what one holds, how it is written, and how it is read back safely.

A checkpoint is a folder (Ray Train persists it under ``{storage_path}/{run name}/``; local
or s3://):

==================  ==========================================================================
``model.pt``        the model's ``state_dict``
``train_state.pt``  optimiser and scheduler ``state_dict``s, the epoch just finished, the step
``meta.json``       format version, the model's registry name and builder options (enough to
                    build it again), the data set's URL and version, the composed config, the
                    metrics of this epoch and the history of every epoch so far, and the
                    sha256 and size of each ``.pt`` file
==================  ==========================================================================

Reading never runs code from the file: tensors are loaded with ``torch.load(weights_only=True)``
after the file's sha256 has been checked against ``meta.json``, so a truncated or altered
file is an error that names it, not a crash deep inside torch. A checkpoint loads only into
the model it was made for (:class:`CheckpointError` otherwise).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from infra.storage import Storage, is_remote, join

FORMAT = 1
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, truncated, corrupt, or made for another model."""


@dataclass
class CheckpointMeta:
    """What ``meta.json`` says about a checkpoint."""

    model: str  # registry name, e.g. "combo_tiny"
    model_options: dict[str, Any]  # builder keyword arguments (num_classes, ablations, loss weights ...)
    epoch: int  # epochs finished
    step: int = 0  # optimiser steps taken
    dataset_url: str = ""
    dataset_version: str = ""
    setting: str = ""  # s4 | ms3 | avss
    config: dict[str, Any] = field(default_factory=dict)  # the composed run config (no credentials)
    metrics: dict[str, float] = field(default_factory=dict)  # this epoch's
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch so far
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"sha256", "nbytes"}
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> CheckpointMeta:
        if not isinstance(d, dict):
            raise CheckpointError(f"{where}: {META_FILE} is not a JSON object")
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{where}: checkpoint format {d.get('format')!r}, this code reads format {FORMAT}")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("model", "model_options", "epoch") if k not in d]
        if missing:
            raise CheckpointError(f"{where}: {META_FILE} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def _digest(path: str) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "nbytes": os.path.getsize(path)}


def save_checkpoint(folder: str, model: torch.nn.Module, meta: CheckpointMeta,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> str:
    """Write a checkpoint into the local folder (created if needed); returns it.

    model may be wrapped (DDP): its ``module`` is saved, so the checkpoint loads into a bare model.
    """
    os.makedirs(folder, exist_ok=True)
    bare = getattr(model, "module", model)
    torch.save(bare.state_dict(), os.path.join(folder, MODEL_FILE))
    state = {"epoch": int(meta.epoch), "step": int(meta.step),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    torch.save(state, os.path.join(folder, STATE_FILE))
    meta.files = {name: _digest(os.path.join(folder, name)) for name in (MODEL_FILE, STATE_FILE)}
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta.to_dict(), f, indent=1, sort_keys=True, default=str)
    return folder


@dataclass
class LoadedCheckpoint:
    meta: CheckpointMeta
    model_state: dict[str, torch.Tensor]
    train_state: dict[str, Any] | None  # None unless asked for


def _local_copy(uri: str, storage: Storage, tmp: str) -> str:
    """A local folder holding the checkpoint at uri (uri itself when it is local)."""
    if not is_remote(uri):
        return uri
    for name in (META_FILE, MODEL_FILE, STATE_FILE):
        src = join(uri, name)
        if storage.exists(src):
            with storage.open(src, "rb") as f_in, open(os.path.join(tmp, name), "wb") as f_out:
                while chunk := f_in.read(8 << 20):
                    f_out.write(chunk)
    return tmp


def read_meta(uri: str, storage: Storage | None = None) -> CheckpointMeta:
    """Only ``meta.json`` of the checkpoint at uri (local folder or s3://)."""
    storage = storage or Storage()
    url = join(uri, META_FILE)
    if not storage.exists(url):
        raise CheckpointError(f"{uri}: no {META_FILE}: not a checkpoint of this project (or not finished)")
    try:
        d = json.loads(storage.read_text(url))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{uri}: {META_FILE} is not valid JSON ({e})") from None
    return CheckpointMeta.from_dict(d, uri)


def load_checkpoint(uri: str, storage: Storage | None = None, expect_model: str | None = None,
                    with_train_state: bool = False) -> LoadedCheckpoint:
    """Read the checkpoint at uri (a local folder or s3://), checked and safely.

    expect_model: the registry name the caller is about to load it into; another model's
    checkpoint is a CheckpointError naming both. Every file is checked against its sha256 in
    ``meta.json`` before ``torch.load(weights_only=True)`` reads it.
    """
    storage = storage or Storage()
    meta = read_meta(uri, storage)
    if expect_model is not None and meta.model != expect_model:
        raise CheckpointError(f"{uri} was made for model {meta.model!r}, not {expect_model!r}: "
                              "a checkpoint loads only into the model it was trained as")
    names = [MODEL_FILE] + ([STATE_FILE] if with_train_state else [])
    with tempfile.TemporaryDirectory(prefix="avs-ckpt-") as tmp:
        folder = _local_copy(uri, storage, tmp)
        loaded: dict[str, Any] = {}
        for name in names:
            path = os.path.join(folder, name)
            recorded = meta.files.get(name)
            if not os.path.exists(path):
                raise CheckpointError(f"{uri}: {name} is missing")
            if recorded is None:
                raise CheckpointError(f"{uri}: {META_FILE} records no checksum for {name}")
            actual = _digest(path)
            if actual["nbytes"] != recorded.get("nbytes"):
                raise CheckpointError(f"{uri}: {name} is {actual['nbytes']} bytes, {META_FILE} says "
                                      f"{recorded.get('nbytes')} (truncated or replaced)")
            if actual["sha256"] != recorded.get("sha256"):
                raise CheckpointError(f"{uri}: {name} does not match its sha256 in {META_FILE} (corrupt or replaced)")
            try:
                loaded[name] = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - torch raises many kinds on a bad file
                raise CheckpointError(f"{uri}: {name} cannot be read safely as tensors "
                                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return LoadedCheckpoint(meta, loaded[MODEL_FILE], loaded.get(STATE_FILE))


def build_from_checkpoint(uri: str, storage: Storage | None = None, expect_model: str | None = None,
                          device: torch.device | str = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """The model a checkpoint was made for, built by the registry and loaded with its weights
    (strictly: every key, every shape), in eval mode."""
    from models.build import build_model

    ckpt = load_checkpoint(uri, storage, expect_model)
    options = {k: v for k, v in ckpt.meta.model_options.items() if not k.endswith("_weights")}
    try:
        model = build_model(ckpt.meta.model, **options)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{uri}: cannot build model {ckpt.meta.model!r} with its recorded options: {e}") from None
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{uri}: weights do not fit {ckpt.meta.model!r}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), ckpt.meta
