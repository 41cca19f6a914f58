"""The storage layer against local disk and a real S3 protocol server (moto)."""
from __future__ import annotations

import logging
import pickle

import pytest

from infra.schema.storage import StorageConfig
from infra.storage import Storage, StorageError, join


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Storage(), str(tmp_path)
    return request.getfixturevalue("s3_storage")


def test_write_read_list_roundtrip(store):
    storage, root = store
    url = join(root, "a dir", "clip é.bin")
    storage.write_bytes(url, b"\x00\x01payload")
    storage.write_text(join(root, "a dir", "b.txt"), "hello")
    assert storage.read_bytes(url) == b"\x00\x01payload"
    assert storage.exists(url) and not storage.exists(join(root, "nothing"))
    assert storage.size(url) == 9
    assert [u.rsplit("/", 1)[-1] for u in storage.walk_files(root)] == ["b.txt", "clip é.bin"]
    with storage.local_path(url) as path, open(path, "rb") as f:
        assert f.read() == b"\x00\x01payload"
    storage.rm(join(root, "a dir"), recursive=True)
    assert storage.walk_files(root) == []


def test_missing_object_is_file_not_found(store):
    storage, root = store
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(join(root, "missing.bin"))


def test_s3_urls_and_put_file(s3_storage, tmp_path):
    storage, bucket = s3_storage
    local = tmp_path / "x.tar"
    local.write_bytes(b"tar bytes")
    storage.put_file(str(local), f"{bucket}/shards/x.tar")
    assert storage.listdir(f"{bucket}/shards") == [f"{bucket}/shards/x.tar"]
    assert storage.glob(f"{bucket}/shards/*.tar") == [f"{bucket}/shards/x.tar"]


def test_storage_pickles_without_its_connections(s3_storage):
    storage, bucket = s3_storage
    storage.write_bytes(f"{bucket}/p.bin", b"1")
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_bytes(f"{bucket}/p.bin") == b"1"


def test_credentials_never_in_repr_or_errors(s3_server, caplog):
    cfg = StorageConfig(endpoint_url=s3_server, key="AKIAVERYSECRETKEY", secret="sup3r-s3cret-value", retries=1)
    storage = Storage(cfg)
    assert "sup3r" not in repr(storage) and "sup3r" not in repr(cfg)
    caplog.set_level(logging.DEBUG)
    with pytest.raises((StorageError, FileNotFoundError)) as err:
        storage.read_bytes("s3://no-such-bucket-here/x")
    assert "sup3r-s3cret-value" not in str(err.value)
    assert "sup3r-s3cret-value" not in caplog.text


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(StorageError, match="unsupported storage scheme 'gs'"):
        Storage().read_bytes("gs://bucket/x")


def test_unreachable_endpoint_fails_clearly_after_retries(s3_storage):
    _, bucket = s3_storage
    # moto accepts any key unless IAM is enforced; an unreachable endpoint is the failure we can make here.
    bad = Storage(StorageConfig(endpoint_url="http://127.0.0.1:9", key="k", secret="s", retries=2, retry_backoff_s=0.01))
    with pytest.raises(StorageError, match="127.0.0.1:9|failed after"):
        bad.read_bytes(f"{bucket}/x")


def test_transient_errors_are_retried_and_others_are_not(tmp_path, monkeypatch):
    storage = Storage(StorageConfig(retries=3, retry_backoff_s=0.0))
    url = str(tmp_path / "clip_1500.bin")  # a 5xx-looking number in a path is no reason to retry
    storage.write_bytes(url, b"ok")
    fs, _ = storage.filesystem(url)
    calls = {"n": 0}
    real = fs.cat_file

    def flaky(path, *a, **k):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionResetError("connection reset by peer")
        return real(path, *a, **k)

    monkeypatch.setattr(fs, "cat_file", flaky)
    assert storage.read_bytes(url) == b"ok" and calls["n"] == 3

    def broken(path, *a, **k):
        calls["n"] += 1
        raise ValueError(f"bad range for {path}")

    calls["n"] = 0
    monkeypatch.setattr(fs, "cat_file", broken)
    with pytest.raises(StorageError, match="after 1 attempt"):
        storage.read_bytes(url)
    assert calls["n"] == 1


def test_environment_credentials_travel_with_a_pickled_storage(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    clone = pickle.loads(pickle.dumps(Storage()))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert clone.cfg.resolved_key() == "from-env-key" and clone.cfg.resolved_secret() == "from-env-secret"
    assert clone.cfg.resolved_endpoint() == "http://minio:9000"


def test_session_token_travels_with_its_key_only(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    opts = Storage().s3_options()
    assert (opts["key"], opts["secret"], opts["token"]) == ("env-key", "env-secret", "env-token")
    clone = pickle.loads(pickle.dumps(Storage()))
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    assert clone.cfg.resolved_token() == "env-token"
    # credentials given in code are one set: the environment's token never joins them
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-token")
    own = Storage(StorageConfig(key="code-key", secret="code-secret"))
    assert own.s3_options()["key"] == "code-key" and "token" not in own.s3_options()
    assert "env-token" not in repr(own) and "code-secret" not in repr(own.cfg)


class _FakeSecret:
    store: dict = {}

    def __init__(self, value):
        self.value = value

    @classmethod
    def load(cls, name):
        if name not in cls.store:
            raise ValueError(f"Unable to find block document named {name} for block type secret")
        return cls(cls.store[name])

    def get(self):
        return self.value


@pytest.fixture()
def fake_secret_blocks(monkeypatch):
    import prefect.blocks.system

    monkeypatch.setattr(prefect.blocks.system, "Secret", _FakeSecret)
    _FakeSecret.store = {}
    return _FakeSecret.store


def test_secret_block_credentials_are_loaded_once_and_travel_resolved(fake_secret_blocks, s3_storage, monkeypatch):
    real, bucket = s3_storage
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    fake_secret_blocks["avs-s3"] = {"key": real.cfg.key, "secret": real.cfg.secret}
    storage = Storage(StorageConfig(endpoint_url=real.cfg.endpoint_url, region="us-east-1", secret_block="avs-s3",
                                    retries=1))
    assert storage.cfg.key == real.cfg.key and storage.cfg.token is None
    storage.write_bytes(f"{bucket}/block.bin", b"ok")
    fake_secret_blocks.clear()  # a Ray worker has no Prefect: the unpickled Storage needs no block
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_bytes(f"{bucket}/block.bin") == b"ok"
    assert real.cfg.secret not in repr(storage) and real.cfg.secret not in repr(clone.cfg)


@pytest.mark.parametrize("value, phrase", [
    ({"key": "AKIA-BLOCK"}, "missing ['secret']"),
    ({"key": "AKIA-BLOCK", "secret": "blk-s3cr3t", "aws_secret_access_key": "blk-s3cr3t"}, "unknown ['aws_secret_access_key']"),
    ("blk-s3cr3t", "must be a JSON object"),
    (None, "no Prefect Secret block of that name"),
])
def test_a_bad_secret_block_is_a_clear_error_without_its_values(fake_secret_blocks, value, phrase):
    if value is not None:
        fake_secret_blocks["avs-s3"] = value
    with pytest.raises(StorageError) as err:
        Storage(StorageConfig(secret_block="avs-s3"))
    assert phrase in str(err.value) and "storage.secret_block='avs-s3'" in str(err.value)
    assert "blk-s3cr3t" not in str(err.value) and "AKIA-BLOCK" not in str(err.value)
