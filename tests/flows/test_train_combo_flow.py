"""The train_combo flow as a user runs it: Hydra overrides in; preprocess first when
train.dataset is null (here it finds the tiny data set made already); Ray Train with bf16
autocast; per-epoch lines in the flow's log; checkpoints and the report (the evaluate step's)
on the S3 test server; bad input refused before any worker starts.
"""
from __future__ import annotations


import pytest

from flows.train_combo import train_combo
from infra.storage import join
from tasks.checkpoint import read_meta
from tasks.train.run import TrainSetupError

REPORT_FILES = ("metrics.json", "per_video.csv", "curves.png", "overlays.png")


@pytest.mark.slow
def test_train_flow_on_s3_logs_epochs_and_writes_the_report(train_dataset, s3_run, flow_log):
    data_overrides, dataset_url = train_dataset
    storage, bucket, s3 = s3_run
    overrides = [*data_overrides, *s3, f"output={bucket}/out", "train.run_name=flow", "train.epochs=1",
                 "train.num_workers=1", "train.loader.image_size=64", "train.loader.shuffle_buffer=4", "train.amp=bf16"]
    summary = train_combo(overrides)

    run_dir = f"{bucket}/out/train/flow"
    train = summary["train"]
    assert train["dataset_url"] == dataset_url  # preprocess (a subflow) found the data set made already
    assert train["checkpoint"] == f"{run_dir}/checkpoint_epoch0001" and train["epochs"] == 1
    assert storage.exists(join(train["checkpoint"], "model.pt"))
    assert {"train_loss", "val_miou", "test_miou"} <= set(train["metrics"])
    assert read_meta(train["checkpoint"], storage).config["train"]["amp"] == "bf16"

    report = summary["report"]
    assert report["dir"] == f"{bucket}/out/evaluations/flow/checkpoint_epoch0001/test"  # as flows.evaluate puts it
    assert all(storage.exists(join(report["dir"], name)) for name in REPORT_FILES)
    assert 0.0 <= report["miou"] <= 1.0

    epoch_lines = [ln for ln in flow_log if ln.startswith("epoch 1/1 | loss ")]
    assert len(epoch_lines) == 1
    assert " | val mIoU " in epoch_lines[0] and " samples/s | " in epoch_lines[0] and "ETA 0s" in epoch_lines[0]
    assert any(f"report written to {report['dir']}" in ln for ln in flow_log)
    assert any("rerun with train.run_name=flow to resume" in ln for ln in flow_log)


def test_train_flow_refuses_bad_input_before_any_worker(tmp_path):
    with pytest.raises(TrainSetupError, match="no manifest.json there"):
        train_combo([f"train.dataset={tmp_path}/missing", f"output={tmp_path}/out"])
    with pytest.raises(TrainSetupError, match="is not in models.build.model_registry"):
        train_combo([f"train.dataset={tmp_path}/missing", "model.size=huge", f"output={tmp_path}/out"])
