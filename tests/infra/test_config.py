"""Config composition: Hydra groups under conf/ validated by the typed schemas."""
from __future__ import annotations

import pytest

from infra.config import Config, ConfigError, compose, config_hash, to_dict


def test_default_composes_to_typed_config():
    cfg = compose([])
    assert isinstance(cfg, Config)
    assert cfg.data.source == "synth" and cfg.data.synth.preset == "hard"
    assert cfg.model.registry_name == "combo_tiny"
    assert cfg.cluster.address is None and cfg.storage.endpoint_url is None


def test_group_choice_and_nested_override():
    cfg = compose(["data=synth_easy", "data.synth.seed=7", "model=avsac_tiny", "preprocess.maskige.source=sam_tiny"])
    assert cfg.data.synth.preset == "easy" and cfg.data.synth.seed == 7
    assert cfg.data.synth.colour_follows_category is True
    assert cfg.model.name == "avsac" and cfg.preprocess.maskige.source == "sam_tiny"


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("data.no_such_key=1", "data.no_such_key"),
        ("data.num_frames=abc", "data.num_frames"),
        ("data.num_frames=0", "data.num_frames must be in 1..60"),
        ("data=no_such_choice", "Available options in 'data'"),
        ("preprocess.maskige.source=bogus", "maskige.source must be one of"),
        ("train.lr=-1", "train.lr must be >= 0"),
        ("model.size=huge", "model.size must be one of"),
    ],
)
def test_bad_config_is_a_clear_error_before_work(override, phrase):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert phrase in str(err.value)
    assert override in str(err.value)  # the message names the override that was given


def test_hash_changes_with_config_and_hides_credentials():
    a, b = compose([]), compose(["preprocess.shards.jpeg_quality=90"])
    assert config_hash(a.preprocess) != config_hash(b.preprocess)
    assert config_hash(a.preprocess) == config_hash(compose([]).preprocess)
    c = compose(["storage.key=AKIA123", "storage.secret=shh-secret"])
    assert "shh-secret" not in str(to_dict(c)) and "shh-secret" not in repr(c.storage)


def test_credentials_given_as_overrides_never_reach_messages():
    from infra.config import redact_overrides

    assert redact_overrides(["storage.secret=abc123", "data.uri=x"]) == ["storage.secret=***", "data.uri=x"]
    with pytest.raises(ConfigError) as err:
        compose(["storage.secret=abc123-secret", "storage.no_such=1"])
    assert "abc123-secret" not in str(err.value) and "storage.no_such" in str(err.value)


def test_every_group_option_composes():
    for override in ["preprocess=sam_dino", "data=synth_easy", "data=avsbench_avss", "storage=s3", "cluster=remote",
                     "train=gpu", "model=tpavi_pvt_b5"]:
        extra = ["data.uri=/data/avsbench"] if "avsbench" in override else []
        cfg = compose([override, *extra])
        assert cfg is not None
    cfg = compose(["preprocess=sam_dino"])
    assert cfg.preprocess.maskige.source == "sam" and cfg.preprocess.embed.source == "dino"
