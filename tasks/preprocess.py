"""Preprocess: a source of clips -> a versioned WebDataset shard data set, with Ray Data.

    list -> decode -> Maskige -> embed -> write shards -> mine pairs -> manifest

Decoding runs as Ray tasks, Maskige and embedding in Ray actor pools (one model per
actor, GPU actors when the cluster has GPUs), shards are written one Ray task per
shard. A data set version is a hash of the source listing and of every setting that
changes the bytes written, so:

- the same inputs and config find the finished manifest and write nothing;
- after a crash, shards already complete (their sidecar ``.json`` is written after the
  tar) are kept and only the missing ones are built;
- a changed config is a new version beside the old one, never over it.

The manifest is written last: a reader never sees a half-written data set.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from infra.config import Config, config_hash, to_dict
from infra.storage import Storage, absolute, join, require_shared
from tasks.clip import Clip, ClipRef, Reject
from tasks.decode.logmel import DEFAULT_FRAMING
from tasks.decode.registry import source
from tasks.decode.sources import decode_or_reject
from tasks.enrich.pairs import mine_pairs, write_pairs
from tasks.shards.manifest import Manifest, read_manifest, write_manifest
from tasks.shards.schema import SCHEMA_VERSION, clip_to_sample, read_shard, sample_key, shard_name, write_shard

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.parquet"


# -- listing ---------------------------------------------------------------------------
def list_source(cfg: Config, storage: Storage, root: str | None = None) -> tuple[list[ClipRef], list[Reject]]:
    """ClipRefs of the configured source, sorted by clip id, and the rows that could not be listed."""
    data = cfg.data
    root = absolute(root or data.uri)
    refs, rejects = source(data.source).list(root, data, storage)
    refs = sorted(refs, key=lambda r: r.clip_id)
    if data.max_clips is not None:
        refs = refs[: data.max_clips]
    return refs, rejects


def listing_hash(refs: list[ClipRef]) -> str:
    h = hashlib.sha256()
    for r in refs:
        h.update(json.dumps([r.clip_id, r.kind, r.uri, sorted(r.members.items())], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def content_config(cfg: Config) -> dict[str, Any]:
    """The settings that decide the bytes of a data set (not where it goes, nor how parallel)."""
    p = cfg.preprocess
    return {
        "schema": SCHEMA_VERSION,
        "decode": {**{k: getattr(cfg.data, k) for k in ("setting", "num_frames", "frame_size")},
                   "logmel_framing": DEFAULT_FRAMING},
        "maskige": to_dict(p.maskige),
        "embed": to_dict(p.embed),
        "shards": to_dict(p.shards),
        "pairs": to_dict(p.pairs),
    }


def dataset_version(cfg: Config, refs: list[ClipRef]) -> str:
    """Hash of the source listing and of the content config: same inputs, same version."""
    decides = {"listing": listing_hash(refs), **content_config(cfg)}
    return "v-" + hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ShardPlan:
    index: int
    name: str
    refs: list[ClipRef]


def plan_shards(refs: list[ClipRef], samples_per_shard: int) -> list[ShardPlan]:
    """Group clips into shards, one split per shard, by sorted sample key: the same listing
    always gives the same shards, and a loader of one split skips the others' shards."""
    plans: list[ShardPlan] = []
    for split in sorted({r.split for r in refs}):
        ordered = sorted((r for r in refs if r.split == split), key=lambda r: sample_key(r.clip_id))
        for s in range(0, len(ordered), samples_per_shard):
            plans.append(ShardPlan(len(plans), shard_name(len(plans)), ordered[s : s + samples_per_shard]))
    return plans


def _sidecar_url(ds_url: str, name: str) -> str:
    return join(ds_url, "shards", name.replace(".tar", ".json"))


def read_sidecar(storage: Storage, ds_url: str, name: str) -> dict | None:
    url = _sidecar_url(ds_url, name)
    if not storage.exists(url):
        return None
    return json.loads(storage.read_text(url))


# -- Ray Data stages -------------------------------------------------------------------
# One row is one shard: its clips travel together from decoding to the tar, so no
# shuffle is needed, SAM sees a whole shard's frames at once (its image encoder batches
# across them), and a finished row is a finished shard.
@dataclass
class ClipWork:
    """One clip on its way through the stages."""

    shard: int
    clip_id: str
    clip: Clip | None = None
    reject: dict | None = None
    maskige: np.ndarray | None = None  # uint8 [T, H, W]
    maskige_info: list[dict] | None = None
    dino: np.ndarray | None = None  # float16 [T, D]
    provenance: dict = field(default_factory=dict)

    def fail(self, stage: str, e: BaseException) -> None:
        self.reject = Reject(self.clip_id, self.clip.source_uri if self.clip else "", stage, _reason(e)).to_dict()
        self.clip = None


def _row(shard: int, works: list[ClipWork]) -> dict[str, Any]:
    # Pickled into one binary column, so that Arrow never tries to turn clips, dicts or
    # ragged arrays into columns of its own.
    return {"shard": shard, "works": pickle.dumps(works, protocol=5)}


def decode_shard(row: dict[str, Any], storage: Storage, num_frames: int | None, frame_size: int,
                 deadline_s: float | None = None) -> dict[str, Any]:
    """Ray task: decode every clip of one shard; a clip that fails becomes a Reject.
    num_frames None (data.num_frames null for AVSBench AVSS): each clip's own T, from its label."""
    works = []
    for ref_json in json.loads(row["refs"]):
        ref = ClipRef(**ref_json)
        out = decode_or_reject(ref, storage, num_frames, frame_size, deadline_s)
        if isinstance(out, Reject):
            works.append(ClipWork(row["shard"], ref.clip_id, reject=out.to_dict()))
        else:
            works.append(ClipWork(row["shard"], ref.clip_id, clip=out))
    return _row(row["shard"], works)


class EnrichStage:
    """Ray actor: one mask generator and one embedding model per actor (GPU actors when the
    cluster has GPUs). Adds a Maskige and an embedding per frame to every clip of a shard."""

    def __init__(self, maskige_cfg, embed_cfg, storage: Storage):
        from tasks.enrich.embed import FrameEmbedder
        from tasks.enrich.maskige import MaskigeMaker

        self.maker = MaskigeMaker(maskige_cfg, storage)
        self.embedder = FrameEmbedder(embed_cfg, storage)
        self.provenance = {"maskige": self.maker.provenance(), "embed": self.embedder.provenance()}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        works = pickle.loads(row["works"])
        self.add_maskiges(works)
        self.add_embeddings(works)
        return _row(row["shard"], works)

    def add_maskiges(self, works: list[ClipWork]) -> None:
        live = [w for w in works if w.clip is not None]
        if not live:
            return
        try:  # one call for the whole shard lets SAM batch its image encoder across clips
            maskiges, infos = self.maker(np.concatenate([w.clip.frames for w in live]))
            at = 0
            for w in live:
                t = w.clip.num_frames
                w.maskige, w.maskige_info = np.asarray(maskiges[at : at + t]), list(infos[at : at + t])
                at += t
        except Exception:  # noqa: BLE001 - find which clip fails, keep the others
            for w in live:
                try:
                    maskiges, infos = self.maker(w.clip.frames)
                    w.maskige, w.maskige_info = np.asarray(maskiges), list(infos)
                except Exception as e:  # noqa: BLE001
                    w.fail("maskige", e)
        for w in live:
            w.provenance["maskige"] = self.provenance["maskige"]

    def add_embeddings(self, works: list[ClipWork]) -> None:
        for w in works:
            if w.clip is None:
                continue
            try:
                w.dino = self.embedder(w.clip.frames).astype(np.float16)
                w.provenance["embed"] = self.provenance["embed"]
            except Exception as e:  # noqa: BLE001
                w.fail("embed", e)


def write_group(works: list[ClipWork], storage: Storage, ds_url: str, shards_cfg, config_digest: str) -> dict:
    """Write one shard (the clips of one plan entry) and then its sidecar, which marks it done."""
    index = works[0].shard
    name = shard_name(index)
    rejects = sorted((w.reject for w in works if w.reject is not None), key=lambda r: r["clip_id"])
    provenance = None
    samples = []
    for w in sorted((w for w in works if w.clip is not None), key=lambda w: sample_key(w.clip_id)):
        provenance = {**w.provenance, "config_hash": config_digest}
        capped = int(sum(info.get("capped", 0) for info in (w.maskige_info or [])))
        w.clip.meta = {**w.clip.meta, "maskige_capped_masks": capped}
        samples.append(clip_to_sample(w.clip, maskiges=w.maskige, dino=w.dino, provenance=provenance,
                                      frame_format=shards_cfg.frame_format, jpeg_quality=shards_cfg.jpeg_quality))
    info = write_shard(samples, join(ds_url, "shards", name), storage) if samples else None
    sidecar = {"index": index, "shard": info.manifest_entry() if info else None, "rejects": rejects,
               "provenance": provenance, "clips": len(works)}
    storage.write_text(_sidecar_url(ds_url, name), json.dumps(sidecar, sort_keys=True))
    return sidecar


def write_shard_row(row: dict[str, Any], storage: Storage, ds_url: str, shards_cfg, config_digest: str) -> dict:
    """Ray task: write one shard; hand back its sidecar and embeddings (for pair mining)."""
    works: list[ClipWork] = pickle.loads(row["works"])
    sidecar = write_group(works, storage, ds_url, shards_cfg, config_digest)
    embeddings = sorted((sample_key(w.clip_id), w.clip_id, w.dino) for w in works if w.clip is not None)
    return {"shard": row["shard"], "sidecar": json.dumps(sidecar), "embeddings": pickle.dumps(embeddings, protocol=5)}


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def build_shards(plans: list[ShardPlan], cfg: Config, storage: Storage, ds_url: str,
                 progress: bool = True) -> tuple[list[dict], dict[int, list]]:
    """Run the Ray Data pipeline over the planned shards; returns their sidecars and embeddings."""
    import ray

    from infra.ray_runtime import cluster_has_gpus

    p = cfg.preprocess
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar below, a tick per shard
    ctx.raise_original_map_exception = True  # a failed shard raises our error (naming its URI), not Ray Data's wrapper
    require_shared(ds_url, "preprocess.output")
    resources = ray.cluster_resources()
    gpus = p.gpus_per_actor if p.gpus_per_actor is not None else (1.0 if cluster_has_gpus() else 0.0)
    if gpus > resources.get("GPU", 0):
        raise ValueError(f"preprocess.gpus_per_actor={gpus} but the Ray cluster has {resources.get('GPU', 0)} GPUs")
    if p.enrich_actors:
        actors = p.enrich_actors
    elif gpus:
        actors = max(1, int(resources.get("GPU", 0) / gpus))  # e.g. two actors per GPU at 0.5
    else:
        actors = max(1, int(resources.get("CPU", 1)))
    actors = min(actors, len(plans))  # never more models than shards to enrich
    items = [{"shard": plan.index, "refs": json.dumps([asdict(r) for r in plan.refs])} for plan in plans]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(
        decode_shard,
        fn_kwargs={"storage": storage, "num_frames": cfg.data.num_frames, "frame_size": cfg.data.frame_size,
                   "deadline_s": p.decode_deadline_s},
        num_cpus=p.task_cpus,
    )
    ds = ds.map(
        EnrichStage,
        fn_constructor_kwargs={"maskige_cfg": p.maskige, "embed_cfg": p.embed, "storage": storage},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=p.actor_cpus,
        num_gpus=gpus,
    )
    ds = ds.map(
        write_shard_row,
        fn_kwargs={"storage": storage, "ds_url": ds_url, "shards_cfg": p.shards,
                   "config_digest": config_hash(content_config(cfg))},
        num_cpus=p.task_cpus,
    )
    sidecars, embeddings = [], {}
    clips = sum(len(plan.refs) for plan in plans)
    with tqdm(total=clips, desc="preprocess", unit="clip", disable=not progress, mininterval=2.0) as bar:
        for row in ds.iter_rows():  # a row per finished shard
            sidecar = json.loads(row["sidecar"])
            sidecars.append(sidecar)
            embeddings[int(row["shard"])] = pickle.loads(row["embeddings"])
            bar.update(len(next(plan.refs for plan in plans if plan.index == sidecar["index"])))
    return sidecars, embeddings


# -- pairs -----------------------------------------------------------------------------
def shard_embeddings(url: str, storage: Storage) -> list[tuple[str, str, np.ndarray]]:
    """(key, clip id, dino [T, D]) of every sample of a written shard, sorted by key."""
    out = []
    for sample in read_shard(url, storage):
        if "dino.npy" in sample:
            meta = json.loads(sample["meta.json"])
            out.append((sample["__key__"], meta["clip_id"], np.load(io.BytesIO(sample["dino.npy"]))))
    return sorted(out, key=lambda e: e[0])


def mine_dataset_pairs(embeddings: dict[str, list[tuple[str, str, np.ndarray]]], cfg: Config, storage: Storage,
                       ds_url: str) -> dict | None:
    """k-NN pairs over the frame embeddings of each split (never across splits: a training
    frame must not be paired with evaluation clips), written as pairs.parquet beside the shards."""
    import pandas as pd

    frames, how = [], {}
    for split in sorted(embeddings):
        keys, clip_ids, rows = [], [], []
        for key, clip_id, emb in embeddings[split]:
            for t in range(emb.shape[0]):
                keys.append(f"{key}/{t:03d}")
                clip_ids.append(clip_id)
            rows.append(np.asarray(emb, dtype=np.float32))
        if rows:
            df = mine_pairs(keys, clip_ids, np.concatenate(rows), cfg.preprocess.pairs)
            df.insert(1, "split", split)
            frames.append(df)
            how[split] = {k: df.attrs[k] for k in ("method", "recall_at_k", "nlist", "nprobe") if k in df.attrs}
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    keys = df["key"].tolist()
    url = join(ds_url, PAIRS_FILE)
    write_pairs(df, url, storage)
    return {"name": PAIRS_FILE, "sha256": hashlib.sha256(storage.read_bytes(url)).hexdigest(), "frames": len(keys),
            "mining": how}


# -- the whole step --------------------------------------------------------------------
@dataclass
class PreprocessResult:
    dataset_url: str
    version: str
    up_to_date: bool  # True: the finished data set was found, nothing was written
    manifest: Manifest
    shards_built: int = 0
    shards_reused: int = 0
    seconds: float = 0.0
    stage_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "dataset_url": self.dataset_url,
            "version": self.version,
            "up_to_date": self.up_to_date,
            "samples": m.num_samples,
            "shards": len(m.shards),
            "shards_built": self.shards_built,
            "shards_reused": self.shards_reused,
            "rejects": len(m.rejects),
            "rejects_by_stage": dict(Counter(r["stage"] for r in m.rejects)),
            "seconds": round(self.seconds, 2),
            "clips_per_s": round(self.stage_counts.get("clips", 0) / self.seconds, 3) if self.seconds else None,
        }


def check_checkpoints(cfg: Config, storage: Storage) -> None:
    """Fail before any work when a configured checkpoint is not there."""
    p = cfg.preprocess
    wanted = [
        ("preprocess.maskige.sam.checkpoint", p.maskige.sam.checkpoint if p.maskige.source == "sam" else None),
        ("preprocess.embed.checkpoint", p.embed.checkpoint if p.embed.source in ("dino", "tiny_backbone") else None),
    ]
    for key, uri in wanted:
        if uri and not storage.exists(uri):
            raise FileNotFoundError(f"{key}: checkpoint {uri} does not exist (or cannot be seen with these credentials)")
    from tasks.enrich.embed import source_warning as embed_source_warning
    from tasks.enrich.maskige import source_warning as maskige_source_warning

    # Said here, once, on the driver: the enrichment actors say it too, in their own logs.
    for warning in (maskige_source_warning(p.maskige), embed_source_warning(p.embed)):
        if warning:
            log.warning(warning)


def run_preprocess(cfg: Config, storage: Storage, source_root: str | None = None, progress: bool = True) -> PreprocessResult:
    """Turn the configured source into a shard data set (see module docstring)."""
    from infra.ray_runtime import init_ray

    start = time.perf_counter()
    check_checkpoints(cfg, storage)
    refs, list_rejects = list_source(cfg, storage, source_root)
    if not refs:
        raise FileNotFoundError(f"no clips listed under {source_root or cfg.data.uri} (splits {cfg.data.splits}; "
                                f"{len(list_rejects)} rejected at listing: {[r.reason for r in list_rejects[:3]]})")
    version = dataset_version(cfg, refs)
    ds_url = join(absolute(cfg.preprocess.output), cfg.preprocess.name, version)
    done = read_manifest(ds_url, storage)
    if done is not None:
        log.info("data set %s is complete (manifest found): nothing to do", ds_url)
        return PreprocessResult(ds_url, version, True, done, seconds=time.perf_counter() - start)

    plans = plan_shards(refs, cfg.preprocess.shards.samples_per_shard)
    sidecars = {p.index: read_sidecar(storage, ds_url, p.name) for p in plans}
    todo = [p for p in plans if sidecars[p.index] is None]
    log.info(
        "%s: %d clips listed (%d rejected at listing) -> %d shards, %d already complete, %d to build",
        ds_url, len(refs), len(list_rejects), len(plans), len(plans) - len(todo), len(todo),
    )
    embeddings: dict[int, list] = {}
    if todo:
        init_ray(cfg.cluster)
        built, embeddings = build_shards(todo, cfg, storage, ds_url, progress=progress)
        for sidecar in built:
            sidecars[sidecar["index"]] = sidecar
    missing = [p.name for p in plans if sidecars.get(p.index) is None]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) were not written: {missing[:5]}; run again to finish them")

    ordered = [sidecars[p.index] for p in plans]
    shards = [s["shard"] for s in ordered if s["shard"] is not None]
    rejects = sorted([r.to_dict() for r in list_rejects] + [r for s in ordered for r in s["rejects"]],
                     key=lambda r: (r["clip_id"], r["stage"]))
    provenance = next((s["provenance"] for s in ordered if s["provenance"]), {}) or {}
    for s in ordered:  # shards finished by an earlier run: read their embeddings back
        if s["shard"] is not None and s["index"] not in embeddings:
            embeddings[s["index"]] = shard_embeddings(join(ds_url, "shards", s["shard"]["name"]), storage)
    by_split: dict[str, list] = {}
    for plan in plans:  # a shard holds one split
        by_split.setdefault(plan.refs[0].split, []).extend(embeddings.get(plan.index, []))
    pairs = mine_dataset_pairs(by_split, cfg, storage, ds_url)
    manifest = Manifest(
        dataset_version=version,
        config_hash=config_hash(content_config(cfg)),
        source={"uri": source_root or cfg.data.uri, "kind": cfg.data.source, "listing_hash": listing_hash(refs),
                "clips_listed": len(refs)},
        shards=shards,
        num_samples=sum(s["count"] for s in shards),
        rejects=rejects,
        provenance={**provenance, "config": content_config(cfg)},
        pairs=pairs,
        stats={"rejects_by_stage": dict(sorted(Counter(r["stage"] for r in rejects).items()))},
    )
    write_manifest(manifest, ds_url, storage)  # last: the data set now exists
    seconds = time.perf_counter() - start
    built = len(todo)
    by_stage = Counter(r["stage"] for r in rejects)
    clips_built = sum(len(p.refs) for p in todo)
    passed = len(refs)
    stages = []
    for stage in ("decode", "maskige", "embed"):
        stages.append(f"{stage}: {passed - by_stage.get(stage, 0)}/{passed} ok")
        passed -= by_stage.get(stage, 0)
    log.info("listed %d clips (%d rejected at listing) | %s | written: %d samples in %d shards (%d built, %d reused)",
             len(refs) + len(list_rejects), len(list_rejects), " | ".join(stages), manifest.num_samples,
             len(shards), built, len(plans) - built)
    log.info("%s complete in %.1f s: %.2f clips/s built, %d rejects (reasons in manifest.json)", ds_url, seconds,
             clips_built / seconds if seconds else 0.0, len(rejects))
    return PreprocessResult(ds_url, version, False, manifest, shards_built=built, shards_reused=len(plans) - built,
                            seconds=seconds, stage_counts={"clips": clips_built})
