"""The quality benchmarks' own arithmetic: how bench/quality_gpu.py fits its runs to a budget and
walks the epochs, and how bench/quality.py states the share of the gap MoCA closes."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def gpu_bench():
    return _bench("quality_gpu")


@pytest.fixture(scope="module")
def cpu_bench():
    return _bench("quality")


def test_fit_plan_drops_the_last_runs_until_each_gets_its_minimum(gpu_bench):
    plan = [("s4", "combo"), ("s4", "tpavi"), ("ms3", "combo")]
    per_step = {"combo": 0.3, "tpavi": 0.1}
    assert gpu_bench.fit_plan(plan, per_step, 700.0, 500, 10**6) == (plan, 1000)  # 0.7 s per step of all three
    assert gpu_bench.fit_plan(plan, per_step, 300.0, 500, 10**6) == (plan[:2], 750)  # 0.4 s for the first two
    assert gpu_bench.fit_plan(plan, per_step, 30.0, 500, 10**6) == (plan[:1], 100)  # the first always stays
    assert gpu_bench.fit_plan(plan, per_step, 700.0, 500, 600) == (plan, 600)  # capped


def test_epoch_shuffle_visits_every_clip_once_per_epoch(gpu_bench):
    sampler = gpu_bench.EpochShuffle(5, 12, seed=0)
    ks = list(sampler)
    assert len(ks) == len(sampler) == 12
    epochs = [[k % 5 for k in ks if k // 5 == e] for e in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(5)) and len(epochs[2]) == 2
    assert ks == list(gpu_bench.EpochShuffle(5, 12, seed=0))  # the same order for the same seed


def test_parse_plan_names_a_bad_entry(gpu_bench):
    assert gpu_bench.parse_plan(["s4:combo", "sync_s4:tpavi"]) == [("s4", "combo"), ("sync_s4", "tpavi")]
    with pytest.raises(SystemExit, match="'sync_s4:avsac' is not SET:MODEL"):
        gpu_bench.parse_plan(["sync_s4:avsac"])


def test_gap_closed(cpu_bench):
    def r(miou):
        return {"miou": miou}

    runs = {"combo": r(0.5), "moca_baseline_saliency": r(0.2), "moca_baseline_similarity": r(0.1), "moca": r(0.35)}
    assert cpu_bench.gap_closed(runs) == pytest.approx(0.5)  # halfway from the better baseline (0.2) to COMBO
    assert cpu_bench.gap_closed({**runs, "moca": r(0.1)}) == pytest.approx(-1 / 3)  # below the baseline
    assert cpu_bench.gap_closed({k: v for k, v in runs.items() if k != "combo"}) is None
    assert cpu_bench.gap_closed({**runs, "combo": r(0.2)}) is None  # no gap to close
    assert np.isfinite(cpu_bench.gap_closed(runs))


def test_recipe_changes_name_what_a_found_run_was_trained_with(cpu_bench):
    found = {"epochs": 3, "lr": 1e-4, "run_name": "a", "loader": {"batch_size": 4}}
    wanted = {"epochs": 3, "lr": 2e-4, "run_name": "b", "loader": {"batch_size": 4, "silent_audio_prob": 0.1}}
    assert cpu_bench.recipe_changes(found, wanted) == ["train.loader.silent_audio_prob: None -> 0.1",
                                                       "train.lr: 0.0001 -> 0.0002"]
    assert cpu_bench.recipe_changes(found, found) == []
    assert cpu_bench.recipe_changes({"lr": 1.0}, {"lr": 1.0, "moca_threshold_split": "val"},
                                    ignore=("moca_threshold_split",)) == []


def test_oracle_logmel_codes_the_sounding_categories_per_second(gpu_bench):
    objects = [{"category_id": 2, "sounding": [True, False, True]},
               {"category_id": 8, "sounding": [False, False, True]},
               {"category_id": 5, "sounding": [False, False, False]}]  # a silent distractor: no band
    code = gpu_bench.oracle_logmel(objects, 3, 8)
    high, low = gpu_bench.ORACLE_HIGH, gpu_bench.ORACLE_LOW
    assert code.shape == (3, 96, 64) and code.dtype == np.float32
    on = [sorted({b // 8 for b in np.flatnonzero(code[t, 0] == high)}) for t in range(3)]
    assert on == [[1], [], [1, 7]]  # category ids 2 and 8 are bands 1 and 7 of 8 bins each
    assert (code[1] == low).all() and (code[:, :, 32:40] == low).all()
    assert (code[2] == code[2, :1]).all()  # the same in every time frame of the second
    with pytest.raises(ValueError, match="category id 9 outside 1..8"):
        gpu_bench.oracle_logmel([{"category_id": 9, "sounding": [True]}], 1, 8)


def test_init_from_copies_what_matches_and_leaves_the_rest(gpu_bench):
    import torch

    torch.manual_seed(0)
    pretrained = gpu_bench.ReferenceUNet(use_audio=False)  # as bench/shape_probe.py trains it ...
    pretrained.head = torch.nn.Conv2d(pretrained.head.in_channels, 9, 1)  # ... with K + 1 outputs
    model = gpu_bench.ReferenceUNet()
    head, film = model.head.weight.clone(), model.film[0].proj.weight.clone()
    copied = gpu_bench.init_from(model, pretrained.state_dict())
    assert "down.0.0.0.weight" in copied and not any(k.startswith("head.") for k in copied)
    assert torch.equal(model.down[0][0][0].weight, pretrained.down[0][0][0].weight)
    assert torch.equal(model.head.weight, head) and torch.equal(model.film[0].proj.weight, film)
