"""Ray Tune over the loss weights and the learning rate (tasks/tune/), on the tiny SynthAVS data
set (conftest.train_dataset).

One search carries the run checks (a trial costs a Ray Train run: tens of seconds on 2 cores): 2
trials of one Ray Train worker each, ASHA with grace 1 epoch and max 2, the tune folder on the S3
test server with the credentials in the environment, as a user's would be. ASHA decides on the
training loss there, not val mIoU: after one epoch on 2 validation clips every trial's val mIoU is
0, and ASHA stops no trial on a tie, while the loss differs with the sampled loss weights. The
trials run one at a time, so that the second is judged against the first at the rung and is
stopped, with seed 0, mid-run (the stop path: its Ray Train run aborted, its workers' CPUs given
back). The table, the best overrides and checkpoint must follow from what the trials reported,
and no credential may be left in the bucket or in Ray's session folder (Tune puts them in both
unless kept from it). The other tests are fast: bad input is refused before Ray or any trial starts.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
import uuid
from pathlib import Path

import pytest
from log_lines import LogLines

from infra.config import ConfigError, compose
from infra.schema.tune import SEARCH_KEYS
from infra.storage import Storage, join
from tasks.shards.manifest import Manifest, write_manifest
from tasks.checkpoint import load_checkpoint
from tasks.train.run import TrainSetupError
from tasks.tune import search as tune_search
from tasks.tune.search import TuneSetupError, max_concurrent, prepare_search, run_search
from tasks.tune.space import as_overrides, trial_config

FAST = ["train.loader.image_size=64", "train.loader.batch_size=2", "train.loader.shuffle_buffer=4", "seed=0",
        "tune.num_samples=2", "tune.max_epochs=2", "tune.grace_period=1", "tune.workers_per_trial=1",
        "tune.cpus_per_worker=1", "tune.seed=0"]
RUNG = 1  # ASHA's only rung with grace 1, max 2 (and reduction factor 4): epoch 1


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """(storage, bucket, overrides, secret): a fresh bucket on the test server, credentials of
    this test only in the environment (the server takes any)."""
    import boto3

    key, secret = f"tune-key-{uuid.uuid4().hex[:6]}", f"tune-secret-{uuid.uuid4().hex}"
    bucket = f"tune-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=key, aws_secret_access_key=secret,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    overrides = [f"storage.endpoint_url={s3_server}", "storage.region=us-east-1", "storage.retry_backoff_s=0.05"]
    cfg = compose(overrides)
    return Storage(cfg.storage), f"s3://{bucket}", overrides, secret


def _files_holding(paths, secret: str) -> list[str]:
    return [str(p) for p in paths if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.slow
def test_tune_with_2_trials_and_asha_writes_its_table_and_best_config(train_dataset, s3_env, ray_local):
    _, dataset_url = train_dataset
    storage, bucket, s3, secret = s3_env
    cfg = compose([*FAST, *s3, f"output={bucket}/out", "tune.name=t2", "tune.metric=train_loss", "tune.mode=min",
                   "tune.max_concurrent_trials=1"])
    lines = LogLines()
    logger = logging.getLogger("test.tune")
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        result = run_search(cfg, storage, dataset_url, logger)
    finally:
        logger.removeHandler(lines)
    tune_dir = f"{bucket}/out/tune/t2"
    assert result.tune_dir == tune_dir

    # the table: one row per trial, the values Tune sampled (its params.json), the metrics reported
    table = list(csv.DictReader(io.StringIO(storage.read_text(join(tune_dir, "results.csv")))))
    assert len(table) == 2 and [r["trial_id"] for r in table] == [r["trial_id"] for r in result.trials]
    for row in table:
        sampled = json.loads(storage.read_text(join(tune_dir, row["trial_id"], "params.json")))
        assert set(sampled) == set(SEARCH_KEYS)
        for key, (lo, hi) in cfg.tune.ranges().items():
            assert float(row[key]) == sampled[key] and lo <= sampled[key] <= hi
        assert 0 <= float(row["val_miou"]) <= 1 and 0 <= float(row["val_fscore"]) <= 1 and row["error"] == ""
        assert float(row["best_train_loss"]) <= float(row["train_loss"])
        assert row["checkpoint"] == f"{tune_dir}/train/{row['trial_id']}/checkpoint_epoch{int(row['epochs']):04d}"
    assert all(table[0][k] != table[1][k] for k in SEARCH_KEYS)  # each trial its own sample

    # one progress line per trial result; ASHA at its rung (epoch 1): the first trial to reach it
    # goes on to epoch 2, the second is stopped where its loss is above the first's
    results = [re.match(r"trial (\S+) epoch (\d)/2 \| (.*) \| train_loss (\S+)", ln) for ln in lines.lines]
    results = [m for m in results if m]
    assert sorted((m[1], int(m[2])) for m in results) == sorted(
        (r["trial_id"], e) for r in table for e in range(1, int(r["epochs"]) + 1))
    first, second = [m for m in results if int(m[2]) == RUNG]
    assert float(second[4]) > float(first[4])  # seed 0: the second trial samples larger loss weights
    status = {r["trial_id"]: (r["status"], r["epochs"]) for r in table}
    assert status == {first[1]: ("completed", "2"), second[1]: ("stopped", "1")}
    assert any(f"trial {second[1]} stopped by ASHA after epoch 1" in ln for ln in lines.lines)
    # the stopped trial's Ray Train run was aborted, not left holding its worker's CPU
    cpus, deadline = ray_local.cluster_resources()["CPU"], time.monotonic() + 20
    while ray_local.available_resources().get("CPU", 0.0) < cpus and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_local.available_resources().get("CPU", 0.0) == cpus

    # the best trial: the lowest last loss; its overrides compose to its values, exactly
    assert result.best["trial_id"] == min(table, key=lambda r: float(r["train_loss"]))["trial_id"] == first[1]
    overrides = storage.read_text(join(tune_dir, "best_overrides.txt")).split()
    assert overrides == as_overrides({k: float(result.best[k]) for k in SEARCH_KEYS}) == result.best_overrides
    best_cfg = compose(overrides)
    assert (best_cfg.model.lambda_ada, best_cfg.model.weight_class, best_cfg.model.weight_mask,
            best_cfg.model.weight_dice, best_cfg.train.lr) == tuple(float(result.best[k]) for k in SEARCH_KEYS)
    other = next(r for r in table if r["trial_id"] != result.best["trial_id"])
    other_cfg = compose(as_overrides({k: float(other[k]) for k in SEARCH_KEYS}))
    assert other_cfg.model.lambda_ada != best_cfg.model.lambda_ada and other_cfg.train.lr != best_cfg.train.lr

    # the best checkpoint: of the model, trained with the best trial's values, validation only
    checkpoint = storage.read_text(join(tune_dir, "best_checkpoint.txt")).strip()
    assert checkpoint == result.best_checkpoint == result.best["checkpoint"]
    meta = load_checkpoint(checkpoint, storage, expect_model="combo_tiny").meta
    assert meta.epoch == 2 and meta.dataset_url == dataset_url
    assert all(meta.model_options[k] == float(result.best[k]) for k in SEARCH_KEYS if k != "lr")
    assert meta.config["train"]["lr"] == float(result.best["lr"]) and meta.config["train"]["epochs"] == 2
    assert meta.metrics["train_loss"] == pytest.approx(float(result.best["train_loss"]))
    assert meta.config["train"]["test_split"] is None and "test_miou" not in meta.metrics

    # no credential in the bucket (Ray Tune's own files included) nor in Ray's session folder
    objects = storage.walk_files(bucket)
    assert any(u.endswith("/tuner.pkl") for u in objects) and any(u.endswith("/result.json") for u in objects)
    assert [u for u in objects if secret.encode() in storage.read_bytes(u)] == []
    session = Path(ray_local._private.worker._global_node.get_session_dir_path())
    assert _files_holding(session.rglob("*"), secret) == []


# -- bad input: refused before Ray or any trial starts --------------------------------------------
def _manifest(folder: str, splits: list[dict]) -> str:
    shards = [{"name": f"shard-{i:06d}.tar", "count": sum(s.values()), "sha256": "0" * 64, "nbytes": 1, "splits": s}
              for i, s in enumerate(splits)]
    write_manifest(Manifest(dataset_version="v-test", config_hash="x", shards=shards, source={"uri": ""},
                            provenance={"config": {"decode": {"setting": "s4", "num_frames": 5}}}), folder, Storage())
    return folder


@pytest.fixture()
def dataset(tmp_path):
    return _manifest(str(tmp_path / "ds"), [{"train": 2}, {"train": 2}, {"val": 2}, {"test": 2}])


@pytest.fixture()
def no_ray(monkeypatch):
    """Ray and Tune must not start: init_ray and Tuner raise."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray or a Tune trial started for a search that should not")

    monkeypatch.setattr(tune_search, "init_ray", refuse)
    monkeypatch.setattr(tune_search.tune, "Tuner", refuse)


@pytest.mark.parametrize("override, phrase", [
    ("tune.lr=[0.01,0.001]", "tune.lr must be [low, high] with 0 < low <= high"),
    ("tune.weight_dice=[0,5]", "tune.weight_dice must be [low, high]"),
    ("tune.lambda_ada=[3]", "tune.lambda_ada must be [low, high]"),
    ("tune.grace_period=5", "tune.grace_period must be <= tune.max_epochs"),
    ("tune.metric=test_miou", "tune.metric=test_miou: the test split"),
    ("tune.gpus_per_worker=2", "tune.gpus_per_worker must be 0, 1 or null"),
    ("tune.max_concurrent_trials=0", "tune.max_concurrent_trials must be >= 1"),
])
def test_a_bad_search_config_is_a_config_error_naming_the_key(override, phrase):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert phrase in str(err.value) and override in str(err.value)


def test_a_missing_data_set_fails_before_any_trial(tmp_path, no_ray):
    cfg = compose([*FAST, f"output={tmp_path}/out", "tune.name=t"])
    with pytest.raises(TuneSetupError, match="no manifest.json there") as err:
        run_search(cfg, Storage(), str(tmp_path / "nowhere"))
    assert isinstance(err.value.__cause__, TrainSetupError)  # the training step's own check
    assert not (tmp_path / "out").exists()


def test_other_bad_input_fails_before_any_trial(tmp_path, dataset, no_ray):
    def refused(overrides, phrase):
        with pytest.raises(TuneSetupError, match=phrase):
            run_search(compose([*FAST, f"output={tmp_path}/out", *overrides]), Storage(), dataset)

    # a searched key the model does not take (TPAVI has no λada): named, with the way out
    refused(["model=tpavi_tiny", "tune.name=t"], r"do not fit tpavi_tiny's builder.*tune.<key>=null")
    # more Ray Train workers per trial than the data set has train shards
    refused(["tune.workers_per_trial=3", "tune.name=t"], "2 shard\\(s\\) of split 'train' for train.num_workers=3")
    # a metric the loop does not report every epoch
    refused(["train.val_split=null", "tune.name=t"], "tune.metric=val_miou needs the loop to score split 'val'")
    # an existing tune folder is never written into
    (tmp_path / "out" / "tune" / "t").mkdir(parents=True)
    (tmp_path / "out" / "tune" / "t" / "results.csv").write_text("x")
    refused(["tune.name=t"], "tune folder .*/out/tune/t exists")


def test_trials_are_sized_to_the_cluster_and_configured_as_sampled(tmp_path, dataset):
    two_cpus = {"CPU": 2.0, "memory": 1e9}
    assert max_concurrent(compose(FAST), two_cpus) == 2
    assert max_concurrent(compose([*FAST, "tune.driver_cpus=0.5"]), two_cpus) == 1
    assert max_concurrent(compose([*FAST, "tune.workers_per_trial=4"]), two_cpus) == 1  # never 0
    assert max_concurrent(compose([*FAST, "tune.max_concurrent_trials=3"]), two_cpus) == 3
    gpus = compose([*FAST, "tune.gpus_per_worker=1", "tune.workers_per_trial=2", "tune.cpus_per_worker=4"])
    assert max_concurrent(gpus, {"CPU": 64.0, "GPU": 8.0}) == 4  # the GPUs limit: 8 / 2
    assert tune_search.trial_resources(compose(FAST)) == {"CPU": 0.0, "memory": float(tune_search.TRIAL_DRIVER_MEMORY)}

    # null trial sizes follow train.*; a trial trains the sampled values, its own run, no test split
    cfg = compose(["train=cpu", "train.num_workers=2", "train.cpus_per_worker=3", "tune.max_epochs=5"])
    trial = trial_config(cfg, {"lambda_ada": 3.5, "lr": 2e-4}, "abc_00001", str(tmp_path / "train"))
    assert (trial.train.num_workers, trial.train.cpus_per_worker, trial.train.use_gpu) == (2, 3.0, False)
    assert (trial.model.lambda_ada, trial.train.lr, trial.model.weight_dice) == (3.5, 2e-4, cfg.model.weight_dice)
    assert (trial.train.epochs, trial.train.run_name, trial.train.test_split) == (5, "abc_00001", None)
    assert as_overrides({"lr": 2e-4, "lambda_ada": 3.5}) == ["model.lambda_ada=3.5", "train.lr=0.0002"]
    assert prepare_search(compose([*FAST, f"output={tmp_path}/out"]), Storage(), dataset, "t").model == "combo_tiny"
    assert compose(as_overrides({"lr": 1 / 3})).train.lr == 1 / 3  # exact: the float's repr
