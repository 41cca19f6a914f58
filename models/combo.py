"""COMBO: Siam-Encoder -> FPN pixel decoder -> Bilateral-Fusion with audio -> masked-attention
decoder with audio-conditioned queries (Yang et al., CVPR 2024, "Cooperation Does Matter:
Exploring Multi-Order Bilateral Relations for Audio-Visual Segmentation"), plus its loss; after
the authors' code (github.com/yannqi/COMBO-AVS, ``models/maskformer_model.py`` and what it
builds).

Frames of a clip are processed as independent images (``N = B * T``); the clip structure
only matters to the adaptive inter-frame consistency loss.

Classes. COMBO learns the background as a class (``learn_background=True``, the default):
S4 / MS3 train two classes (0 background, 1 foreground; its configs' ``NUM_CLASSES: 2``), AVSS
71 (0 background, 1..70; ``NUM_CLASSES: 71``); its dataset mappers make every class id present
in a frame, background included, a mask target (``models.losses.targets_from_masks``).
Inference is Mask2Former's semantic inference (``MaskFormer.semantic_inference``),
``s_c = sum_q softmax(class logits)_q,c * sigmoid(mask_q)``; S4 / MS3 call a pixel foreground
where ``softmax(s)_1 > 0.5``, i.e. ``s_1 > s_0`` (``evaluation/sem_seg_evaluation.py``), AVSS
takes the argmax over the 71 scores. ``learn_background=False`` is ours: foreground classes
only, background derived as ``1 - sum_c s_c`` (see ``segment``).

Where ours differs from COMBO's code (the components' docstrings name theirs):
- Pixel decoder: an FPN (``models.pixel_decoder``) instead of MSDeformAttn, which needs a
  custom CUDA op.
- Audio queries: COMBO's decoder repeats the audio over the queries and reshapes without a
  permute (``audio_features.repeat(1, Q, 1).reshape(Q, -1, D)``), so query q of frame n gets
  the audio of frame ``(q * N + n) // Q``; ours adds each frame's own audio to all of its
  queries.
- VGGish: COMBO always runs it under ``no_grad``; ours trains it when ``freeze_audio=False``
  (the tiny size's default: there are no pretrained tiny weights).
- Mask losses: COMBO samples 12544 points per mask (``TRAIN_NUM_POINTS``); ours uses every pixel
  of the target unless ``num_points`` is given (``models.losses``).
- Consistency loss: COMBO's criteria reshape by a hard-coded 5 frames (AVSS clips have 10);
  ours uses the clip's T.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder
from models.backbones import IMAGENET_MEAN, IMAGENET_STD
from models.bilateral_fusion import BilateralFusion
from models.losses import ComboLoss
from models.pixel_decoder import FPNPixelDecoder
from models.siam_encoder import SiamEncoder
from models.transformer_decoder import MLP, MaskedAttentionDecoder


class COMBO(nn.Module):
    """Args:
        encoder: ``SiamEncoder`` (its Maskige branch absent = ``use_maskige=False`` ablation).
        pixel_decoder: ``FPNPixelDecoder`` over the encoder's channels.
        decoder: ``MaskedAttentionDecoder`` whose ``num_classes`` is the label space: C + 1 with
            ``learn_background`` (class 0 background, k the class id k), else C (label k - 1).
        audio_encoder: ``VGGishEncoder``, or None for the ``use_audio=False`` ablation (then no
            fusion, no audio MLP, nothing added to the queries; ``logmel`` is ignored).
        fusion: ``BilateralFusion`` over the mask features and the 128-d VGGish token (mode
            "bilateral" or "audio_to_visual"); given exactly when ``audio_encoder`` is.
        audio_mlp_dim: hidden width of the MLP that lifts the fused audio token to the queries'
            width, 128 -> m -> m -> D (COMBO's ``audio_mlp``: m = 4096).
        learn_background: COMBO's class setup (see the module docstring), or ours (False).
        criterion: ``ComboLoss`` used by ``loss``.
        pixel_mean, pixel_std: normalisation applied to frames and Maskiges in [0, 1].
        channels_last: convert images to ``torch.channels_last`` before the backbones (pair it
            with ``model.to(memory_format=torch.channels_last)``).

    ``forward(frames, logmel, maskige=None)``:
        frames: ``B x T x 3 x H x W`` float RGB in [0, 1], H and W divisible by 32.
        logmel: ``B x T x 96 x 64`` float, one VGGish example per frame (second).
        maskige: ``B x T x 3 x H x W`` float RGB in [0, 1] of the colour-coded Maskige;
            required when the Siam-Encoder has a Maskige branch, ignored otherwise.
    Returns a dict (N = B * T, frames in clip-major order: frame t of clip b is row b*T + t):
        ``pred_logits``: N x Q x (K + 1), K = ``decoder.num_classes``, last = no object.
        ``pred_masks``: N x Q x H/4 x W/4 mask logits (final layer).
        ``aux_outputs``: list of ``num_layers`` dicts with the same two keys (initial
            prediction, then layers 1..L-1), for deep supervision and the consistency loss.
        ``num_frames``: T (a Python int).
    """

    def __init__(
        self,
        *,
        encoder: SiamEncoder,
        pixel_decoder: FPNPixelDecoder,
        decoder: MaskedAttentionDecoder,
        audio_encoder: VGGishEncoder | None,
        fusion: BilateralFusion | None,
        audio_mlp_dim: int = 4096,
        learn_background: bool = True,
        criterion: ComboLoss | None = None,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if (audio_encoder is None) != (fusion is None):
            raise ValueError("COMBO takes an audio encoder and a fusion module together, or neither (use_audio=False)")
        self.encoder = encoder
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.audio_encoder = audio_encoder
        self.fusion = fusion
        self.learn_background = learn_background
        self.num_classes = decoder.num_classes - 1 if learn_background else decoder.num_classes
        if self.num_classes < 1:
            raise ValueError(f"a COMBO with learn_background={learn_background} needs a decoder with more classes")
        if audio_encoder is not None:
            # COMBO's audio_mlp: the fused 128-d token -> the queries' width
            self.audio_proj = MLP(audio_encoder.out_dim, audio_mlp_dim, pixel_decoder.hidden_dim, 3)
        else:
            self.audio_proj = None
        if criterion is not None and criterion.learn_background != learn_background:
            raise ValueError("the criterion and the model disagree on learn_background")
        self.criterion = criterion
        self.channels_last = channels_last
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def use_maskige(self) -> bool:
        return self.encoder.use_maskige

    @property
    def use_audio(self) -> bool:
        return self.audio_encoder is not None

    def _images(self, x: torch.Tensor, name: str, b: int, t: int) -> torch.Tensor:
        if x.dim() != 5 or x.shape[:3] != (b, t, 3):
            raise ValueError(f"{name} must be B x T x 3 x H x W with B={b}, T={t}, got {tuple(x.shape)}")
        x = (x.reshape(b * t, *x.shape[2:]) - self.pixel_mean) / self.pixel_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def encode_audio(self, logmel: torch.Tensor) -> torch.Tensor:
        """``logmel: B x T x 96 x 64`` -> one VGGish token per frame, ``(B*T) x 1 x 128``."""
        encoder = self.audio_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
            emb = encoder.forward_clip(logmel)
        return emb.reshape(-1, 1, emb.shape[-1])

    def forward(self, frames: torch.Tensor, logmel: torch.Tensor, maskige: torch.Tensor | None = None) -> dict:
        if frames.dim() != 5:
            raise ValueError(f"frames must be B x T x 3 x H x W, got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        if logmel.shape[:2] != (b, t):
            raise ValueError(f"logmel must be B x T x 96 x 64 with B={b}, T={t}, got {tuple(logmel.shape)}")
        images = self._images(frames, "frames", b, t)
        pre = None
        if self.use_maskige:
            if maskige is None:
                raise ValueError("this COMBO uses the Siam-Encoder: pass maskige (B x T x 3 x H x W)")
            pre = self._images(maskige, "maskige", b, t)
        feats = self.encoder(images, pre)
        multi_scale, mask_features = self.pixel_decoder(feats)
        audio_query = None
        if self.use_audio:
            mask_features, tokens = self.fusion(mask_features, self.encode_audio(logmel))
            audio_query = self.audio_proj(tokens.mean(dim=1))  # N x D, added to every query of its frame
        outputs = self.decoder(multi_scale, mask_features, audio_query)
        outputs["num_frames"] = t
        return outputs

    def loss(self, outputs: dict, targets: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        """``criterion(outputs, targets)``; see ``ComboLoss``. ``loss`` is the total."""
        if self.criterion is None:
            raise RuntimeError("this COMBO was built without a criterion")
        return self.criterion(outputs, targets)

    @torch.no_grad()
    def segment(self, outputs: dict, out_size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel prediction from the final layer, what ``models.metrics`` takes.

        With ``p = softmax(pred_logits)`` without its no-object column (N x Q x K) and
        ``m = sigmoid(pred_masks)`` upsampled bilinearly to ``out_size`` (N x Q x H x W), the
        class scores are ``s_c = sum_q p[q, c] * m[q]`` (N x K x H x W), COMBO's
        ``semantic_inference``. Then:

        - ``learn_background`` (COMBO), S4/MS3: the foreground LOGIT ``s_1 - s_0`` (N x H x W):
          ``sigmoid(s_1 - s_0) = softmax(s_0, s_1)_1``, the foreground probability COMBO's
          evaluator thresholds, so ``sigmoid(.) > 0.5`` exactly where foreground beats background
          and the F-score thresholds fall where COMBO's do.
        - ``learn_background`` (COMBO), AVSS: the scores ``N x (C + 1) x H x W``, channel 0 the
          learned background, channel k the class id k; COMBO takes their argmax.
        - ours, S4/MS3: the logit ``log(s / (1 - s))`` of the one foreground score, s clamped to
          [1e-6, 1 - 1e-6], so ``sigmoid(.) > 0.5`` exactly where ``s > 0.5``.
        - ours, AVSS: ``N x (C + 1) x H x W`` with channel 0 ``clamp(1 - sum_c s_c, 0, 1)`` and
          channel k the score of class id k.
        """
        probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]
        masks = F.interpolate(outputs["pred_masks"].float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        scores = torch.einsum("nqc,nqhw->nchw", probs, masks.sigmoid())
        if self.learn_background:
            return scores[:, 1] - scores[:, 0] if self.num_classes == 1 else scores
        if self.num_classes == 1:
            s = scores[:, 0].clamp(1e-6, 1 - 1e-6)
            return torch.log(s) - torch.log1p(-s)
        background = (1 - scores.sum(dim=1, keepdim=True)).clamp(0, 1)
        return torch.cat([background, scores], dim=1)
