"""SAM for Maskiges: checkpoint loading, a tiny random SAM, and batched automatic mask generation.

Everything here is segment-anything's own code (``sam_model_registry``, ``ImageEncoderViT``,
``SamAutomaticMaskGenerator`` ...). What we add:

- :func:`load_sam` reads a checkpoint from a local path or s3:// URI and turns every way
  of failing into one clear error naming the URI.
- :func:`build_sam_tiny` assembles a small randomly initialised SAM from the same modules
  the real builders use, so tests and CPU benchmarks run the real code paths.
- :class:`BatchedSamMaskGenerator` runs the heavy image encoder on several frames at once
  (``image_batch`` per call) and then the generator's usual point-grid decoding per frame
  on the precomputed embedding. Its output is the unbatched generator's output.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import generate_crop_boxes

log = logging.getLogger(__name__)

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
TINY = "tiny"  # model type of build_sam_tiny's checkpoints


class SamCheckpointError(ValueError):
    """A SAM checkpoint could not be read or does not fit the model type; names the URI."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_sam_tiny(seed: int = 0, img_size: int = 256) -> Sam:
    """A tiny randomly initialised SAM from segment-anything's own modules.

    Same classes and wiring as ``build_sam_vit_b`` (windowed ViT with relative positions and
    global-attention blocks, prompt encoder, two-way-transformer mask decoder), only smaller:
    embed_dim 32, depth 2, prompt dim 32, and an input of ``img_size`` (a multiple of 16;
    SAM's ResizeLongestSide, padding and mask up-scaling all read ``image_encoder.img_size``,
    so a smaller input is consistent). Image embedding: 32 x img_size/16 x img_size/16.
    """
    if img_size % 16 != 0 or img_size < 64:
        raise ValueError(f"build_sam_tiny: img_size must be a multiple of 16, >= 64, got {img_size}")
    prompt_dim = 32
    grid = img_size // 16
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        sam = Sam(
            image_encoder=ImageEncoderViT(
                depth=2,
                embed_dim=32,
                img_size=img_size,
                mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                num_heads=2,
                patch_size=16,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=[1],
                window_size=min(14, grid // 2),
                out_chans=prompt_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return sam.eval()


def _build(model_type: str, state_dict: dict) -> Sam:
    if model_type == TINY:  # its input size is read off the checkpoint's position grid
        pos = state_dict.get("image_encoder.pos_embed")
        grid = int(pos.shape[1]) if isinstance(pos, torch.Tensor) and pos.ndim == 4 else 16
        return build_sam_tiny(img_size=16 * grid)
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"SAM model_type must be one of {SAM_MODEL_TYPES} (or {TINY!r}), got {model_type!r}")
    return sam_model_registry[model_type](checkpoint=None)


def load_sam_with_sha256(model_type: str, checkpoint: str, storage=None, *,
                         device: torch.device | str | None = None) -> tuple[Sam, str]:
    """Build ``sam_model_registry[model_type]`` and load ``checkpoint`` (path or s3:// URI) into it.

    Returns the model (eval mode, on ``device``, default GPU when available) and the
    checkpoint's sha256 for provenance. The state dict is read with ``weights_only=True``:
    a checkpoint from outside cannot run code. Any failure (missing, unreadable, corrupt,
    or made for another model type) raises :class:`SamCheckpointError` naming the URI.
    """
    from infra.storage import Storage

    storage = storage or Storage()
    if model_type != TINY and model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"SAM model_type must be one of {SAM_MODEL_TYPES} (or {TINY!r}), got {model_type!r}")
    where = f"SAM checkpoint {checkpoint!r} (model_type {model_type!r})"
    try:
        with storage.local_path(checkpoint, suffix=".pth") as path:
            if not os.path.exists(path):
                raise FileNotFoundError(path)
            digest = storage.sha256(path)
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SamCheckpointError(f"{where}: file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on a corrupt file
        raise SamCheckpointError(f"{where}: cannot be read as a torch state dict ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]  # training checkpoints wrap the weights
    if not isinstance(state_dict, dict):
        raise SamCheckpointError(f"{where}: expected a state dict, found {type(state_dict).__name__}")
    model = _build(model_type, state_dict)  # after reading: a bad URI fails before building vit_h
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = [line.strip() for line in str(e).splitlines() if line.strip()][:3]
        raise SamCheckpointError(f"{where}: weights do not fit this model type: {' '.join(first)[:500]}") from None
    return model.to(device or default_device()).eval(), digest


def load_sam(model_type: str, checkpoint: str, storage=None, *, device: torch.device | str | None = None) -> Sam:
    """``sam_model_registry[model_type]`` with the weights of ``checkpoint`` (local path or s3://)."""
    return load_sam_with_sha256(model_type, checkpoint, storage, device=device)[0]


class _PrecomputedPredictor(SamPredictor):
    """A SamPredictor whose ``set_image`` takes the next precomputed embedding from a queue.

    The automatic generator calls ``set_image`` once per crop, in crop-box order; we queue
    the batched encoder's outputs in that same order.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__(model)
        self.queue: deque[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = deque()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if not self.queue:
            raise RuntimeError("batched SAM: no precomputed embedding left for this crop")
        features, original_size, input_size = self.queue.popleft()
        if tuple(image.shape[:2]) != original_size:
            raise RuntimeError(f"batched SAM: crop of size {image.shape[:2]} met an embedding made for "
                               f"{original_size}")
        self.reset_image()
        self.features = features
        self.original_size = original_size
        self.input_size = input_size
        self.is_image_set = True


class BatchedSamMaskGenerator(SamAutomaticMaskGenerator):
    """SamAutomaticMaskGenerator that encodes ``image_batch`` images per image-encoder call.

    ``generate_batch(frames)`` returns, per frame, exactly the records ``generate(frame)``
    of the plain generator would (same keys: segmentation, area, bbox, predicted_iou,
    point_coords, stability_score, crop_box). With ``crop_n_layers > 0`` every crop of every
    frame is one encoder input, batched the same way.
    """

    def __init__(self, model: Sam, image_batch: int = 4, **generator_kwargs: Any) -> None:
        super().__init__(model, **generator_kwargs)
        if image_batch < 1:
            raise ValueError(f"image_batch must be >= 1, got {image_batch}")
        self.image_batch = image_batch
        self.predictor = _PrecomputedPredictor(model)

    def _encoder_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """What SamPredictor.set_image feeds the encoder: resized, normalised, padded [1,3,S,S]."""
        resized = self.predictor.transform.apply_image(image)
        t = torch.as_tensor(resized, device=self.predictor.device).permute(2, 0, 1).contiguous()[None]
        return self.predictor.model.preprocess(t), (int(t.shape[-2]), int(t.shape[-1]))

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Image embeddings [1, C, h, w] and model input sizes of images (uint8 HWC), batched."""
        out: list[tuple[torch.Tensor, tuple[int, int]]] = []
        for start in range(0, len(images), self.image_batch):
            inputs = [self._encoder_input(im) for im in images[start:start + self.image_batch]]
            features = self.predictor.model.image_encoder(torch.cat([x for x, _ in inputs]))
            out.extend((features[i:i + 1], size) for i, (_, size) in enumerate(inputs))
        return out

    def generate_batch(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        """Masks of every frame. frames: uint8 [N, H, W, 3] (or a list of HWC arrays).

        Returns N lists of SAM mask records (see SamAutomaticMaskGenerator.generate).
        A failure raises RuntimeError naming the frame (or, for the encoder, the frames).
        """
        frames = list(frames)
        results: list[list[dict[str, Any]]] = []
        # Encode image_batch frames' crops together, then decode those frames one by one,
        # so that at most one batch of embeddings is held at a time.
        for start in range(0, len(frames), self.image_batch):
            group = frames[start:start + self.image_batch]
            crops: list[np.ndarray] = []
            for i, image in enumerate(group, start):
                if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
                    raise ValueError(f"frame {i} must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
                boxes, _ = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
                crops.extend(image[y0:y1, x0:x1, :] for x0, y0, x1, y1 in boxes)
            try:
                encoded = self.encode(crops)
            except Exception as e:  # noqa: BLE001 - name the frames, keep the cause
                raise RuntimeError(f"frames {start}..{start + len(group) - 1}: SAM image encoder failed "
                                   f"({type(e).__name__}: {e})") from e
            for crop, (features, input_size) in zip(crops, encoded):
                self.predictor.queue.append((features, tuple(crop.shape[:2]), input_size))
            try:
                for i, image in enumerate(group, start):
                    try:
                        results.append(self.generate(image))
                    except Exception as e:  # noqa: BLE001
                        raise RuntimeError(f"frame {i}: SAM mask decoding failed ({type(e).__name__}: {e})") from e
            finally:
                self.predictor.queue.clear()
        return results
