"""How the data a checkpoint was trained on was preprocessed, so that a new video can be made
into model input the same way.

The truth is the training data set itself: its ``manifest.json`` records the content config it
was built with (``provenance.config``: decode ``frame_size``, ``num_frames`` (T), ``setting``,
``logmel_framing``; the Maskige settings; the shards' ``frame_format`` and ``jpeg_quality``) and
the Maskige provenance (``provenance.maskige``: the mask source actually used, e.g. classical
where SAM was asked for without a checkpoint, and the SAM checkpoint's sha256); the first
sample's ``meta.json`` gives the frame size and T where the manifest does not. The data set is
the one the checkpoint's ``meta.json`` names (or ``segment.dataset``).

When that data set cannot be read (deleted, or in a bucket these credentials cannot see), the
training run's composed config recorded in the checkpoint (``data.frame_size``,
``data.num_frames``, ``preprocess.maskige``, ``preprocess.shards``) stands in, with a warning:
it describes the data set only when the data set was built with that same config.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import tarfile
from dataclasses import dataclass
from typing import Any

from infra.schema.enrich import MaskigeConfig, SamConfig
from infra.storage import Storage
from tasks.decode.logmel import DEFAULT_FRAMING, FRAMINGS
from tasks.shards.manifest import Manifest, read_manifest
from tasks.shards.schema import read_shard, sample_meta
from tasks.checkpoint import CheckpointMeta

log = logging.getLogger(__name__)

DEFAULT_JPEG_QUALITY = 95  # infra.schema.shards.ShardsConfig's default


class RecipeError(ValueError):
    """The training data's preprocessing cannot be known or repeated; the message says why."""


@dataclass
class Recipe:
    """What every window goes through before the model sees it."""

    origin: str  # where these facts come from: "manifest <url>" or "checkpoint config <uri>"
    dataset_url: str | None
    dataset_version: str | None
    setting: str  # s4 | ms3 | avss
    frame_size: int  # frames are decoded to frame_size x frame_size
    window_s: int  # T
    logmel_framing: str  # vggish | per_second
    frame_format: str  # jpg | png: how the shards stored the frames (the model saw them decoded)
    jpeg_quality: int
    maskige: MaskigeConfig | None  # None: the data set has no Maskige
    maskige_sha256: str | None = None  # the SAM checkpoint's, as recorded

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "maskige"}
        out["maskige"] = None
        if self.maskige is not None:
            m = self.maskige
            out["maskige"] = {"source": m.source, "max_index": m.max_index}
            if m.source == "classical":
                out["maskige"]["method"] = m.classical_method
            elif m.source == "sam":
                out["maskige"].update(model_type=m.sam.model_type, checkpoint=m.sam.checkpoint)
            else:
                out["maskige"]["seed"] = m.seed
        return out


def _first_meta(url: str, manifest: Manifest, storage: Storage) -> dict[str, Any] | None:
    """meta.json of the data set's first sample (shards by name), or None when it holds none."""
    for entry in sorted(manifest.shards, key=lambda s: s["name"]):
        try:
            with contextlib.closing(read_shard(manifest.shard_url(url, entry["name"]), storage)) as samples:
                for sample in samples:
                    return sample_meta(sample)
        except (OSError, ValueError, tarfile.TarError) as e:
            raise RecipeError(f"data set {url}: shard {entry['name']} cannot be read ({e})") from None
    return None


def _maskige_config(settings: dict[str, Any] | None, used: str | None, sam_checkpoint: str | None) -> MaskigeConfig:
    known = {f.name for f in dataclasses.fields(MaskigeConfig)}
    values = {k: v for k, v in (settings or {}).items() if k in known}
    sam = values.pop("sam", None) or {}
    sam_known = {f.name for f in dataclasses.fields(SamConfig)}
    sam = SamConfig(**{k: v for k, v in (sam if isinstance(sam, dict) else {}).items() if k in sam_known})
    if sam_checkpoint:
        sam = dataclasses.replace(sam, checkpoint=sam_checkpoint)
    cfg = MaskigeConfig(**values, sam=sam)
    if used and used != cfg.source:  # e.g. "sam" asked for without a checkpoint: classical was used
        log.info("the training data's Maskiges came from %r (%r was asked for): segment uses %r", used, cfg.source,
                 used)
        cfg = dataclasses.replace(cfg, source=used)
    return cfg


def training_recipe(meta: CheckpointMeta, checkpoint_uri: str, storage: Storage, dataset: str | None = None,
                    window_s: int | None = None, sam_checkpoint: str | None = None) -> Recipe:
    """The Recipe of the data set the checkpoint was trained on (module docstring).

    dataset: another shard data set to follow (its manifest); window_s: T, overriding the data
    set's; sam_checkpoint: where the SAM checkpoint recorded for the Maskiges lives now.
    """
    url = dataset or meta.dataset_url or None
    manifest, why = None, "the checkpoint names no data set"
    if url:
        try:
            manifest = read_manifest(url, storage)
            why = "no manifest.json there" if manifest is None else ""
        except (OSError, ValueError) as e:
            why = f"{type(e).__name__}: {e}"
    if manifest is not None:
        first = _first_meta(url, manifest, storage)
        if first is None:
            raise RecipeError(f"data set {url} holds no sample: cannot tell how its clips were preprocessed")
        config = manifest.provenance.get("config") or {}
        decode = config.get("decode") or {}
        shards = config.get("shards") or {}
        h, w = (int(x) for x in first["frame_size"])
        if h != w:
            raise RecipeError(f"data set {url}: frames are {h} x {w}, not square; the readers write square frames")
        frame_size = int(decode.get("frame_size") or h)
        if frame_size != h:
            raise RecipeError(f"data set {url}: its manifest says frame_size {frame_size}, its samples are {h} px")
        t_data = decode.get("num_frames")
        if window_s is None and t_data is None:
            log.warning("data set %s has no single T (data.num_frames null: each clip its own, e.g. AVSS v1 5 s, "
                        "v2 10 s): using its first clip's, %d s; set segment.window_s to choose", url,
                        first["num_frames"])
        t_count = int(window_s or t_data or first["num_frames"])
        maskige = None
        if first.get("has_maskige"):
            used = (manifest.provenance.get("maskige") or first.get("provenance", {}).get("maskige") or {})
            maskige = _maskige_config(config.get("maskige"), used.get("mask_source"), sam_checkpoint)
            if not config.get("maskige"):
                log.warning("data set %s records no Maskige settings: segment uses the defaults of source %r", url,
                            maskige.source)
            sha = used.get("checkpoint_sha256")
        else:
            sha = None
        return Recipe(
            origin=f"manifest {url}", dataset_url=url, dataset_version=manifest.dataset_version,
            setting=str(decode.get("setting") or first.get("setting") or meta.setting),
            frame_size=frame_size, window_s=t_count,
            logmel_framing=str(decode.get("logmel_framing") or DEFAULT_FRAMING),
            frame_format=str(shards.get("frame_format") or first.get("frame_format") or "jpg"),
            jpeg_quality=int(shards.get("jpeg_quality") or DEFAULT_JPEG_QUALITY),
            maskige=maskige, maskige_sha256=sha,
        )

    config = meta.config or {}
    data, pre = config.get("data") or {}, config.get("preprocess") or {}
    if not data.get("frame_size"):
        raise RecipeError(f"cannot tell how checkpoint {checkpoint_uri}'s training data was preprocessed: its data set "
                          f"{url or '(none)'} cannot be read ({why}) and the checkpoint records no run config; "
                          "give segment.dataset=<the shard data set it was trained on>")
    log.warning("the training data set %s cannot be read (%s): preprocessing follows the training run's config in "
                "%s, which describes the data set only if it was built with that config", url, why, checkpoint_uri)
    shards = pre.get("shards") or {}
    t_count = window_s or data.get("num_frames")
    if t_count is None:
        raise RecipeError(f"checkpoint {checkpoint_uri}'s run config has no single T (data.num_frames null): "
                          "set segment.window_s")
    return Recipe(
        origin=f"checkpoint config {checkpoint_uri}", dataset_url=url, dataset_version=meta.dataset_version or None,
        setting=meta.setting or str(data.get("setting") or "s4"), frame_size=int(data["frame_size"]),
        window_s=int(t_count), logmel_framing=DEFAULT_FRAMING,
        frame_format=str(shards.get("frame_format") or "jpg"),
        jpeg_quality=int(shards.get("jpeg_quality") or DEFAULT_JPEG_QUALITY),
        maskige=_maskige_config(pre.get("maskige"), None, sam_checkpoint),
    )


def check_framing(recipe: Recipe) -> None:
    if recipe.logmel_framing not in FRAMINGS:
        raise RecipeError(f"{recipe.origin}: log-mel framing {recipe.logmel_framing!r} is not one this code makes "
                          f"({', '.join(FRAMINGS)})")
