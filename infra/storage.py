"""One storage layer for every path in the project: local paths and s3:// URIs alike.

Everything that reads or writes goes through :class:`Storage`, built from a
:class:`~infra.schema.storage.StorageConfig`. Credentials come from the usual AWS environment
variables, from the Prefect Secret block that ``storage.secret_block`` names (loaded when the
Storage is built, see :func:`load_secret_block`), or from a StorageConfig built in code; they
are kept out of ``repr`` and logs. A Storage is picklable, so Ray tasks and actors receive it as
an argument, its credentials resolved (workers need neither the driver's environment nor Prefect).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec

from infra.schema.storage import StorageConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors worth retrying: the network, throttling, a server hiccup. Missing files and
# denied access are not transient and surface at once. Matched against the exception's
# type names and its error code, never against the message (which holds the path).
_TRANSIENT_TYPES = ("Timeout", "ConnectionError", "ConnectionReset", "EndpointConnectionError", "ServerDisconnected",
                    "ClientOSError", "IncompleteRead", "ReadTimeout", "ConnectTimeout")
_TRANSIENT_CODES = ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "500", "502", "503", "504")


def is_transient(e: BaseException) -> bool:
    """True for network failures, throttling and 5xx answers."""
    for cls in type(e).__mro__:
        if any(t in cls.__name__ for t in _TRANSIENT_TYPES):
            return True
    code = str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) if hasattr(e, "response") else ""
    return code in _TRANSIENT_CODES or (e.__cause__ is not None and is_transient(e.__cause__))


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def absolute(url: str) -> str:
    """A local path made absolute here (on the driver), so that Ray workers with another
    working directory write to the same place; URIs unchanged."""
    if is_remote(url):
        return url
    return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)


def require_shared(url: str, what: str) -> None:
    """Refuse a local path when Ray spans several nodes: workers elsewhere cannot see it."""
    import ray

    if not is_remote(url) and ray.is_initialized() and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
        raise StorageError(f"{what} is the local path {url!r}, but the Ray cluster has several nodes: "
                           "use shared storage (s3://...)")


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and URIs alike."""
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def redact(text: str, cfg: StorageConfig) -> str:
    """Replace any credential of cfg that appears in text."""
    for secret in (cfg.resolved_key(), cfg.resolved_secret(), cfg.resolved_token()):
        if secret:
            text = text.replace(secret, "***")
    return text


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the cause (credentials redacted)."""


_BLOCK_FIELDS = ("key", "secret", "token")


def load_secret_block(name: str) -> dict[str, str | None]:
    """Credentials from the Prefect Secret block `name`, whose value is one JSON object
    {"key": ..., "secret": ..., "token": ...} (token optional). Loaded at run time through the
    Prefect API, so that only the block's name is ever a flow parameter. Errors name the block
    and the fields, never a value."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError as e:  # Prefect: "Unable to find block document named ..."
        raise StorageError(f"storage.secret_block={name!r}: no Prefect Secret block of that name "
                           f"could be loaded ({type(e).__name__}); create it with "
                           f"Secret(value={{'key': ..., 'secret': ...}}).save({name!r})") from None
    if not isinstance(value, dict):
        raise StorageError(f"storage.secret_block={name!r}: the Secret block's value must be a JSON object "
                           f"with fields {list(_BLOCK_FIELDS)} (token optional), got a {type(value).__name__}")
    unknown = sorted(set(value) - set(_BLOCK_FIELDS))
    missing = [f for f in ("key", "secret") if not value.get(f)]
    if unknown or missing:
        raise StorageError(f"storage.secret_block={name!r}: the Secret block's JSON object needs fields "
                           f"'key' and 'secret' (and optionally 'token'); missing {missing}, unknown {unknown}")
    return {f: (str(value[f]) if value.get(f) else None) for f in _BLOCK_FIELDS}


class Storage:
    """fsspec filesystems for local paths and s3:// URIs, with retries for transient errors."""

    def __init__(self, cfg: StorageConfig | None = None):
        cfg = cfg or StorageConfig()
        if cfg.secret_block and not cfg.key:  # resolved once, here; then it travels like any credential
            cfg = dataclasses.replace(cfg, **load_secret_block(cfg.secret_block))
        self.cfg = cfg
        self._fs: dict[str, fsspec.AbstractFileSystem] = {}

    def __repr__(self) -> str:  # never show credentials
        return f"Storage(endpoint_url={self.cfg.endpoint_url!r}, region={self.cfg.region!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Filesystems hold sockets and locks: rebuild them where unpickled. Credentials and
        # endpoint found in this process's environment (or its Secret block) travel resolved,
        # because a Ray worker on another node has neither the driver's environment nor Prefect.
        c = self.cfg
        resolved = dataclasses.replace(c, key=c.resolved_key(), secret=c.resolved_secret(), token=c.resolved_token(),
                                       endpoint_url=c.resolved_endpoint())
        return {"cfg": resolved}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = state["cfg"]
        self._fs = {}

    # -- filesystems -----------------------------------------------------------------
    def s3_options(self) -> dict[str, Any]:
        """Options for s3fs (also what Ray Data and pyarrow need to reach the same bucket)."""
        c = self.cfg
        opts: dict[str, Any] = {"anon": c.anon}
        if c.resolved_key():
            opts["key"] = c.resolved_key()
            opts["secret"] = c.resolved_secret()
            if c.resolved_token():
                opts["token"] = c.resolved_token()
        client_kwargs: dict[str, Any] = {}
        if c.resolved_endpoint():
            client_kwargs["endpoint_url"] = c.resolved_endpoint()
        if c.region:
            client_kwargs["region_name"] = c.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        opts["config_kwargs"] = {"retries": {"max_attempts": max(1, c.retries), "mode": "standard"}}
        return opts

    def filesystem(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem for url and the path inside it."""
        if is_remote(url):
            scheme, rest = url.split("://", 1)
            if scheme not in ("s3", "s3a"):
                raise StorageError(f"unsupported storage scheme {scheme!r} in {url!r}: use a local path or s3://")
            if "s3" not in self._fs:
                self._fs["s3"] = fsspec.filesystem("s3", skip_instance_cache=True, **self.s3_options())
            return self._fs["s3"], rest
        if url.startswith("file://"):
            url = url[len("file://"):]
        if "local" not in self._fs:
            self._fs["local"] = fsspec.filesystem("file")
        return self._fs["local"], os.path.abspath(url)

    def pyarrow_filesystem(self, url: str):
        """A pyarrow filesystem and path for url, for Ray Data readers and writers."""
        import pyarrow.fs as pafs

        fs, path = self.filesystem(url)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    # -- retries ---------------------------------------------------------------------
    def _retry(self, what: str, url: str, fn: Callable[[], T]) -> T:
        attempts = max(1, self.cfg.retries)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except FileNotFoundError as e:
                if what in ("write", "upload"):  # nothing to find when writing: the bucket is missing
                    raise StorageError(f"{what} {url} failed: {redact(str(e), self.cfg)} "
                                       "(does the bucket exist?)") from None
                raise
            except PermissionError as e:
                raise StorageError(f"access denied to {url}: {redact(str(e), self.cfg)}") from None
            except Exception as e:  # noqa: BLE001 - classify, then retry or raise
                msg = redact(f"{type(e).__name__}: {e}", self.cfg)
                if not is_transient(e) or attempt == attempts:
                    raise StorageError(f"{what} {url} failed after {attempt} attempt(s): {msg}") from None
                delay = self.cfg.retry_backoff_s * 2 ** (attempt - 1)
                log.warning("%s %s: transient error (%s), retry %d/%d in %.1fs", what, url, msg, attempt, attempts, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- operations ------------------------------------------------------------------
    def open(self, url: str, mode: str = "rb", **kwargs: Any):
        fs, path = self.filesystem(url)
        if "w" in mode and not is_remote(url):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return fs.open(path, mode, **kwargs)

    def read_bytes(self, url: str) -> bytes:
        fs, path = self.filesystem(url)
        return self._retry("read", url, lambda: fs.cat_file(path))

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write a whole object. Local files appear atomically (temp file + rename); an S3
        object is only visible once its upload completes, so readers never see half a file."""
        fs, path = self.filesystem(url)
        if is_remote(url):
            self._retry("write", url, lambda: fs.pipe_file(path, data))
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write_text(self, url: str, text: str) -> None:
        self.write_bytes(url, text.encode("utf-8"))

    def put_file(self, local_path: str, url: str) -> None:
        """Copy a local file to url (atomically, as write_bytes)."""
        fs, path = self.filesystem(url)
        if is_remote(url):
            self._retry("upload", url, lambda: fs.put_file(local_path, path))
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def sha256(self, url: str) -> str:
        """sha256 hex digest of a stored file, read in 8 MiB chunks (shards and checkpoints are large)."""
        h = hashlib.sha256()
        with self.open(url, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()

    def exists(self, url: str) -> bool:
        fs, path = self.filesystem(url)
        return bool(self._retry("stat", url, lambda: fs.exists(path)))

    def size(self, url: str) -> int:
        fs, path = self.filesystem(url)
        return int(self._retry("stat", url, lambda: fs.size(path)))

    def listdir(self, url: str) -> list[str]:
        """Full URIs of the entries directly under url, sorted."""
        fs, path = self.filesystem(url)
        try:
            entries = self._retry("list", url, lambda: fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
        return sorted(self._to_url(url, e) for e in entries)

    def glob(self, url_pattern: str) -> list[str]:
        fs, path = self.filesystem(url_pattern)
        return sorted(self._to_url(url_pattern, p) for p in self._retry("glob", url_pattern, lambda: fs.glob(path)))

    def walk_files(self, url: str) -> list[str]:
        """Every file below url, recursively, as full URIs, sorted."""
        fs, path = self.filesystem(url)
        try:
            found = self._retry("list", url, lambda: fs.find(path))
        except FileNotFoundError:
            return []
        return sorted(self._to_url(url, p) for p in found)

    def makedirs(self, url: str) -> None:
        fs, path = self.filesystem(url)
        if not is_remote(url):
            fs.makedirs(path, exist_ok=True)

    def rm(self, url: str, recursive: bool = False) -> None:
        fs, path = self.filesystem(url)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    @contextlib.contextmanager
    def local_path(self, url: str, suffix: str = "") -> Iterator[str]:
        """A local file path holding url's bytes: the path itself when local, else a temp copy."""
        if not is_remote(url):
            yield self.filesystem(url)[1]
            return
        fd, tmp = tempfile.mkstemp(suffix=suffix or os.path.splitext(url)[1])
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.read_bytes(url))
            yield tmp
        finally:
            os.unlink(tmp)

    @staticmethod
    def _to_url(like: str, path: str) -> str:
        if is_remote(like):
            return like.split("://", 1)[0] + "://" + path.lstrip("/")
        return path
