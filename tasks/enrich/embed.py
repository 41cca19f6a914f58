"""Per-frame embeddings for pair mining: DINO ViT CLS tokens, or classical features.

- "dino": a timm ViT with DINO's architecture (``vit_small_patch16_224`` is DINO ViT-S/16),
  weights from a DINO checkpoint (local path or s3://). DINO's checkpoints are plain state
  dicts of the ViT; full training checkpoints wrap them as {"teacher": ..., "student": ...}
  with "module." / "backbone." prefixes and a projection head, all of which we unwrap.
- "dino_tiny": the same code with a tiny ViT and random weights (tests, benchmarks).
- "tiny_backbone": the tiny models' TinyCNN with the weights ``flows/pretrain.py`` releases (its
  ``backbone.pt``): the mean of its stride-32 map over the frame, MoCA's frozen encoder's own view.
- "classical": colour and shape features, no learned weights (see :func:`classical_embedding`).

Every embedding is float32 [N, D], L2-normalised, so a dot product is a cosine.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from infra.schema.enrich import EmbedConfig
from models.backbones import IMAGENET_MEAN, IMAGENET_STD  # DINO was trained on ImageNet-normalised inputs
from tasks.clip import check_frames
from tasks.enrich.maskige import chroma_object_labels, chromaticity

log = logging.getLogger(__name__)

TINY_VIT = {"embed_dim": 48, "depth": 2, "num_heads": 3}
CLASSICAL_VERSION = "chroma-objects-shape-kme-v1"


class EmbedCheckpointError(ValueError):
    """A DINO checkpoint could not be read or does not fit the architecture; names the URI."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit length (all-zero rows stay zero). float32 [N, D]."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


# -- DINO ------------------------------------------------------------------------------

def clean_dino_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ViT backbone's weights out of any DINO checkpoint layout.

    Takes the "teacher" (DINO evaluates the teacher) or else "student"/"model"/"state_dict"
    entry when present, strips "module." and "backbone." prefixes, and drops the DINO
    projection head ("head.*") that a backbone without classifier does not have.
    """
    for key in ("teacher", "student", "model", "state_dict"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name.startswith("head.") or name.startswith("head_"):
            continue
        out[name] = value
    return out


def load_vit_weights(model: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """Load a (cleaned) DINO state dict into a timm ViT; every backbone weight must be present."""
    from timm.layers import resample_abs_pos_embed

    state = clean_dino_state_dict(state)
    own = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape:
        # Checkpoint made for another input size: interpolate its position grid (as timm does).
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=1)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise EmbedCheckpointError(f"{where}: {len(missing)} weights of the ViT are missing, e.g. {missing[:4]}; "
                                   f"is it a DINO ViT checkpoint of this arch?")
    if unexpected:
        raise EmbedCheckpointError(f"{where}: {len(unexpected)} weights do not belong to this ViT, "
                                   f"e.g. {unexpected[:4]}")
    mismatched = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise EmbedCheckpointError(f"{where}: {len(mismatched)} weights have the wrong shape, e.g. {k}: "
                                   f"{list(state[k].shape)} vs {list(own[k].shape)} (wrong arch?)")
    model.load_state_dict(state)


def read_torch_checkpoint(uri: str, storage=None) -> tuple[dict[str, Any], str]:
    """A checkpoint's dict (read with weights_only=True: it cannot run code) and its sha256."""
    from infra.storage import Storage

    storage = storage or Storage()
    try:
        with storage.local_path(uri, suffix=".pth") as path:
            digest = storage.sha256(path)
            # DINO's full checkpoints carry their argparse Namespace; allow that one class.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EmbedCheckpointError(f"checkpoint {uri!r}: file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on a corrupt file
        first = str(e).splitlines()[0] if str(e) else ""
        raise EmbedCheckpointError(f"checkpoint {uri!r}: cannot be read as a torch state dict "
                                   f"({type(e).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise EmbedCheckpointError(f"checkpoint {uri!r}: expected a state dict, found {type(state).__name__}")
    return state, digest


def build_vit(arch: str, image_size: int, tiny: bool = False, seed: int = 0) -> torch.nn.Module:
    """timm ViT without classifier (forward gives the final-norm CLS token), random weights."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": image_size, "global_pool": "token"}
    if tiny:
        kwargs.update(TINY_VIT)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = timm.create_model(arch, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError / TypeError for bad names or kwargs
        raise ValueError(f"embed.arch {arch!r}: cannot build it with timm ({type(e).__name__}: {e})") from None
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


# -- classical -------------------------------------------------------------------------
#
# Without a DINO checkpoint, frames are compared by the objects they show. Objects are
# found by tasks.enrich.maskige.chroma_object_labels (chromaticity does not change where a
# surface is shaded, striped or textured by darkening, so each painted object is one
# tight colour cluster apart from the background's), and each is described by
# translation-, scale- and (mostly) rotation-invariant shape numbers: Hu moments,
# solidity, extent, axis ratio, holes, circularity, and the Fourier magnitudes of its
# boundary radius (which count corners).
# A frame's embedding is the kernel mean of its objects' descriptors (random Fourier
# features of a Gaussian kernel, fixed seed), so two frames are close when some object
# of one has the shape of some object of the other. Smaller blocks add the objects'
# colours and the frame's global colour for frames where no object is found.

CLASSICAL_SIZE = 224  # frames are resized so that the longer side has this many pixels
_SHAPE_DIM, _COLOUR_DIM, _GLOBAL_BINS = 256, 96, 8
_COLOUR_WEIGHT, _GLOBAL_WEIGHT = 0.3, 0.15
# Kernel bandwidth of each descriptor entry (about half its spread over many objects):
# 4 log-Hu moments, solidity, extent, minor/major axis ratio, has-holes, circularity,
# then 8 boundary-radius harmonics.
_SHAPE_BANDWIDTH = np.array([1.0] * 4 + [0.1, 0.1, 0.15, 0.5, 0.1] + [0.05] * 8)
_COLOUR_BANDWIDTH = 0.03  # chromaticity units
_rff = np.random.default_rng(20_240_607)
_SHAPE_W = _rff.normal(size=(len(_SHAPE_BANDWIDTH), _SHAPE_DIM)) / _SHAPE_BANDWIDTH[:, None]
_SHAPE_B = _rff.uniform(0, 2 * np.pi, _SHAPE_DIM)
_COLOUR_W = _rff.normal(size=(2, _COLOUR_DIM)) / _COLOUR_BANDWIDTH
_COLOUR_B = _rff.uniform(0, 2 * np.pi, _COLOUR_DIM)
CLASSICAL_DIM = _SHAPE_DIM + _COLOUR_DIM + _GLOBAL_BINS ** 2


def _work_image(frame: np.ndarray) -> np.ndarray:
    """float32 [h, w, 3] with max(h, w) = CLASSICAL_SIZE."""
    from PIL import Image

    h, w = frame.shape[:2]
    scale = CLASSICAL_SIZE / max(h, w)
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frame = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
    return frame.astype(np.float32)


def _radial_harmonics(mask: np.ndarray, cy: float, cx: float, bins: int = 64, count: int = 8) -> np.ndarray:
    """|FFT| of the boundary's radius over angle (normalised by its mean), harmonics 1..count."""
    from scipy import ndimage as ndi

    edge = mask & ~ndi.binary_erosion(mask)
    ys, xs = np.nonzero(edge)
    if len(ys) < 8:
        return np.zeros(count)
    b = ((np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi) * bins).astype(np.int64) % bins
    radius = np.zeros(bins)
    np.maximum.at(radius, b, np.hypot(ys - cy, xs - cx))
    filled = np.nonzero(radius > 0)[0]
    radius = np.interp(np.arange(bins), filled, radius[filled], period=bins)
    radius /= radius.mean() + 1e-6
    return np.abs(np.fft.rfft(radius))[1:count + 1] / bins


def shape_descriptor(region) -> np.ndarray:
    """17 shape numbers of a skimage regionprops region (see _SHAPE_BANDWIDTH for the order)."""
    hu = region.moments_hu[:4]
    log_hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-12)
    ratio = region.axis_minor_length / max(region.axis_major_length, 1e-6)
    holes = float(region.euler_number < 1)
    circularity = min(4 * np.pi * region.area / max(region.perimeter, 1.0) ** 2, 1.2)
    cy, cx = region.centroid_local
    harmonics = _radial_harmonics(np.pad(region.image, 1), cy + 1, cx + 1)
    return np.concatenate([log_hu, [region.solidity, region.extent, ratio, holes, circularity], harmonics])


def classical_features(frame: np.ndarray) -> np.ndarray:
    """Colour + shape embedding of one frame (uint8 [H, W, 3]) -> float64 [CLASSICAL_DIM], not normalised."""
    from skimage.measure import regionprops

    image = _work_image(frame)
    chroma = chromaticity(image)
    shape = np.zeros(_SHAPE_DIM)
    colour = np.zeros(_COLOUR_DIM)
    for region in regionprops(chroma_object_labels(chroma, min_area=40)):  # smaller: no usable shape
        weight = min(1.0, region.area / 400.0)  # small objects' shapes are less certain
        shape += weight * np.cos(shape_descriptor(region) @ _SHAPE_W + _SHAPE_B)
        mean_rg = chroma[region.coords[:, 0], region.coords[:, 1], :2].mean(0)
        colour += weight * np.cos(mean_rg @ _COLOUR_W + _COLOUR_B)
    q = np.clip((chroma[..., :2] * _GLOBAL_BINS / 0.8).astype(np.int64), 0, _GLOBAL_BINS - 1)
    hist = np.bincount((q[..., 0] * _GLOBAL_BINS + q[..., 1]).ravel(), minlength=_GLOBAL_BINS ** 2).astype(float)

    def unit(v: np.ndarray) -> np.ndarray:
        return v / (np.linalg.norm(v) + 1e-12)

    return np.concatenate([unit(shape), _COLOUR_WEIGHT * unit(colour), _GLOBAL_WEIGHT * unit(hist)])


def classical_embedding(frames: np.ndarray) -> np.ndarray:
    """Classical embeddings of frames (uint8 [N, H, W, 3]) -> float32 [N, CLASSICAL_DIM], L2-normalised."""
    check_frames(frames)
    if len(frames) == 0:
        return np.zeros((0, CLASSICAL_DIM), dtype=np.float32)
    return l2_normalise(np.stack([classical_features(f) for f in frames]))


# -- the embedder ----------------------------------------------------------------------

class _PooledBackbone(torch.nn.Module):
    """A backbone's last map averaged over the frame: ``N x 3 x H x W -> N x C``."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1].mean(dim=(2, 3))


def _local_storage():
    from infra.storage import Storage

    return Storage()


def source_warning(cfg: EmbedConfig) -> str | None:
    """The loud line a run gets when its embeddings do not come from DINO, else None."""
    if cfg.source == "dino" and cfg.checkpoint is None:
        return ("!!! embed.source is 'dino' but embed.checkpoint is not set: embeddings are CLASSICAL "
                "colour/shape features, NO DINO checkpoint is used !!!")
    if cfg.source == "classical":
        return "!!! embeddings are CLASSICAL colour/shape features, NO DINO checkpoint is used (embed.source='classical') !!!"
    return None


class FrameEmbedder:
    """Frames -> L2-normalised embeddings. Build once per worker, call on batches."""

    def __init__(self, cfg: EmbedConfig | None = None, storage=None, device=None) -> None:
        self.cfg = cfg or EmbedConfig()
        self.source = self.cfg.source
        self.checkpoint_sha256: str | None = None
        self.model: torch.nn.Module | None = None
        warning = source_warning(self.cfg)
        if warning:
            log.warning(warning)
        if self.source == "dino" and self.cfg.checkpoint is None:
            self.source = "classical"
        if self.source == "tiny_backbone":
            from models.build import TINY_ENCODERS
            from models.encoders import build_visual_backbone
            from tasks.enrich.sam import default_device

            self.device = torch.device(device) if device is not None else default_device()
            with (storage or _local_storage()).local_path(self.cfg.checkpoint, suffix=".pt") as path:
                self.checkpoint_sha256 = (storage or _local_storage()).sha256(path)
                backbone = build_visual_backbone(TINY_ENCODERS, path)
            self.model = _PooledBackbone(backbone).to(self.device).eval()
            self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
            self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        if self.source in ("dino", "dino_tiny"):
            from tasks.enrich.sam import default_device

            self.device = torch.device(device) if device is not None else default_device()
            model = build_vit(self.cfg.arch, self.cfg.image_size, tiny=self.source == "dino_tiny", seed=self.cfg.seed)
            if self.source == "dino":
                state, self.checkpoint_sha256 = read_torch_checkpoint(self.cfg.checkpoint, storage)
                load_vit_weights(model, state, f"DINO checkpoint {self.cfg.checkpoint!r} (arch {self.cfg.arch!r})")
            else:
                log.warning("embed.source is 'dino_tiny': a tiny RANDOMLY INITIALISED ViT (tests and benchmarks only)")
            self.model = model.to(self.device).eval()
            self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
            self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def dim(self) -> int:
        if self.model is not None:
            return int(self.model.num_features)
        return CLASSICAL_DIM

    def provenance(self) -> dict[str, Any]:
        prov: dict[str, Any] = {"embed_source": self.source, "requested_source": self.cfg.source, "dim": self.dim}
        if self.source == "classical":
            prov.update(arch=CLASSICAL_VERSION, checkpoint=None, checkpoint_sha256=None)
        elif self.source == "tiny_backbone":
            prov.update(arch="TinyCNN", image_size=self.cfg.image_size, checkpoint=self.cfg.checkpoint,
                        checkpoint_sha256=self.checkpoint_sha256, pooling="mean of the stride-32 map")
        else:
            prov.update(arch=self.cfg.arch if self.source == "dino" else f"{self.cfg.arch}+tiny{TINY_VIT}",
                        image_size=self.cfg.image_size, checkpoint=self.cfg.checkpoint if self.source == "dino" else None,
                        checkpoint_sha256=self.checkpoint_sha256, pooling="cls")
            if self.source == "dino_tiny":
                prov["seed"] = self.cfg.seed
        return prov

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames: uint8 [N, H, W, 3] -> float32 [N, D], unit rows."""
        check_frames(frames)
        if self.model is None:
            return classical_embedding(frames)
        out = []
        size = self.cfg.image_size
        for start in range(0, len(frames), self.cfg.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[start:start + self.cfg.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255.0
            # The whole frame, squashed to the ViT's square input: pairs compare whole scenes.
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
            x = (x.clamp(0, 1) - self.mean) / self.std
            out.append(F.normalize(self.model(x).float(), dim=1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)
