"""Checkpoints: a round trip rebuilds the same model; another model's, a truncated, a corrupt
or a tampered checkpoint is a clear error before any tensor is used; s3:// works too."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from infra.storage import Storage
from models.build import build_model
from tasks.checkpoint import (
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointMeta,
    build_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

OPTIONS = {"num_classes": 1, "use_audio": True}


def _saved(folder: str, name: str = "tpavi_tiny") -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = build_model(name, **OPTIONS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    meta = CheckpointMeta(model=name, model_options=OPTIONS, epoch=3, step=42, dataset_version="v-abc",
                          metrics={"val_miou": 0.5}, history=[{"epoch": 1, "val_miou": 0.4}])
    return model, save_checkpoint(folder, model, meta, optimizer=opt)


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model, folder = _saved(str(tmp_path / "ckpt"))
    rebuilt, meta = build_from_checkpoint(folder, expect_model="tpavi_tiny")
    assert meta.epoch == 3 and meta.dataset_version == "v-abc" and meta.history[0]["val_miou"] == 0.4
    for (k, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), k
    state = load_checkpoint(folder, with_train_state=True).train_state
    assert state["epoch"] == 3 and state["step"] == 42 and "state" in state["optimizer"]


def test_another_models_checkpoint_is_refused(tmp_path):
    _, folder = _saved(str(tmp_path / "ckpt"))
    with pytest.raises(CheckpointError, match="made for model 'tpavi_tiny', not 'combo_tiny'"):
        load_checkpoint(folder, expect_model="combo_tiny")


def test_truncated_corrupt_and_unsafe_files_are_clear_errors(tmp_path):
    _, folder = _saved(str(tmp_path / "ckpt"))
    path = os.path.join(folder, MODEL_FILE)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.pt is \d+ bytes, meta.json says \d+ \(truncated"):
        load_checkpoint(folder)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(flipped))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_checkpoint(folder)

    # a pickle that would run code, with a meta.json that vouches for it: still refused
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    open(path, "wb").write(pickle.dumps({"w": Boom()}))
    meta = json.load(open(os.path.join(folder, META_FILE)))
    import hashlib

    meta["files"][MODEL_FILE] = {"sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
                                 "nbytes": os.path.getsize(path)}
    json.dump(meta, open(os.path.join(folder, META_FILE), "w"))
    with pytest.raises(CheckpointError, match="cannot be read safely as tensors"):
        load_checkpoint(folder)


def test_not_a_checkpoint_and_bad_meta(tmp_path):
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_checkpoint(str(tmp_path))
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(str(tmp_path))
    (tmp_path / META_FILE).write_text(json.dumps({"format": 99, "model": "x", "model_options": {}, "epoch": 1}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(str(tmp_path))
    _, folder = _saved(str(tmp_path / "ckpt"))
    os.remove(os.path.join(folder, STATE_FILE))
    with pytest.raises(CheckpointError, match="train_state.pt is missing"):
        load_checkpoint(folder, with_train_state=True)


def test_checkpoint_on_s3(tmp_path, s3_storage):
    storage, bucket = s3_storage
    model, folder = _saved(str(tmp_path / "ckpt"), "combo_tiny")
    for name in os.listdir(folder):
        storage.put_file(os.path.join(folder, name), f"{bucket}/runs/r1/checkpoint_000003/{name}")
    rebuilt, meta = build_from_checkpoint(f"{bucket}/runs/r1/checkpoint_000003", storage, expect_model="combo_tiny")
    assert meta.step == 42
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))
