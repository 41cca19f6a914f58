"""The tune_combo flow refuses bad input before Ray or any trial starts (the search itself is
tests/tasks/tune/test_tune.py)."""
from __future__ import annotations

import pytest

from flows.tune_combo import tune_combo
from infra.config import ConfigError
from tasks.tune import search as tune_search
from tasks.tune.search import TuneSetupError


def test_tune_flow_refuses_bad_input_before_any_trial(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray or a Tune trial started for a search that should not")

    monkeypatch.setattr(tune_search, "init_ray", refuse)
    with pytest.raises(TuneSetupError, match="no manifest.json there"):
        tune_combo([f"train.dataset={tmp_path}/missing", f"output={tmp_path}/out"])
    with pytest.raises(ConfigError, match=r"tune.lr must be \[low, high\]"):
        tune_combo([f"train.dataset={tmp_path}/missing", "tune.lr=[0.1,0.01]"])
