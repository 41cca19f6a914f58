"""Config composition: Hydra groups under conf/ validated by the typed schemas."""
from __future__ import annotations

from dataclasses import fields as dataclasses_fields
from pathlib import Path

import pytest

from infra.config import Config, ConfigError, compose, config_hash, to_dict
from infra.schema.storage import StorageConfig


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
        # an unknown model.size is the registry's to refuse: tests/tasks/train/test_run_checks.py
        ("model.num_classes=0", "model.num_classes must be >= 1"),
        ("train.amp=fp8", "train.amp must be one of"),
    ],
)
def test_bad_config_is_a_clear_error_before_work(override, phrase):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert phrase in str(err.value)
    assert override in str(err.value)  # the message names the override that was given


def test_hash_changes_with_config_and_hides_credentials():
    import dataclasses

    a, b = compose([]), compose(["preprocess.shards.jpeg_quality=90"])
    assert config_hash(a.preprocess) != config_hash(b.preprocess)
    assert config_hash(a.preprocess) == config_hash(compose([]).preprocess)
    c = dataclasses.replace(a, storage=StorageConfig(key="AKIA123", secret="shh-secret", token="tok-secret"))
    for shown in (str(to_dict(c)), str(to_dict(c.storage)), repr(c.storage), repr(c)):
        assert "shh-secret" not in shown and "AKIA123" not in shown and "tok-secret" not in shown


REFUSED = [
    "storage.key=AKIA-OVERRIDE", "storage.secret=s3cr3t-override", "storage.token=tok-override",
    "+storage.secret=s3cr3t-override", "++storage.key=AKIA-OVERRIDE", "~storage.secret=s3cr3t-override",
    "storage.session_token=tok-override", "storage.aws_secret_access_key=s3cr3t-override",
    "storage.password=s3cr3t-override", "Storage.Secret=s3cr3t-override",
    "storage={key: AKIA-OVERRIDE, secret: s3cr3t-override}", "storage.endpoint_url=http://u:s3cr3t-override@minio:9000",
]


@pytest.mark.parametrize("override", REFUSED)
def test_credential_overrides_are_refused_naming_the_key_and_the_ways_that_work(override):
    with pytest.raises(ConfigError) as err:
        compose(["data=synth_easy", override])
    msg = str(err.value)
    key = override.split("=", 1)[0]
    assert f"refused override {key}" in msg
    assert "s3cr3t-override" not in msg and "AKIA-OVERRIDE" not in msg and "tok-override" not in msg
    for way in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "storage.secret_block=<block name>",
                "job variables"):
        assert way in msg


def test_every_credential_field_of_the_schema_is_refused():
    from infra.config import refused_overrides
    from infra.schema.storage import CREDENTIAL_FIELDS

    fields = {f.name for f in dataclasses_fields(StorageConfig)}
    assert set(CREDENTIAL_FIELDS) <= fields
    assert refused_overrides([f"storage.{f}=x" for f in CREDENTIAL_FIELDS]) == [f"storage.{f}" for f in CREDENTIAL_FIELDS]
    # every other field of the schema is settable (a Secret block is named, not given)
    others = sorted(fields - set(CREDENTIAL_FIELDS))
    assert refused_overrides([f"storage.{f}=x" for f in others]) == []
    cfg = compose(["storage=s3", "storage.secret_block=avs-s3", "storage.endpoint_url=http://minio:9000"])
    assert cfg.storage.secret_block == "avs-s3" and cfg.storage.key is None


def test_credentials_in_config_files_are_refused(tmp_path, monkeypatch):
    import shutil

    import infra.config as config

    conf = tmp_path / "conf"
    shutil.copytree(config.CONF_DIR, conf)
    (conf / "storage" / "leaky.yaml").write_text("endpoint_url: null\nsecret: in-a-file-secret\n")
    monkeypatch.setattr(config, "CONF_DIR", conf)
    with pytest.raises(ConfigError, match="storage.secret set in the config files") as err:
        compose(["storage=leaky"])
    assert "in-a-file-secret" not in str(err.value)


def test_credential_like_values_never_reach_messages():
    from infra.config import redact_overrides

    assert redact_overrides(["storage.secret=abc123", "data.uri=x", "storage.secret_block=avs"]) == \
        ["storage.secret=***", "data.uri=x", "storage.secret_block=avs"]
    with pytest.raises(ConfigError) as err:  # not a schema key, but it looks like a credential: its value is hidden
        compose(["data.api_token=abc123-secret", "storage.no_such=1"])
    assert "abc123-secret" not in str(err.value) and "data.api_token" in str(err.value)


def test_schema_pattern_and_python_check_agree():
    import re

    from infra.config import NO_CREDENTIALS_PATTERN, refused_overrides

    allowed = ["data.uri=s3://bucket/x", "storage=s3", "storage.secret_block=avs-s3", "storage.region=eu-west-1",
               "storage.endpoint_url=http://minio:9000", "preprocess.maskige.source=sam_tiny", "data.synth.seed=3"]
    lower = [o for o in REFUSED if o == o.lower() or "{" in o]
    assert refused_overrides(allowed) == []
    assert all(re.match(NO_CREDENTIALS_PATTERN, o) for o in allowed)
    assert not any(re.match(NO_CREDENTIALS_PATTERN, o) for o in lower)  # what the Prefect server checks


def test_every_group_option_composes():
    conf = Path(__file__).resolve().parents[2] / "conf"
    options = sorted(f"{f.parent.name}={f.stem}" for f in conf.glob("*/*.yaml"))
    assert {"train=synth_cpu", "data=synth_sync", "model=tpavi_pvt_b5"} <= set(options)
    for override in options:
        extra = ["data.uri=/data/avsbench"] if "avsbench" in override else []
        cfg = compose([override, *extra])
        assert cfg is not None
    cfg = compose(["preprocess=sam_dino"])
    assert cfg.preprocess.maskige.source == "sam" and cfg.preprocess.embed.source == "dino"


# -- data.num_frames: null follows the source ------------------------------------------
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], 5),  # synth_hard, s4: synth.num_seconds
        (["data.setting=avss"], 5),  # synth avss: synth.avss_num_seconds (5: v1s / v1m clips)
        (["data.setting=avss", "data.synth.avss_num_seconds=10"], 10),  # v2 clips: T = 10
        (["data.synth.num_seconds=7"], 7),
        (["data=avsbench_s4", "data.uri=/d"], 5),
        (["data=avsbench_ms3", "data.uri=/d"], 5),
        (["data=avsbench_avss", "data.uri=/d"], None),  # per clip, from its label (the reader decides)
        (["data=avsbench_avss", "data.uri=/d", "data.num_frames=10"], 10),  # an int overrides
        (["data=videos", "data.uri=/d"], 5),
        (["data=videos", "data.uri=/d", "data.num_frames=null"], 5),
        (["data.num_frames=8"], 8),
    ],
)
def test_num_frames_null_follows_the_source(overrides, expected):
    assert compose(overrides).data.num_frames == expected


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("data.num_frames=61", "data.num_frames must be in 1..60, or null to follow the source"),
        ("data.num_frames=-1", "data.num_frames must be in 1..60"),
        ("data.num_frames=five", "data.num_frames"),
        ("data.synth.num_seconds=61", "data.num_frames is null, so T follows data.synth (61 seconds)"),
    ],
)
def test_bad_num_frames_is_a_clear_error(override, phrase):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert phrase in str(err.value) and override in str(err.value)


def test_null_num_frames_hashes_deterministically():
    from tasks.preprocess import content_config

    avss = ["data=avsbench_avss", "data.uri=/d"]
    a, b = compose(avss), compose(avss)
    assert content_config(a)["decode"]["num_frames"] is None
    assert config_hash(content_config(a)) == config_hash(content_config(b))
    assert config_hash(content_config(a)) != config_hash(content_config(compose(avss + ["data.num_frames=10"])))
    # S4 keeps the version it had when T was written out as 5
    s4 = compose(["data=avsbench_s4", "data.uri=/d"])
    assert config_hash(content_config(s4)) == config_hash(content_config(compose(["data=avsbench_s4", "data.uri=/d",
                                                                                   "data.num_frames=5"])))


def test_video_default_t_agrees_with_the_video_reader():
    from infra.schema.data import VIDEO_NUM_FRAMES
    from tasks.decode import video

    assert VIDEO_NUM_FRAMES == video.DEFAULT_SECONDS == compose(["data=videos", "data.uri=/d",
                                                                  "data.num_frames=null"]).data.num_frames


@pytest.mark.parametrize("path", [
    "/videos/ünïcödé name with spaces.mp4",  # Hydra's lexer refuses the accents unquoted
    "/v/it's (take 1) ü.mp4",
    "/ü dir\\sub\\",  # backslashes inside and at the end
    "/plain/clip.mp4",
])
def test_a_path_typed_as_in_a_shell_reaches_the_config_unchanged(path):
    assert compose([f"segment.video={path}"]).segment.video == path


def test_values_hydra_reads_unquoted_keep_their_meaning_and_a_wrong_type_names_the_key():
    cfg = compose(["train.lr=2e-4", "data.splits=[train,val]", "model.tpavi_stages=[0,1]", "model=tpavi_tiny"])
    assert cfg.train.lr == 2e-4 and cfg.data.splits == ["train", "val"] and cfg.model.tpavi_stages == [0, 1]
    with pytest.raises(ConfigError, match="train.lr"):
        compose(["train.lr=ünï"])


def test_segment_cli_takes_an_unquoted_unicode_path(tmp_path):
    """README's segment line with a path as a user types it: no Hydra lexer error (exit 2); the run
    gets as far as reading the (missing) checkpoint and says so."""
    import subprocess
    import sys

    video = tmp_path / "ünïcödé name with spaces.mp4"
    out = subprocess.run([sys.executable, "-m", "flows.segment", f"segment.video={video}",
                          f"segment.checkpoint={tmp_path / 'no such checkpoint'}"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert "LexerNoViableAlt" not in out.stderr and "cannot compose" not in out.stderr, out.stderr[-2000:]
    assert out.returncode != 0 and ("no such checkpoint" in out.stderr or str(video) in out.stderr), out.stderr[-2000:]
