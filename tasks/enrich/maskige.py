"""Maskige: the class-agnostic masks of one frame painted into one colour-coded image.

As COMBO builds it (avs_tools/pre_mask2rgb in COMBO-AVS): the masks of a frame are
sorted by area, smallest first; each is painted, in that order, onto the pixels that are
still 0, with value k+1 for the k-th mask; pixels no mask covers stay 0. The index image
is saved as a palette ("P") PNG with the 150-colour ADE20K palette, and the model reads
it back as RGB (index 0 shows as the palette's first colour, like any other index).

Where we differ from COMBO, on purpose:
- COMBO casts to uint8, so indices above 255 wrap, and indices 150..255 fall off the
  150-colour palette (Pillow shows them black). We paint at most ``max_index`` masks
  (indices 1..max_index, max_index <= 149 so every index has its own palette colour);
  the larger masks past the cap are not painted, and the info dict records how many
  (and how many pixels they alone would have covered).
- Masks of equal area keep their input order (a stable sort); COMBO's argsort does not
  promise an order for ties.

Masks come from SAM (:mod:`tasks.enrich.sam`), a tiny random SAM (tests), or a classical
class-agnostic segmenter when no SAM checkpoint is given: scikit-image felzenszwalb or
slic, or "chroma" (whole objects by chromaticity, see :func:`chroma_object_labels`).
"""
from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from infra.schema.enrich import MaskigeConfig
from tasks.clip import check_frames

log = logging.getLogger(__name__)

# The ADE20K palette (150 classes; mmsegmentation / COMBO order). Index i -> colour i.
ADE20K_PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112], [0, 255, 133],
    [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0], [0, 143, 255], [51, 255, 0],
    [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0], [0, 255, 153],
    [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255],
    [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255],
    [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255], [0, 255, 92], [184, 0, 255],
    [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255],
    [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255],
    [255, 255, 0], [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0],
    [173, 0, 255], [0, 245, 255], [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255],
    [184, 255, 0], [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
], dtype=np.uint8)
assert ADE20K_PALETTE.shape == (150, 3)

MAX_PALETTE_INDEX = len(ADE20K_PALETTE) - 1  # 149: the largest index with its own colour

# What a palette PNG shows for every byte value: the 150 colours, then black, as Pillow
# renders indices past a short palette.
_RGB_LOOKUP = np.zeros((256, 3), dtype=np.uint8)
_RGB_LOOKUP[: len(ADE20K_PALETTE)] = ADE20K_PALETTE


class MaskigeError(RuntimeError):
    """Making the Maskige of a frame failed; the message names the frame index."""


def _as_mask_list(masks: Any) -> list[np.ndarray]:
    """Boolean [H, W] masks from a list of arrays, SAM records, or one [M, H, W] array."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"masks array must be [M, H, W], got {list(masks.shape)}")
        return [m.astype(bool, copy=False) for m in masks]
    out = []
    for k, m in enumerate(masks):
        if isinstance(m, dict):  # a SamAutomaticMaskGenerator record
            if "segmentation" not in m:
                raise ValueError(f"mask record {k} has no 'segmentation' (keys {sorted(m)})")
            m = m["segmentation"]
            if isinstance(m, dict):
                raise ValueError(f"mask record {k} holds an RLE; run the generator with output_mode='binary_mask'")
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"mask {k} must be [H, W], got {list(m.shape)}")
        out.append(m.astype(bool, copy=False))
    return out


def build_maskige(masks: Sequence[np.ndarray] | Sequence[dict] | np.ndarray, max_index: int = MAX_PALETTE_INDEX,
                  shape: tuple[int, int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """Paint class-agnostic masks into one Maskige, COMBO's way (module docstring).

    masks: boolean [H, W] arrays, SAM records ({"segmentation": bool [H, W], ...}), or
           bool [M, H, W]. shape: (H, W), needed only when there are no masks.
    Returns (maskige uint8 [H, W], info) with info = {"num_masks", "painted", "capped",
    "capped_pixels"}: masks given an index, masks past max_index left unpainted, and the
    pixels that stayed 0 only because of the cap.
    """
    if not 1 <= max_index <= 255:
        raise ValueError(f"max_index must be in [1, 255], got {max_index}")
    mask_list = _as_mask_list(masks)
    if not mask_list:
        if shape is None:
            raise ValueError("build_maskige: no masks and no shape given")
        return np.zeros(shape, dtype=np.uint8), {"num_masks": 0, "painted": 0, "capped": 0, "capped_pixels": 0}
    hw = mask_list[0].shape
    for k, m in enumerate(mask_list):
        if m.shape != hw:
            raise ValueError(f"mask {k} is {list(m.shape)}, mask 0 is {list(hw)}: all masks of a frame share a size")
    if shape is not None and tuple(shape) != hw:
        raise ValueError(f"masks are {list(hw)} but shape {list(shape)} was asked for")
    areas = np.array([int(m.sum()) for m in mask_list])
    order = np.argsort(areas, kind="stable")  # smallest first; ties keep input order
    maskige = np.zeros(hw, dtype=np.uint8)
    painted = min(len(order), max_index)
    for k in range(painted):
        m = mask_list[order[k]]
        maskige[m & (maskige == 0)] = k + 1
    capped_pixels = 0
    if len(order) > painted:
        left = maskige == 0
        covered_by_capped = np.zeros(hw, dtype=bool)
        for k in range(painted, len(order)):
            covered_by_capped |= mask_list[order[k]]
        capped_pixels = int((covered_by_capped & left).sum())
    info = {"num_masks": len(mask_list), "painted": painted, "capped": len(mask_list) - painted,
            "capped_pixels": capped_pixels}
    return maskige, info


def _check_maskige(maskige: np.ndarray) -> None:
    if maskige.ndim != 2 or maskige.dtype != np.uint8:
        raise ValueError(f"maskige must be uint8 [H, W], got {maskige.dtype} {list(maskige.shape)}")


def maskige_png(maskige: np.ndarray) -> bytes:
    """Palette ("P") PNG bytes of a Maskige with the ADE20K palette; lossless."""
    _check_maskige(maskige)
    image = Image.fromarray(maskige, mode="L")
    image.putpalette(ADE20K_PALETTE.tobytes())  # "L" + palette -> "P"
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def read_maskige_png(data: bytes) -> np.ndarray:
    """The index image (uint8 [H, W]) of a Maskige PNG."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises several kinds
        raise ValueError(f"not a readable Maskige PNG ({type(e).__name__}: {e})") from None
    if image.mode not in ("P", "L"):
        raise ValueError(f"a Maskige PNG holds palette indices (mode 'P'), this one is mode {image.mode!r}")
    return np.asarray(image, dtype=np.uint8).copy()


def maskige_rgb(maskige: np.ndarray) -> np.ndarray:
    """What the model reads: uint8 [H, W, 3], each index through the ADE20K palette.

    Index 0 (uncovered) shows as the palette's first colour (120, 120, 120), as COMBO's
    reader (detectron2 read_image of the "P" PNG, converted to RGB) sees it; identical to
    ``Image.open(png).convert("RGB")``.
    """
    _check_maskige(maskige)
    return _RGB_LOOKUP[maskige]


# -- classical class-agnostic segmentation ---------------------------------------------
#
# "chroma": chromaticity (r, g, b) / (r + g + b) does not change where a surface is shaded,
# striped or darkened by a texture, so a painted object is one tight cluster in it while
# the background (a blend of colours under a brightness pattern) lies along its own line.
# Objects come out whole, as SAM's masks do, where felzenszwalb / slic cut textures up.

def chromaticity(image: np.ndarray) -> np.ndarray:
    """(r, g, b) / (r + g + b) of a lightly smoothed float image [h, w, 3]; dark pixels damped."""
    from scipy import ndimage as ndi

    x = ndi.gaussian_filter(image, (1.0, 1.0, 0))
    return x / np.maximum(x.sum(-1, keepdims=True), 30.0)


def background_distance(chroma: np.ndarray, ring: int = 3) -> np.ndarray:
    """Per pixel, chromaticity distance to the background model fitted on the border. [h, w].

    The model is the principal line segment of the border pixels' chromaticities (a blend
    of two colours), extended by a quarter of its length at each end.
    """
    border = np.concatenate([chroma[:ring].reshape(-1, 3), chroma[-ring:].reshape(-1, 3),
                             chroma[:, :ring].reshape(-1, 3), chroma[:, -ring:].reshape(-1, 3)])
    centre = np.median(border, axis=0)
    direction = np.linalg.svd(border - centre, full_matrices=False)[2][0]
    proj = (border - centre) @ direction
    lo, hi = np.percentile(proj, 2), np.percentile(proj, 98)
    lo, hi = lo - 0.25 * (hi - lo) - 0.01, hi + 0.25 * (hi - lo) + 0.01
    x = chroma.reshape(-1, 3) - centre
    t = np.clip(x @ direction, lo, hi)
    return np.linalg.norm(x - t[:, None] * direction[None], axis=1).reshape(chroma.shape[:2])


def chroma_object_labels(chroma: np.ndarray, min_area: int = 40, threshold: float = 0.035) -> np.ndarray:
    """int [h, w]: 0 background, 1..n objects. chroma: chromaticity [h, w, 3].

    Foreground: pixels farther than ``threshold`` from the background model. It is split
    into objects by the modes of its chromaticity histogram, then by connectivity; parts
    smaller than ``min_area`` pixels are dropped.
    """
    from scipy import ndimage as ndi

    fg = ndi.binary_opening(background_distance(chroma) > threshold)
    labels = np.zeros(fg.shape, dtype=np.int32)
    if not fg.any():
        return labels
    # Modes of the foreground's (r, g) histogram: connected sets of occupied 0.01-wide bins.
    bins = 101
    q = np.clip((chroma[..., :2][fg] * 100).astype(np.int64), 0, bins - 1)
    hist = np.zeros((bins, bins))
    np.add.at(hist, (q[:, 0], q[:, 1]), 1.0)
    modes, _ = ndi.label(ndi.gaussian_filter(hist, 1.0) > 0.5)
    colour_mode = np.zeros(fg.shape, dtype=np.int64)  # 0: background, or a stray colour of a few pixels
    colour_mode[fg] = modes[q[:, 0], q[:, 1]]
    # Connected components (4-connected) of each mode are the objects.
    n = 0
    for mode in np.unique(colour_mode[colour_mode > 0]):
        parts, count = ndi.label(colour_mode == mode)
        if count == 0:
            continue
        areas = np.bincount(parts.ravel(), minlength=count + 1)
        for part in np.nonzero(areas >= min_area)[0]:
            if part == 0:
                continue
            n += 1
            labels[parts == part] = n
    return labels


def classical_masks(frame: np.ndarray, cfg: MaskigeConfig) -> list[np.ndarray]:
    """Class-agnostic boolean masks [H, W] of one frame (uint8 [H, W, 3]), by cfg.classical_method."""
    from scipy import ndimage as ndi
    from skimage.segmentation import felzenszwalb, slic

    if cfg.classical_method == "chroma":
        objects = chroma_object_labels(chromaticity(frame.astype(np.float32)), cfg.chroma_min_area,
                                       cfg.chroma_threshold)
        masks = [objects == k for k in range(1, int(objects.max()) + 1)]
        rest, n = ndi.label(objects == 0)  # background pieces (a ring's hole is one), as SAM gives them
        areas = np.bincount(rest.ravel(), minlength=n + 1)
        return masks + [rest == k for k in range(1, n + 1) if areas[k] >= cfg.chroma_min_area]
    if cfg.classical_method == "felzenszwalb":
        labels = felzenszwalb(frame, scale=cfg.felzenszwalb_scale, sigma=cfg.felzenszwalb_sigma,
                              min_size=cfg.felzenszwalb_min_size, channel_axis=-1)
    else:
        labels = slic(frame, n_segments=cfg.slic_n_segments, compactness=cfg.slic_compactness,
                      sigma=cfg.slic_sigma, start_label=0, channel_axis=-1)
    return [labels == v for v in np.unique(labels)]


def source_warning(cfg: MaskigeConfig) -> str | None:
    """The loud line a run gets when its Maskiges do not come from SAM, else None."""
    if cfg.source == "sam" and cfg.sam.checkpoint is None:
        return (f"!!! maskige.source is 'sam' but maskige.sam.checkpoint is not set: Maskiges come from "
                f"CLASSICAL {cfg.classical_method} segmentation, NOT SAM !!!")
    if cfg.source == "classical":
        return f"!!! Maskiges come from CLASSICAL {cfg.classical_method} segmentation, NOT SAM (maskige.source='classical') !!!"
    return None


class MaskigeMaker:
    """Frames -> Maskiges, with SAM (batched), a tiny random SAM, or classical segments.

    Build once per worker (it loads the model), then call on batches of frames.
    """

    def __init__(self, cfg: MaskigeConfig | None = None, storage=None, device=None) -> None:
        self.cfg = cfg or MaskigeConfig()
        self.source = self.cfg.source
        self.checkpoint_sha256: str | None = None
        self.generator = None
        sam_cfg = self.cfg.sam
        warning = source_warning(self.cfg)
        if warning:
            log.warning(warning)
        if self.source == "sam" and sam_cfg.checkpoint is None:
            self.source = "classical"
        if self.source in ("sam", "sam_tiny"):
            from tasks.enrich.sam import BatchedSamMaskGenerator, build_sam_tiny, default_device, load_sam_with_sha256

            if sam_cfg.min_mask_region_area > 0:
                try:
                    import cv2  # noqa: F401
                except ImportError:
                    raise ValueError("maskige.sam.min_mask_region_area > 0 needs opencv (segment-anything's "
                                     "small-region post-processing); install it or set it to 0") from None
            device = device or default_device()
            if self.source == "sam":
                model, self.checkpoint_sha256 = load_sam_with_sha256(sam_cfg.model_type, sam_cfg.checkpoint, storage,
                                                                     device=device)
            else:
                log.warning("maskige.source is 'sam_tiny': a tiny RANDOMLY INITIALISED SAM (tests and benchmarks only)")
                model = build_sam_tiny(seed=self.cfg.seed, img_size=sam_cfg.tiny_img_size).to(device)
            self.generator = BatchedSamMaskGenerator(model, image_batch=sam_cfg.image_batch,
                                                     **sam_cfg.generator_settings())

    def provenance(self) -> dict[str, Any]:
        """What made these Maskiges: recorded in each clip's meta.json."""
        prov: dict[str, Any] = {
            "mask_source": self.source,
            "requested_source": self.cfg.source,
            "max_index": self.cfg.max_index,
            "palette": "ade20k-150",
        }
        if self.source == "classical":
            method = self.cfg.classical_method
            params = {k: getattr(self.cfg, k) for k in vars(self.cfg) if k.startswith(method + "_")}
            prov.update(model_type=None, checkpoint=None, checkpoint_sha256=None,
                        generator={"method": method, **params})
        else:
            sam_cfg = self.cfg.sam
            prov.update(
                model_type=sam_cfg.model_type if self.source == "sam" else "tiny",
                checkpoint=sam_cfg.checkpoint if self.source == "sam" else None,
                checkpoint_sha256=self.checkpoint_sha256,
                generator={**sam_cfg.generator_settings(), "image_batch": sam_cfg.image_batch},
            )
            if self.source == "sam_tiny":
                prov["seed"] = self.cfg.seed
        return prov

    def masks(self, frames: np.ndarray) -> list[list[np.ndarray]]:
        """Class-agnostic boolean masks per frame. frames: uint8 [N, H, W, 3]."""
        check_frames(frames)
        if self.generator is None:
            out = []
            for i, frame in enumerate(frames):
                try:
                    out.append(classical_masks(frame, self.cfg))
                except Exception as e:  # noqa: BLE001 - one bad frame is reported by index
                    raise MaskigeError(f"frame {i}: classical segmentation failed ({type(e).__name__}: {e})") from e
            return out
        try:
            records = self.generator.generate_batch(frames)
        except Exception as e:  # noqa: BLE001 - the message names the frame(s)
            raise MaskigeError(f"SAM mask generation failed: {e}") from e
        return [[r["segmentation"] for r in recs] for recs in records]

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, list[dict[str, int]]]:
        """Maskiges of frames. frames: uint8 [N, H, W, 3] -> (uint8 [N, H, W], N info dicts)."""
        per_frame = self.masks(frames)
        maskiges = np.zeros(frames.shape[:3], dtype=np.uint8)
        infos = []
        for i, masks in enumerate(per_frame):
            try:
                maskiges[i], info = build_maskige(masks, self.cfg.max_index, shape=frames.shape[1:3])
            except Exception as e:  # noqa: BLE001
                raise MaskigeError(f"frame {i}: painting the Maskige failed ({type(e).__name__}: {e})") from e
            infos.append(info)
        capped = sum(1 for info in infos if info["capped"])
        if capped:
            log.info("maskige: %d of %d frames had more than %d masks; the largest were left unpainted",
                     capped, len(infos), self.cfg.max_index)
        return maskiges, infos
