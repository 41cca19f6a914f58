"""Schema of the enrichment steps of preprocessing: Maskige, frame embeddings, pair mining.

The lead composes these into the preprocess config (conf/preprocess/). Every value is
checked in ``__post_init__`` and a bad one raises ValueError naming its key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
MASK_SOURCES = ("sam", "sam_tiny", "classical")
CLASSICAL_METHODS = ("felzenszwalb", "slic", "chroma")
EMBED_SOURCES = ("dino", "dino_tiny", "tiny_backbone", "classical")


def _check(ok: bool, key: str, value: object, want: str) -> None:
    if not ok:
        raise ValueError(f"{key} must be {want}, got {value!r}")


def _unit(key: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, key, value, "in [0, 1]")


@dataclass
class SamConfig:
    """SAM checkpoint and the settings of segment-anything's SamAutomaticMaskGenerator."""

    checkpoint: str | None = None  # local path or s3:// URI; None: no SAM (classical fallback)
    model_type: str = "vit_h"
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    min_mask_region_area: int = 0  # > 0 needs opencv (segment-anything's post-processing)
    image_batch: int = 4  # frames per batched image-encoder call
    tiny_img_size: int = 256  # input size of the tiny random SAM (source "sam_tiny")

    def __post_init__(self) -> None:
        _check(self.checkpoint is None or (isinstance(self.checkpoint, str) and self.checkpoint != ""),
               "sam.checkpoint", self.checkpoint, "a local path, an s3:// URI or null")
        _check(self.model_type in SAM_MODEL_TYPES, "sam.model_type", self.model_type, f"one of {SAM_MODEL_TYPES}")
        _check(self.points_per_side >= 1, "sam.points_per_side", self.points_per_side, ">= 1")
        _check(self.points_per_batch >= 1, "sam.points_per_batch", self.points_per_batch, ">= 1")
        _unit("sam.pred_iou_thresh", self.pred_iou_thresh)
        _unit("sam.stability_score_thresh", self.stability_score_thresh)
        _check(self.stability_score_offset > 0, "sam.stability_score_offset", self.stability_score_offset, "> 0")
        _unit("sam.box_nms_thresh", self.box_nms_thresh)
        _unit("sam.crop_nms_thresh", self.crop_nms_thresh)
        _check(self.crop_n_layers >= 0, "sam.crop_n_layers", self.crop_n_layers, ">= 0")
        _check(self.min_mask_region_area >= 0, "sam.min_mask_region_area", self.min_mask_region_area, ">= 0")
        _check(self.image_batch >= 1, "sam.image_batch", self.image_batch, ">= 1")
        _check(self.tiny_img_size >= 64 and self.tiny_img_size % 16 == 0, "sam.tiny_img_size", self.tiny_img_size,
               "a multiple of 16, >= 64")

    def generator_settings(self) -> dict:
        """Keyword arguments of SamAutomaticMaskGenerator (also recorded as provenance)."""
        return {
            "points_per_side": self.points_per_side,
            "points_per_batch": self.points_per_batch,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "stability_score_offset": self.stability_score_offset,
            "box_nms_thresh": self.box_nms_thresh,
            "crop_n_layers": self.crop_n_layers,
            "crop_nms_thresh": self.crop_nms_thresh,
            "min_mask_region_area": self.min_mask_region_area,
        }


@dataclass
class MaskigeConfig:
    """Where the class-agnostic masks of a Maskige come from, and how they are painted."""

    source: str = "classical"  # sam | sam_tiny | classical
    sam: SamConfig = field(default_factory=SamConfig)
    # felzenszwalb | slic (scikit-image, on RGB) | chroma (whole objects by chromaticity,
    # texture- and shading-invariant: closest to SAM's object masks on SynthAVS)
    classical_method: str = "felzenszwalb"
    # felzenszwalb: scale, sigma, min_size in pixels. scale 300 / min_size 100 keep a 224 px
    # SynthAVS-hard frame at ~50 segments (scale 100 / 50 gave ~110, often past the palette).
    felzenszwalb_scale: float = 300.0
    felzenszwalb_sigma: float = 0.8
    felzenszwalb_min_size: int = 100
    # slic (scikit-image): n_segments, compactness, sigma
    slic_n_segments: int = 64
    slic_compactness: float = 10.0
    slic_sigma: float = 1.0
    # chroma: foreground = chromaticity distance to the border's colours above threshold;
    # objects and background pieces smaller than min_area pixels are dropped
    chroma_threshold: float = 0.035
    chroma_min_area: int = 40
    # Largest index painted. The ADE20K palette has 150 colours, indices 0..149, and 0 means
    # "no mask", so at most 149 masks get their own colour; the larger ones past the cap are
    # not painted (recorded per frame). COMBO lets them run off the palette instead.
    max_index: int = 149
    seed: int = 0  # seed of the tiny random SAM

    def __post_init__(self) -> None:
        if isinstance(self.sam, dict):  # composed from plain YAML
            self.sam = SamConfig(**self.sam)
        _check(self.source in MASK_SOURCES, "maskige.source", self.source, f"one of {MASK_SOURCES}")
        _check(self.classical_method in CLASSICAL_METHODS, "maskige.classical_method", self.classical_method,
               f"one of {CLASSICAL_METHODS}")
        _check(self.felzenszwalb_scale > 0, "maskige.felzenszwalb_scale", self.felzenszwalb_scale, "> 0")
        _check(self.felzenszwalb_sigma >= 0, "maskige.felzenszwalb_sigma", self.felzenszwalb_sigma, ">= 0")
        _check(self.felzenszwalb_min_size >= 1, "maskige.felzenszwalb_min_size", self.felzenszwalb_min_size, ">= 1")
        _check(self.slic_n_segments >= 1, "maskige.slic_n_segments", self.slic_n_segments, ">= 1")
        _check(self.slic_compactness > 0, "maskige.slic_compactness", self.slic_compactness, "> 0")
        _check(self.slic_sigma >= 0, "maskige.slic_sigma", self.slic_sigma, ">= 0")
        _check(0 < self.chroma_threshold < 1, "maskige.chroma_threshold", self.chroma_threshold, "in (0, 1)")
        _check(self.chroma_min_area >= 1, "maskige.chroma_min_area", self.chroma_min_area, ">= 1")
        _check(1 <= self.max_index <= 149, "maskige.max_index", self.max_index,
               "in [1, 149] (the 150-colour ADE20K palette; index 0 = no mask)")


@dataclass
class EmbedConfig:
    """Per-frame embedding used for pair mining: DINO ViT, a tiny random ViT, the tiny models'
    pretrained TinyCNN (``flows/pretrain.py``'s ``backbone.pt``), or classical features."""

    source: str = "classical"  # dino | dino_tiny | tiny_backbone | classical
    # DINO state dict (or, for tiny_backbone, the TinyCNN's), local path or s3:// URI. Source "dino"
    # without one falls back to classical features, loudly, as Maskige does without a SAM checkpoint;
    # tiny_backbone without one is an error.
    checkpoint: str | None = None
    arch: str = "vit_small_patch16_224"  # timm model name with DINO's architecture
    image_size: int = 224
    batch_size: int = 32
    seed: int = 0  # seed of the tiny random ViT

    def __post_init__(self) -> None:
        _check(self.source in EMBED_SOURCES, "embed.source", self.source, f"one of {EMBED_SOURCES}")
        _check(self.checkpoint is None or (isinstance(self.checkpoint, str) and self.checkpoint != ""),
               "embed.checkpoint", self.checkpoint, "a local path, an s3:// URI or null")
        _check(isinstance(self.arch, str) and self.arch != "", "embed.arch", self.arch, "a timm model name")
        _check(self.image_size >= 16 and self.image_size % 16 == 0, "embed.image_size", self.image_size,
               "a multiple of 16, >= 16")
        _check(self.batch_size >= 1, "embed.batch_size", self.batch_size, ">= 1")
        if self.source == "tiny_backbone":
            _check(self.checkpoint is not None, "embed.checkpoint", self.checkpoint,
                   "the TinyCNN weights (backbone.pt of flows/pretrain.py) for embed.source=tiny_backbone")
            _check(self.image_size % 32 == 0, "embed.image_size", self.image_size,
                   "a multiple of 32 for embed.source=tiny_backbone")


@dataclass
class PairsConfig:
    """k-NN pair mining over all frame embeddings (positives from other clips, random negatives)."""

    k_pos: int = 5
    num_neg: int = 5
    # Cosine below which a frame of another clip may serve as a negative. L2-normalised
    # embeddings of unrelated frames sit near 0 for DINO; 0.3 keeps clear of near neighbours.
    neg_threshold: float = 0.3
    block_size: int = 4096  # anchor rows per block (memory is O(block_size * chunk_size))
    chunk_size: int = 4096  # candidate rows per chunk
    seed: int = 0
    # exact: every pair scored (quadratic: 80k frames take about 3 min on 2 cores); ivf: an inverted
    # file, faiss k-means cells scanned by matrix products (tasks/enrich/pairs_ann.py); auto: exact
    # up to exact_max_frames, ivf above.
    method: str = "auto"
    exact_max_frames: int = 50_000
    nlist: int = 0  # IVF cells; 0 = 2 * sqrt(N) rounded (1M frames: 2000)
    nprobe: int = 16  # cells searched per anchor: recall against speed
    train_points_per_cell: int = 64  # k-means sample for the cells: nlist x this rows (seeded)
    kmeans_iters: int = 10
    # Ray tasks the anchors are split over when Ray is running (the index is built once and shared
    # through the object store); 0 = one per CPU Ray reports, 1 = in this process.
    partitions: int = 0
    recall_sample: int = 1000  # anchors checked against exact k-NN after an approximate run (0 = skip)

    def __post_init__(self) -> None:
        _check(self.k_pos >= 1, "pairs.k_pos", self.k_pos, ">= 1")
        _check(self.num_neg >= 0, "pairs.num_neg", self.num_neg, ">= 0")
        _check(-1.0 <= self.neg_threshold <= 1.0, "pairs.neg_threshold", self.neg_threshold, "in [-1, 1]")
        _check(self.block_size >= 1, "pairs.block_size", self.block_size, ">= 1")
        _check(self.chunk_size >= 1, "pairs.chunk_size", self.chunk_size, ">= 1")
        _check(self.method in ("auto", "exact", "ivf"), "pairs.method", self.method, "auto, exact or ivf")
        _check(self.exact_max_frames >= 0, "pairs.exact_max_frames", self.exact_max_frames, ">= 0")
        _check(self.nlist >= 0, "pairs.nlist", self.nlist, ">= 0 (0 = 2 * sqrt(N))")
        _check(self.nprobe >= 1, "pairs.nprobe", self.nprobe, ">= 1")
        _check(self.train_points_per_cell >= 1, "pairs.train_points_per_cell", self.train_points_per_cell, ">= 1")
        _check(self.kmeans_iters >= 1, "pairs.kmeans_iters", self.kmeans_iters, ">= 1")
        _check(self.partitions >= 0, "pairs.partitions", self.partitions, ">= 0")
        _check(self.recall_sample >= 0, "pairs.recall_sample", self.recall_sample, ">= 0")
