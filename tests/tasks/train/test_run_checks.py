"""Bad input to a training run: a clear TrainSetupError before any worker starts.

The data sets here are manifests only (prepare() reads nothing else); the checkpoints are real.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from infra.config import ConfigError, compose
from infra.storage import Storage, join
from models.build import build_model
from tasks.shards.manifest import Manifest, write_manifest
from tasks.train import run as train_run
from tasks.checkpoint import MODEL_FILE, CheckpointError, CheckpointMeta, save_checkpoint
from tasks.train.run import TrainSetupError, prepare

torch.set_num_threads(1)


def _manifest(folder: str, splits: list[dict], setting: str = "s4", source: str | None = None) -> str:
    shards = [{"name": f"shard-{i:06d}.tar", "count": sum(s.values()), "sha256": "0" * 64, "nbytes": 1, "splits": s}
              for i, s in enumerate(splits)]
    manifest = Manifest(dataset_version="v-test", config_hash="x", shards=shards, source={"uri": source or ""},
                        provenance={"config": {"decode": {"setting": setting, "num_frames": 5}}})
    write_manifest(manifest, folder, Storage())
    return folder


@pytest.fixture()
def dataset(tmp_path):
    return _manifest(str(tmp_path / "ds"), [{"train": 2}, {"train": 2}, {"train": 1}, {"val": 2}, {"test": 2}])


def _cfg(tmp_path, *overrides):
    return compose([f"output={tmp_path}/out", "train.num_workers=2", *overrides])


def _checkpoint(folder: str, name: str = "combo_tiny", **options) -> str:
    options = {"num_classes": 1, **options}
    model = build_model(name, **options)
    save_checkpoint(folder, model, CheckpointMeta(model=name, model_options=options, epoch=1, step=3,
                                                  dataset_version="v-test"),
                    optimizer=torch.optim.AdamW(model.parameters()))
    return folder


def _refused(cfg, dataset_url, match: str, run_name: str = "r1") -> TrainSetupError:
    with pytest.raises(TrainSetupError, match=match) as err:
        prepare(cfg, Storage(), dataset_url, run_name)
    assert isinstance(err.value, ConfigError)  # one line and exit status 2 on the command line
    return err.value


def test_a_good_plan(tmp_path, dataset):
    plan = prepare(_cfg(tmp_path), Storage(), dataset, "r1")
    assert (plan.model, plan.num_classes, plan.setting, plan.dataset_version) == ("combo_tiny", 1, "s4", "v-test")
    assert plan.model_options["num_classes"] == 1 and plan.model_options["lambda_ada"] == 10.0
    assert "tpavi_stages" not in plan.model_options and "name" not in plan.model_options
    assert plan.steps_per_epoch == 2  # the rank with two 2-clip shards: 4 clips, batches of 2
    assert plan.run_dir == join(str(tmp_path / "out" / "train"), "r1") and plan.init_checkpoint is None


def test_missing_data_set_and_unknown_schema_version(tmp_path, dataset):
    _refused(_cfg(tmp_path), str(tmp_path / "nowhere"), "no manifest.json there, so the data set is missing")
    with open(os.path.join(dataset, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["schema_version"] = 99
    with open(os.path.join(dataset, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    _refused(_cfg(tmp_path), dataset, "manifest schema version 99 is not readable")


def test_a_split_that_is_not_there_and_too_few_shards(tmp_path):
    no_val = _manifest(str(tmp_path / "a"), [{"train": 2}, {"train": 2}, {"test": 2}])
    _refused(_cfg(tmp_path), no_val, r"no clip of split 'val' \(train.val_split\).*train.val_split=null")
    prepare(_cfg(tmp_path, "train.val_split=null"), Storage(), no_val, "r1")
    one_shard = _manifest(str(tmp_path / "b"), [{"train": 4}, {"val": 2}, {"test": 2}])
    _refused(_cfg(tmp_path), one_shard, "1 shard.* of split 'train' for train.num_workers=2")


def test_unknown_model_and_options_its_builder_does_not_take(tmp_path, dataset):
    _refused(_cfg(tmp_path, "model.size=huge"), dataset,
             r"'combo_huge' .* is not in models.build.model_registry; valid: avsac_pvt_b5, .*tpavi_tiny")
    _refused(_cfg(tmp_path, "model=tpavi_tiny", "model.lambda_ada=3"), dataset,
             "do not fit tpavi_tiny's builder .*lambda_ada")
    _refused(_cfg(tmp_path, "model.fusion=sideways"), dataset, "fusion must be one of")
    plan = prepare(_cfg(tmp_path, "model=tpavi_tiny"), Storage(), dataset, "r1")
    assert plan.model_options == {"num_classes": 1, "use_audio": True, "channels_last": True,
                                  "tpavi_stages": [0, 1, 2, 3]}


def test_resume_from_another_model_a_truncated_or_a_misfit_checkpoint(tmp_path, dataset):
    other = _checkpoint(str(tmp_path / "tpavi"), "tpavi_tiny")
    err = _refused(_cfg(tmp_path, f"train.resume_from={other}"), dataset, "made for model 'tpavi_tiny', not 'combo_tiny'")
    assert isinstance(err.__cause__, CheckpointError)
    three = _checkpoint(str(tmp_path / "combo3"), num_classes=3)
    _refused(_cfg(tmp_path, f"train.resume_from={three}"), dataset, "weights do not fit the configured model")
    good = _checkpoint(str(tmp_path / "combo"))
    assert prepare(_cfg(tmp_path, f"train.resume_from={good}"), Storage(), dataset, "r1").init_checkpoint == good
    path = os.path.join(good, MODEL_FILE)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    err = _refused(_cfg(tmp_path, f"train.resume_from={good}"), dataset, r"model.pt is \d+ bytes.*\(truncated")
    assert isinstance(err.__cause__, CheckpointError)


def test_an_existing_run_of_another_model_or_with_resume_off(tmp_path, dataset):
    run_dir = join(str(tmp_path / "out" / "train"), "r1")
    _checkpoint(join(run_dir, "checkpoint_epoch0001"), "tpavi_tiny")
    _refused(_cfg(tmp_path), dataset, "train.run_name=r1 is a run of model 'tpavi_tiny'")
    _refused(_cfg(tmp_path, "train.resume=false"), dataset, "exists and train.resume=false")
    mine = _checkpoint(join(run_dir, "checkpoint_epoch0002"))
    assert prepare(_cfg(tmp_path), Storage(), dataset, "r1").init_checkpoint is None  # Ray Train resumes it
    with open(os.path.join(mine, MODEL_FILE), "ab") as f:
        f.write(b"x")
    _refused(_cfg(tmp_path), dataset, r"has model.pt of \d+ bytes, meta.json says \d+ \(truncated or missing\)")


def test_avss_classes_come_from_label2idx(tmp_path):
    source = tmp_path / "synth"
    (source / "AVSBench_semantic").mkdir(parents=True)
    (source / "AVSBench_semantic" / "label2idx.json").write_text(json.dumps({"background": 1, "dog": 2, "car": 3}))
    ds = _manifest(str(tmp_path / "ds"), [{"train": 2}, {"train": 2}, {"val": 1}, {"test": 1}], "avss", str(source))
    assert prepare(_cfg(tmp_path), Storage(), ds, "r1").num_classes == 2
    assert prepare(_cfg(tmp_path, "model.num_classes=5"), Storage(), ds, "r1").num_classes == 5
    bare = _manifest(str(tmp_path / "ds2"), [{"train": 2}, {"train": 2}, {"val": 1}, {"test": 1}], "avss",
                     str(tmp_path / "elsewhere"))
    _refused(_cfg(tmp_path), bare, "cannot tell the number of AVSS classes.*model.num_classes")


def test_no_worker_starts_on_bad_input(tmp_path, monkeypatch):
    def no_trainer(*args, **kwargs):
        raise AssertionError("a TorchTrainer was built for a run that should not start")

    monkeypatch.setattr(train_run, "TorchTrainer", no_trainer)
    monkeypatch.setattr(train_run, "init_ray", lambda cfg: {})
    with pytest.raises(TrainSetupError, match="no manifest.json"):
        train_run.run_training(_cfg(tmp_path), Storage(), str(tmp_path / "nowhere"))


def test_a_run_name_follows_from_what_is_trained():
    from tasks.train.run import config_run_name

    base = config_run_name(compose([]), "v-0123456789ab", prefix="pipeline-")
    assert base.startswith("pipeline-combo_tiny-0123456789ab-") and base == config_run_name(compose([]), "v-0123456789ab",
                                                                                            prefix="pipeline-")
    same = ["train.epochs=9", "train.storage_path=/elsewhere", "train.max_failures=5", "output=/x"]  # where, how long
    assert config_run_name(compose(same), "v-0123456789ab", prefix="pipeline-") == base
    for other in (["train.lr=0.0002"], ["model.lambda_ada=3"], ["model=tpavi_tiny"], ["seed=1"],
                  ["train.loader.image_size=64"]):
        assert config_run_name(compose(other), "v-0123456789ab", prefix="pipeline-") != base, other
    assert config_run_name(compose([]), "v-ffffffffffff", prefix="pipeline-") != base
