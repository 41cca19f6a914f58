"""The train_moca flow as a user runs it: Hydra overrides in (model=moca_tiny); preprocess first
when train.dataset is null (here it finds the tiny data set made already); Ray Train on the
mined pairs; per-epoch lines in the flow's log; the checkpoint and the report (the evaluate
step's, with the test split's masks); bad input refused before preprocess or any worker.
"""
from __future__ import annotations

import shutil

import pytest

from flows.train_moca import train_moca
from infra.storage import Storage, join
from tasks.checkpoint import read_meta
from tasks.train.run import TrainSetupError

REPORT_FILES = ("metrics.json", "per_video.csv", "curves.png", "overlays.png")
FAST = ["model=moca_tiny", "train.epochs=1", "train.num_workers=1", "train.loader.image_size=64",
        "train.loader.batch_size=4", "train.val_split=null"]


@pytest.mark.slow
def test_train_moca_flow_trains_from_pairs_and_writes_the_report(train_dataset, tmp_path, flow_log):
    data_overrides, dataset_url = train_dataset
    storage = Storage()
    summary = train_moca([*data_overrides, *FAST, f"output={tmp_path}/out", "train.run_name=moca-flow"])

    train = summary["train"]
    assert train["dataset_url"] == dataset_url  # preprocess (a subflow) found the data set made already
    assert train["model"] == "moca_tiny" and train["epochs"] == 1
    assert train["checkpoint"] == f"{tmp_path}/out/train/moca-flow/checkpoint_epoch0001"
    assert read_meta(train["checkpoint"], storage).model == "moca_tiny"
    assert {"train_loss", "test_miou"} <= set(train["metrics"])

    report = summary["report"]
    assert report["dir"] == f"{tmp_path}/out/evaluations/moca-flow/checkpoint_epoch0001/test"
    assert all(storage.exists(join(report["dir"], name)) for name in REPORT_FILES)
    assert isinstance(report["miou"], float) and 0.0 <= report["miou"] <= 1.0

    epoch_lines = [ln for ln in flow_log if ln.startswith("epoch 1/1 | loss ")]
    assert len(epoch_lines) == 1 and "contrastive" in epoch_lines[0] and " samples/s | " in epoch_lines[0]
    assert any("no mask is read" in ln and "rerun with train.run_name=moca-flow to resume" in ln for ln in flow_log)


def test_train_moca_flow_refuses_bad_input_before_any_work(train_dataset, tmp_path, monkeypatch):
    import flows.train_moca as module

    monkeypatch.setattr(module, "dataset_for", lambda *a: pytest.fail("preprocess ran"))
    with pytest.raises(TrainSetupError, match="model 'combo_tiny'.*is not one"):
        train_moca(["model=combo_tiny", f"output={tmp_path}/out"])
    monkeypatch.undo()

    _, dataset_url = train_dataset
    nopairs = tmp_path / "nopairs"
    shutil.copytree(dataset_url, nopairs)
    (nopairs / "pairs.parquet").unlink()
    monkeypatch.setattr("infra.ray_runtime.init_ray", lambda *a, **k: pytest.fail("Ray was started"))
    with pytest.raises(TrainSetupError, match="has no pairs.parquet"):
        train_moca([*FAST, f"train.dataset={nopairs}", f"output={tmp_path}/out"])
