"""COMBO: Siam-Encoder -> FPN pixel decoder -> Bilateral-Fusion with audio -> masked-attention
decoder with audio-conditioned queries (Yang et al., CVPR 2024), plus its loss.

Frames of a clip are processed as independent images (``N = B * T``); the clip structure
only matters to the adaptive inter-frame consistency loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import VGGishEncoder
from models.bilateral_fusion import BilateralFusion
from models.losses import ComboLoss
from models.pixel_decoder import FPNPixelDecoder
from models.siam_encoder import SiamEncoder
from models.transformer_decoder import MLP, MaskedAttentionDecoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class COMBO(nn.Module):
    """Args:
        encoder: ``SiamEncoder`` (its Maskige branch absent = ``use_maskige=False`` ablation).
        pixel_decoder: ``FPNPixelDecoder`` over the encoder's channels.
        decoder: ``MaskedAttentionDecoder``.
        audio_encoder: ``VGGishEncoder``, or None for the ``use_audio=False`` ablation (then no
            audio projection, no fusion, nothing added to the queries; ``logmel`` is ignored).
        fusion: ``BilateralFusion`` (mode "bilateral" or "audio_to_visual"); None with no audio.
        num_audio_tokens: audio tokens per frame the 128-d VGGish embedding is projected to.
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
        ``pred_logits``: N x Q x (num_classes + 1), last = no object.
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
        num_audio_tokens: int = 1,
        criterion: ComboLoss | None = None,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if audio_encoder is None and fusion is not None:
            raise ValueError("a fusion module needs an audio encoder (use_audio=False means no fusion)")
        self.encoder = encoder
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.audio_encoder = audio_encoder
        self.fusion = fusion
        hidden = pixel_decoder.hidden_dim
        self.num_audio_tokens = num_audio_tokens
        if audio_encoder is not None:
            # COMBO lifts the 128-d VGGish embedding with a 2-layer MLP before fusing it
            self.audio_proj = MLP(audio_encoder.out_dim, 4 * hidden, num_audio_tokens * hidden, 2)
        else:
            self.audio_proj = None
        self.criterion = criterion
        self.num_classes = decoder.num_classes
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
        """``logmel: B x T x 96 x 64`` -> audio tokens ``(B*T) x num_audio_tokens x D``."""
        encoder = self.audio_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
            emb = encoder.forward_clip(logmel)
        emb = emb.reshape(-1, emb.shape[-1])
        return self.audio_proj(emb).reshape(emb.shape[0], self.num_audio_tokens, -1)

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
            tokens = self.encode_audio(logmel)
            mask_features, tokens = self.fusion(mask_features, tokens)
            audio_query = tokens.mean(dim=1)
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
        """Per-pixel prediction from the final layer, Mask2Former's semantic inference.

        With ``p = softmax(pred_logits)`` without its no-object column (N x Q x C) and
        ``m = sigmoid(pred_masks)`` upsampled bilinearly to ``out_size`` (N x Q x H x W), the
        class scores are ``s_c = sum_q p[q, c] * m[q]`` (N x C x H x W).

        - Binary (``num_classes == 1``, S4/MS3): returns the foreground LOGIT ``N x H x W``,
          ``log(s / (1 - s))`` with s clamped to [1e-6, 1 - 1e-6]; so ``sigmoid(.) > 0.5``
          exactly where ``s > 0.5``, and thresholds on ``sigmoid`` are thresholds on ``s``.
        - Semantic (``num_classes == C > 1``, AVSS): returns scores ``N x (C + 1) x H x W``,
          channel 0 background ``= clamp(1 - sum_c s_c, 0, 1)``, channel k the class with id
          k (label k - 1). Take ``argmax`` over channels for the class-id map.
        """
        probs = outputs["pred_logits"].float().softmax(-1)[..., :-1]
        masks = F.interpolate(outputs["pred_masks"].float(), size=tuple(out_size), mode="bilinear", align_corners=False)
        scores = torch.einsum("nqc,nqhw->nchw", probs, masks.sigmoid())
        if self.num_classes == 1:
            s = scores[:, 0].clamp(1e-6, 1 - 1e-6)
            return torch.log(s) - torch.log1p(-s)
        background = (1 - scores.sum(dim=1, keepdim=True)).clamp(0, 1)
        return torch.cat([background, scores], dim=1)
