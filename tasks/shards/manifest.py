"""manifest.json: the table of contents of a shard data set, written last.

A data set folder (local or s3://) holds ``manifest.json``, the shards under
``shards/`` (``shards/shard-NNNNNN.tar``; the folder is recorded as ``shard_dir``) and,
optionally, ``pairs.parquet`` beside the manifest. The manifest is written after every shard is
in place, in one atomic write, so a reader that finds it finds a complete data set; a
folder without one is unfinished. It records each shard's sample count, size and sha256,
the config hash the data set was built with, the source listing hash, the rejects and
the provenance of each enrichment.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from infra.storage import Storage, join
from tasks.clip import Reject
from tasks.shards.schema import SCHEMA_VERSION, ShardInfo

MANIFEST_NAME = "manifest.json"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Manifest:
    """What a data set holds. shards: [{name, count, sha256, nbytes, splits}];
    rejects: [Reject.to_dict()]; pairs: {"name": ..., "sha256": ...} or None."""

    dataset_version: str
    config_hash: str
    source: dict[str, Any] = field(default_factory=dict)  # {"uri": ..., "listing_hash": ...}
    shards: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    num_samples: int = -1  # -1: the sum of the shards' counts
    shard_dir: str = "shards"  # folder of the shards, relative to the data set ("" = beside the manifest)
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        self.shards = [s.manifest_entry() if isinstance(s, ShardInfo) else dict(s) for s in self.shards]
        self.rejects = [r.to_dict() if isinstance(r, Reject) else dict(r) for r in self.rejects]
        for s in self.shards:
            missing = {"name", "count", "sha256", "nbytes"} - set(s)
            if missing:
                raise ValueError(f"manifest shard entry {s.get('name', s)!r} lacks {sorted(missing)}")
        names = [s["name"] for s in self.shards]
        if len(set(names)) != len(names):
            raise ValueError(f"manifest lists a shard twice: {sorted(n for n in names if names.count(n) > 1)}")
        total = sum(int(s["count"]) for s in self.shards)
        if self.num_samples < 0:
            self.num_samples = total
        elif self.num_samples != total:
            raise ValueError(f"manifest num_samples={self.num_samples} but its shards hold {total} samples")

    def shard_url(self, dataset_url: str, name: str) -> str:
        """Where shard name of this data set lives."""
        return join(dataset_url, self.shard_dir, name) if self.shard_dir else join(dataset_url, name)

    def shard_urls(self, dataset_url: str) -> list[str]:
        """URLs of every shard, sorted by name."""
        return [self.shard_url(dataset_url, s["name"]) for s in sorted(self.shards, key=lambda s: s["name"])]

    def split_counts(self) -> dict[str, int]:
        """Samples per split, summed over the shards (from each shard's "splits")."""
        out: dict[str, int] = {}
        for s in self.shards:
            for split, n in s.get("splits", {}).items():
                out[split] = out.get(split, 0) + int(n)
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, lists in a canonical order (shards by name, rejects sorted), so two runs
        over the same input give the same dict whatever order their workers finished in."""
        d = asdict(self)
        d["shards"] = sorted(d["shards"], key=lambda s: s["name"])
        d["rejects"] = sorted(d["rejects"], key=lambda r: (r.get("stage", ""), r.get("clip_id", ""),
                                                           r.get("source_uri", ""), r.get("reason", "")))
        return d

    def comparable(self) -> dict[str, Any]:
        """to_dict() without the timestamp: equal for equal data sets."""
        d = self.to_dict()
        d.pop("created_at")
        return d

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, canonical list order); only created_at varies."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema version {version!r} is not readable by this code (reads <= {SCHEMA_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"manifest has unknown fields {sorted(unknown)}")
        for name in ("dataset_version", "config_hash"):
            if name not in d:
                raise ValueError(f"manifest lacks {name!r}")
        return cls(**d)


def manifest_url(dataset_url: str) -> str:
    return join(dataset_url, MANIFEST_NAME)


def write_manifest(manifest: Manifest, dataset_url: str, storage: Storage) -> str:
    """Write manifest.json into dataset_url in one atomic write; call it after every shard is
    written. Returns its URL."""
    url = manifest_url(dataset_url)
    storage.write_text(url, manifest.to_json())
    return url


def read_manifest(dataset_url: str, storage: Storage) -> Manifest | None:
    """The manifest of dataset_url, or None when there is none (an unfinished data set)."""
    url = manifest_url(dataset_url)
    if not storage.exists(url):
        return None
    try:
        d = json.loads(storage.read_text(url))
    except json.JSONDecodeError as e:
        raise ValueError(f"{url} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{url} must hold a JSON object, got {type(d).__name__}")
    try:
        return Manifest.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{url}: {e}") from None


def verify(dataset_url: str, storage: Storage, checksums: bool = True) -> list[str]:
    """Problems with the data set at dataset_url, [] when every listed shard (and the pairs
    file, if listed) exists with its recorded size and, when checksums, sha256."""
    manifest = read_manifest(dataset_url, storage)
    if manifest is None:
        return [f"no {MANIFEST_NAME} at {dataset_url}: the data set is missing or unfinished"]
    listed = [(manifest.shard_url(dataset_url, s["name"]), s) for s in manifest.shards]
    if manifest.pairs and manifest.pairs.get("name"):
        listed.append((join(dataset_url, manifest.pairs["name"]), manifest.pairs))
    problems: list[str] = []
    for url, entry in listed:
        if not storage.exists(url):
            problems.append(f"{entry['name']}: missing ({url})")
            continue
        if entry.get("nbytes") is not None:
            size = storage.size(url)
            if size != int(entry["nbytes"]):
                problems.append(f"{entry['name']}: {size} bytes, manifest says {entry['nbytes']}")
                continue
        if checksums and entry.get("sha256"):
            digest = storage.sha256(url)
            if digest != entry["sha256"]:
                problems.append(f"{entry['name']}: sha256 {digest[:12]}…, manifest says {entry['sha256'][:12]}…")
    return problems
