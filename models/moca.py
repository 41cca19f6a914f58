"""MoCA: unsupervised audio-visual segmentation by modality correspondence alignment (Bhosale et
al., arXiv 2403.14203, "Unsupervised Audio-Visual Segmentation with Modality Alignment"), and
the two unsupervised baselines it is measured against. No masks anywhere in training.

The road of one frame (N = B * T frames, clip-major: frame t of clip b is row b*T + t)::

    frame -> frozen backbone -> map of stage ``feature_stage`` (N x C x h x w; P = h*w pixels)
          -> AdaAV adapters with the frame's audio (VGGish, frozen) -> linear head -> unit
             pixel embeddings z (N x P x D)
    audio -> frozen VGGish -> linear head -> unit audio embedding e (N x D)
    audio-pixel map   s(p) = <z(p), e>          (a cosine, in [-1, 1])

Training (``MoCA.training_loss``): an anchor frame with its audio, its mined positive frames
(similar by DINO, other clips) and negative frames (``pairs.parquet``). Every image of the
tuple is embedded with the ANCHOR's audio, so an audio-only shortcut (the adapter writing the
audio into every pixel) lifts every score of the tuple alike and cannot lower the loss; only
visual content that answers the anchor's sound can.

Pixel matching aggregation (PMA, ``pixel_matching_aggregation``): the map of an image x is
strengthened by its pixel matches in paired images y (in training: the partner x is paired
with the anchor i)::

    c_y(p)  = max_q <z_x(p), z_y(q)>,   q*_y(p) = argmax_q <z_x(p), z_y(q)>
    w_y(p)  = max(c_y(p), 0)
    ŝ_x(p)  = (s_x(p) + sum_y w_y(p) * s_y(q*_y(p))) / (1 + sum_y w_y(p))

a weighted mean of the pixel's own score (weight 1) and the scores of its best match in each
paired image (weight: how well it matches). The max over q makes it blind to where the
object sits in the paired image (translation, rotation, scale within the grid). An image
paired with itself gives ŝ = s.

Image-level score (``image_score``): the map pooled by a softmax over its pixels, a smooth
max, ``S = sum_p softmax(ŝ / tau)_p * ŝ(p)`` (tau = ``pool_temperature``): "something in this
image answers the anchor's sound". Without PMA (ŝ = s) it equals <g, e> for the image-level
audio-visual embedding g = sum_p softmax(s / tau)_p z(p), the audio-attended mean of the pixel
embeddings. The loss works on the scalar S, not on g against other pooled vectors, because
pooled visual vectors of DINO-mined pairs already tell positives from negatives without audio.

Contrastive loss (``contrastive_loss``), margin ranking over every (positive, negative) pair
of an anchor, the anchor itself counted as a positive (paired with itself: S = pooled s)::

    L = mean_{n, j, k} max(0, margin - S(pos_nj) + S(neg_nk))

Inference (``forward``): no pairs; the map s of each frame is upsampled (bilinear) to the
Maskige's size and matched to class-agnostic mask proposals (``match_proposals``): each
proposal k gets the mean m_k of s over its pixels; a pixel of proposal k gets the logit
``(m_k - threshold) * logit_scale``, so it is marked (logit > 0) exactly where its proposal's
mean score beats the threshold; pixels outside every proposal get ``(-1 - threshold) *
logit_scale``, as if their mean were -1, the lowest a cosine takes (never marked). Without a
Maskige (or with ``use_proposals=False``) the pixel logits are ``(s - threshold) * logit_scale``.

Proposals from the Maskige (``maskige_proposals``): the model reads the Maskige as the loader
gives it, RGB in [0, 1]. We do not invert the palette: every distinct colour of a frame is one
proposal, and only the colour of "no mask" (palette index 0, (120, 120, 120)) is needed. This
keeps ``forward`` on the inputs every model takes and keeps the palette in ``tasks``.

Choices (the paper gives no code; every place where ours had to choose, and every deviation):
- Encoders: the paper uses ImageBind (ViT-H, its image and audio towers share one embedding
  space). Ours: the project's frozen backbone (TinyCNN for tests, timm ResNet-50 for real)
  and frozen VGGish; because their spaces are not shared, two linear heads (visual
  C -> D after a parameter-free LayerNorm, audio 128 -> D) are trained with the adapters.
  The visual map is stage ``feature_stage`` (2: stride 16, near ImageBind's 14-pixel patches).
- Frozen: the backbone never gets gradients (requires_grad False, run under no_grad) and stays
  in eval mode through ``train()`` (its BatchNorm statistics never move); VGGish is frozen by
  default (the builder's ``freeze_audio=True``) as ImageBind's audio tower is.
- AdaAV placement: the paper inserts adapters into the frozen ViT's layers; ours stacks
  ``num_adapters`` adapter blocks on the frozen map (a CNN's stages cannot take tokens in
  between without rewriting timm's models); the frozen features are then computed once.
- AdaAV block: pre-LayerNorm cross-attention from the pixels (queries) to the audio tokens
  (keys, values) in a bottleneck of ``adapter_dim``, with a null key of logit 0 and value 0,
  so a pixel may take no audio (one audio token per frame makes a plain softmax give every
  pixel the same message); then a bottleneck MLP (down, GELU, up), Houlsby-style. Both are
  residual with zero-initialised output projections: the adapter starts as the identity.
- Audio tokens: one VGGish embedding per frame (its own second); the paper's audio tokens
  are not specified in the text we have.
- PMA: hard max over the paired image's pixels, weights max(c, 0), a weighted mean with the
  pixel's own score at weight 1 (formula above). Direction in training: each partner's map
  is strengthened by its matches in the anchor (the image whose audio is used); with PMA
  off (the similarity baseline) a partner is scored by its own map alone.
- Partners: every image of a training tuple is embedded with the anchor's audio; the partners'
  own audio is not used (nor needed from the data).
- Image-level pooling: a softmax over the pixels (``pool_temperature``, default 0.1), a smooth
  max (a sounding object may fill a small part of the frame; a mean would drown it).
- Loss: the paper speaks of a margin and of SSD and NCC terms whose definitions we do not
  have; ours is the margin ranking above (``margin``, default 0.5), the anchor counted as a
  positive. Missing partners (rows of ``pairs.parquet`` short of positives or negatives) are
  masked out of the mean.
- Threshold: absolute, on the cosine map (``threshold``, default 0). The ranking loss pushes
  S(pos) up and S(neg) down with equal force from scores near 0 at the start, so 0 sits
  between the two; a threshold picked on validation data is better, and the trainer picks one
  (``tasks.train.moca.calibrate_threshold``: the best val mIoU on a grid, stored in the
  checkpoint). Measured on SynthAVS hard S4 (bench/quality.py, one epoch): at 0, MoCA-tiny
  marked nothing on any test frame (mIoU 0.125, the "nothing" oracle).
- Proposals: every distinct colour is one proposal. The ADE20K palette gives indices 6 and
  48 the same colour (140, 140, 140), so in a frame with 48 or more masks those two merge into
  one proposal. A Maskige of zeros (the loader's "absent") is one proposal covering the frame.
- Classes: binary (S4 / MS3) only; ``num_classes > 1`` raises (AVSS is not supported).
- At inference the frames of a clip are not paired with each other (PMA is used in training
  only).

Baselines:
- ``SimilarityBaseline``: no adapter, no PMA; the frozen map through ONE trainable linear layer
  into VGGish's 128-d space (no audio head) and the cosine with the frame's VGGish embedding,
  thresholded per pixel (proposal matching only with ``use_proposals=True``). Trained, if at
  all, with the same ``training_loss`` (without PMA); untrained it is a random projection.
- ``SaliencyBaseline``: ignores the audio and picks, per frame, the most salient proposal.
  Saliency of a pixel: the distance of its frozen feature from the frame's mean feature,
  divided by the frame's mean distance (global contrast in deep features, after Cheng et al.,
  "Global contrast based salient region detection": the object that sounds is most often the
  one that stands out); of a proposal: the mean over its pixels. Proposals under
  ``min_area`` of the frame are not candidates (tiny masks have extreme contrast). Logits:
  ``logit_scale * (sal_k - max over the other candidates)`` for a candidate k (the other
  candidates' max is 0 when there is none), ``-logit_scale * best`` elsewhere: exactly the
  most salient candidate is marked (none on a tie). It needs the Maskige.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.audio_encoder import LOGMEL_BANDS, LOGMEL_FRAMES, VGGishEncoder
from models.pixel_mask_model import PixelMaskModel

# Palette index 0 ("no mask") of the Maskige palette (tasks.enrich.maskige.ADE20K_PALETTE[0]).
MASKIGE_UNCOVERED_RGB = (120, 120, 120)


class AudioPixelMap(NamedTuple):
    """Unit pixel embeddings ``pixels: ... x P x D`` and audio-pixel scores ``scores: ... x P``."""

    pixels: torch.Tensor
    scores: torch.Tensor


# ---- the pieces, as plain functions -------------------------------------------------------------


def pixel_matching_aggregation(
    pixels: torch.Tensor, scores: torch.Tensor, pair_pixels: torch.Tensor, pair_scores: torch.Tensor
) -> torch.Tensor:
    """PMA (module docstring): the map of each image strengthened by its matches in K paired images.

    pixels: N x P x D, scores: N x P (the image); pair_pixels: N x K x Q x D, pair_scores:
    N x K x Q (its paired images). Returns ŝ: N x P,
    ``(s(p) + sum_k w_k(p) s_k(q*_k(p))) / (1 + sum_k w_k(p))`` with ``q*_k(p)`` the pixel of
    paired image k most similar to p and ``w_k(p) = max(<z(p), z_k(q*)>, 0)``.
    """
    similarity = torch.einsum("npd,nkqd->nkpq", pixels, pair_pixels)  # N x K x P x Q
    match, where = similarity.max(dim=-1)  # N x K x P
    matched_scores = pair_scores.gather(-1, where)  # N x K x P
    weight = match.clamp(min=0)
    return (scores + (weight * matched_scores).sum(1)) / (1 + weight.sum(1))


def image_score(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Image-level score, a smooth max over the last (pixel) axis: ``sum_p softmax(s / t)_p s_p``."""
    return (torch.softmax(scores / temperature, dim=-1) * scores).sum(-1)


def pair_scores(
    anchor: AudioPixelMap, partners: AudioPixelMap, temperature: float, aggregate: bool = True
) -> torch.Tensor:
    """Image-level scores of K partners of each anchor: N x K.

    anchor: ``N x P x D`` / ``N x P``; partners: ``N x K x P x D`` / ``N x K x P``, embedded with the
    anchor's audio. With ``aggregate``, each partner's map is first strengthened by its matches
    in its anchor (PMA with the anchor as the one paired image); otherwise its own map is pooled.
    """
    n, k, p, d = partners.pixels.shape
    scores = partners.scores
    if aggregate:
        scores = pixel_matching_aggregation(
            partners.pixels.reshape(n * k, p, d),
            partners.scores.reshape(n * k, p),
            anchor.pixels.repeat_interleave(k, dim=0)[:, None],
            anchor.scores.repeat_interleave(k, dim=0)[:, None],
        ).reshape(n, k, p)
    return image_score(scores, temperature)


def margin_ranking(
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    positive_valid: torch.Tensor | None = None,
    negative_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_{n,j,k} max(0, margin - positive[n, j] + negative[n, k])`` over the valid pairs.

    positive: N x K, negative: N x M image-level scores; positive_valid, negative_valid (same
    shapes, bool) drop missing partners (False = padding). Zero (with a graph) when no pair is
    valid.
    """
    hinge = (margin - positive[:, :, None] + negative[:, None, :]).clamp(min=0)  # N x K x M
    valid = torch.ones_like(hinge, dtype=torch.bool)
    if positive_valid is not None:
        valid = valid & positive_valid[:, :, None]
    if negative_valid is not None:
        valid = valid & negative_valid[:, None, :]
    return (hinge * valid).sum() / valid.sum().clamp(min=1)


def contrastive_loss(
    anchor: AudioPixelMap,
    positives: AudioPixelMap,
    negatives: AudioPixelMap,
    margin: float = 0.5,
    temperature: float = 0.1,
    aggregate: bool = True,
    positive_valid: torch.Tensor | None = None,
    negative_valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Image-level contrastive loss over mined pairs (module docstring), every map made with the
    anchor's audio.

    anchor: ``N x P x D`` pixels and ``N x P`` scores; positives: ``N x K x P x D`` / ``N x K x P``;
    negatives: ``N x M x P x D`` / ``N x M x P``; positive_valid, negative_valid: N x K / N x M
    bool (False = no partner). The anchor is a positive too (paired with itself, its score is its pooled map). Returns
    ``loss`` and, detached, the mean positive and negative image-level scores.
    """
    own = image_score(anchor.scores, temperature)[:, None]  # N x 1
    positive = torch.cat([own, pair_scores(anchor, positives, temperature, aggregate)], dim=1)
    negative = pair_scores(anchor, negatives, temperature, aggregate)
    if positive_valid is not None:
        positive_valid = torch.cat([torch.ones_like(positive_valid[:, :1]), positive_valid.bool()], dim=1)
    loss = margin_ranking(positive, negative, margin, positive_valid, negative_valid)
    return {"loss": loss, "positive_score": positive.detach().mean(), "negative_score": negative.detach().mean()}


def maskige_proposals(maskige: torch.Tensor, uncovered_rgb: Sequence[int] = MASKIGE_UNCOVERED_RGB) -> torch.Tensor:
    """Proposal ids from Maskige colours: ``N x 3 x H x W`` RGB in [0, 1] -> ``N x H x W`` int64.

    Every distinct colour of a frame is one proposal (ids are unique across the batch, > 0);
    pixels of ``uncovered_rgb`` (0..255, the colour of palette index 0) get 0, "no proposal".
    """
    if maskige.dim() != 4 or maskige.shape[1] != 3:
        raise ValueError(f"maskige must be N x 3 x H x W, got {tuple(maskige.shape)}")
    rgb = (maskige.float() * 255).round().long().clamp(0, 255)
    code = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]  # N x H x W, < 2**24
    r, g, b = (int(c) for c in uncovered_rgb)
    uncovered = code == ((r << 16) | (g << 8) | b)
    frame = torch.arange(code.shape[0], device=code.device).view(-1, 1, 1)
    _, ids = torch.unique(frame * (1 << 24) + code, return_inverse=True)
    return torch.where(uncovered, torch.zeros_like(ids), ids + 1)


def _proposal_index(proposals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``N x H x W`` ids (0 = none; ids may repeat across frames) -> (index ``N x H x W`` into
    G (frame, id) groups, frame of each group G, whether each group is a proposal G)."""
    n = proposals.shape[0]
    span = int(proposals.max()) + 1 if proposals.numel() else 1
    frame = torch.arange(n, device=proposals.device).view(-1, 1, 1)
    groups, index = torch.unique(frame * span + proposals.long(), return_inverse=True)
    return index, groups // span, groups % span != 0


def _group_mean(values: torch.Tensor, index: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` per group and each group's pixel count (both of length count)."""
    flat = index.flatten()
    sums = torch.zeros(count, device=values.device).index_add_(0, flat, values.float().flatten())
    area = torch.bincount(flat, minlength=count).float()
    return sums / area.clamp(min=1), area


def match_proposals(
    score_map: torch.Tensor, proposals: torch.Tensor, threshold: float, logit_scale: float
) -> torch.Tensor:
    """Proposal matching: ``score_map`` (cosine, ``N x H x W``) and ``proposals`` (ids, ``N x H x W``,
    0 = none) -> logits ``N x H x W``: ``(m_k - threshold) * logit_scale`` on proposal k, whose mean
    score is m_k; ``(-1 - threshold) * logit_scale`` outside every proposal."""
    if score_map.shape != proposals.shape:
        raise ValueError(f"score map {tuple(score_map.shape)} and proposals {tuple(proposals.shape)} differ in shape")
    index, _, is_proposal = _proposal_index(proposals)
    mean, _ = _group_mean(score_map, index, len(is_proposal))
    mean = torch.where(is_proposal, mean, torch.full_like(mean, -1.0))
    return (mean[index] - threshold) * logit_scale


def pixel_saliency(features: torch.Tensor) -> torch.Tensor:
    """Global contrast: ``N x C x h x w`` -> ``N x h x w``, each pixel's feature distance from the
    frame's mean feature divided by the frame's mean such distance (1 = ordinary)."""
    distance = (features - features.mean(dim=(2, 3), keepdim=True)).norm(dim=1)
    return distance / distance.mean(dim=(1, 2), keepdim=True).clamp(min=1e-12)


def pick_salient_proposal(
    saliency: torch.Tensor, proposals: torch.Tensor, min_area: float, logit_scale: float
) -> torch.Tensor:
    """The most salient proposal of each frame: ``saliency``, ``proposals`` ``N x H x W`` -> logits.

    A candidate is a proposal covering at least ``min_area`` of its frame; its saliency is the
    mean of ``saliency`` over its pixels. Candidate k: ``logit_scale * (sal_k - max of the other
    candidates' saliency, 0 if none)``; everything else: ``-logit_scale * best`` (best = the
    frame's highest candidate saliency, 0 if none). Only the top candidate is > 0.
    """
    if saliency.shape != proposals.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and proposals {tuple(proposals.shape)} differ in shape")
    n, h, w = proposals.shape
    index, frame, is_proposal = _proposal_index(proposals)
    count = len(frame)
    sal, area = _group_mean(saliency, index, count)
    candidate = is_proposal & (area >= min_area * h * w)
    masked = torch.where(candidate, sal, torch.full_like(sal, -torch.inf))
    best = torch.full((n,), -torch.inf, device=sal.device).scatter_reduce(0, frame, masked, "amax")
    is_top = candidate & (masked == best[frame])
    group = torch.arange(count, device=sal.device)
    first = torch.full((n,), count, device=sal.device).scatter_reduce(
        0, frame, torch.where(is_top, group, torch.full_like(group, count)), "amin"
    )
    chosen = group == first[frame]
    second = torch.full((n,), -torch.inf, device=sal.device).scatter_reduce(
        0, frame, torch.where(chosen, torch.full_like(masked, -torch.inf), masked), "amax"
    )
    best, second = best.clamp(min=0), second.clamp(min=0)
    others = torch.where(chosen, second[frame], best[frame])
    logits = torch.where(candidate, sal - others, -best[frame]) * logit_scale
    return logits[index]


# ---- the audio-visual adapter ------------------------------------------------------------------


class AudioVisualAdapter(nn.Module):
    """AdaAV block: audio cross-attention with a null key, then a bottleneck MLP; both residual,
    output projections zero-initialised (the block starts as the identity).

    Args:
        channels: C, width of the visual tokens (the frozen map's channels).
        audio_dim: width of the audio tokens (128 for VGGish).
        adapter_dim: r, the bottleneck width of both parts.
        num_heads: attention heads (r divisible by it).

    ``forward(x: N x P x C, audio: N x M x audio_dim) -> N x P x C``. Per head, pixel p takes
    ``sum_m a_pm v_m`` with ``a_p = softmax([q_p . k_1, ..., q_p . k_M, 0] / sqrt(r / heads))``
    without its last (null) entry.
    """

    def __init__(self, channels: int, audio_dim: int = 128, adapter_dim: int = 64, num_heads: int = 4) -> None:
        super().__init__()
        if adapter_dim % num_heads:
            raise ValueError(f"adapter_dim {adapter_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = adapter_dim // num_heads
        self.norm_attn = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, adapter_dim)
        self.key = nn.Linear(audio_dim, adapter_dim)
        self.value = nn.Linear(audio_dim, adapter_dim)
        self.out = nn.Linear(adapter_dim, channels)
        self.norm_mlp = nn.LayerNorm(channels)
        self.down = nn.Linear(channels, adapter_dim)
        self.up = nn.Linear(adapter_dim, channels)
        for layer in (self.out, self.up):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def attention(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Attention weights on the audio tokens, null key left out: ``N x heads x P x M``."""
        n, p, _ = x.shape
        q = self.query(self.norm_attn(x)).view(n, p, self.num_heads, self.head_dim)
        k = self.key(audio).view(n, audio.shape[1], self.num_heads, self.head_dim)
        logits = torch.einsum("nphd,nmhd->nhpm", q, k) / self.head_dim**0.5
        null = torch.zeros_like(logits[..., :1])
        return torch.cat([logits, null], dim=-1).softmax(dim=-1)[..., :-1]

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        n, p, _ = x.shape
        v = self.value(audio).view(n, audio.shape[1], self.num_heads, self.head_dim)
        message = torch.einsum("nhpm,nmhd->nphd", self.attention(x, audio), v).reshape(n, p, -1)
        x = x + self.out(message)
        return x + self.up(F.gelu(self.down(self.norm_mlp(x))))


# ---- the models ---------------------------------------------------------------------------------


class _FrozenFeatures(PixelMaskModel):
    """A frozen backbone's map of one stage; binary (num_classes = 1) only; no supervised loss."""

    def __init__(self, backbone: nn.Module, feature_stage: int, num_classes: int, channels_last: bool) -> None:
        if num_classes != 1:
            raise ValueError(
                f"{type(self).__name__} segments sounding objects, not classes: it supports num_classes=1 "
                f"(S4 / MS3) only, got num_classes={num_classes} (AVSS is not supported)"
            )
        super().__init__(num_classes, channels_last=channels_last)
        if not 0 <= feature_stage < len(backbone.channels):
            raise ValueError(
                f"feature_stage must index the backbone's {len(backbone.channels)} maps, got {feature_stage}"
            )
        self.backbone = backbone.requires_grad_(False).eval()
        self.feature_stage = feature_stage
        self.feature_channels = backbone.channels[feature_stage]

    def train(self, mode: bool = True) -> "_FrozenFeatures":
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics never move
        return self

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``N x 3 x H x W`` -> the frozen map ``N x C x h x w`` (no graph)."""
        with torch.no_grad():
            return self.backbone(images)[self.feature_stage].float()

    def loss(self, outputs: dict, targets: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        raise RuntimeError(
            f"{type(self).__name__} is unsupervised and never sees masks; train MoCA with "
            "training_loss(frames, logmel, positive_frames, negative_frames)"
        )


class MoCA(_FrozenFeatures):
    """MoCA (module docstring): frozen encoders, AdaAV adapters, PMA in an image-level contrastive
    loss, proposal matching at inference.

    Args:
        backbone: a ``models.backbones.Backbone`` (frozen here).
        audio_encoder: ``VGGishEncoder`` (frozen by the builder unless told otherwise).
        feature_stage: which of the backbone's four maps (strides 4..32) the adapters read.
        embed_dim: D, the joint audio-visual embedding.
        adapter_dim, num_adapters, num_heads: the AdaAV blocks (none: no adapter).
        audio_head: a trainable audio head 128 -> D; False: none, the audio embedding is VGGish's
            own (``embed_dim`` must then be its width).
        aggregate: PMA in the loss (False: each partner pooled on its own map).
        margin, pool_temperature: the contrastive loss and the image-level pooling.
        use_proposals: match the map to the Maskige's proposals when a Maskige is given.
        threshold, logit_scale: the inference logits (module docstring).
        uncovered_rgb: the Maskige colour of "no mask".
        num_classes: 1 (anything else raises); channels_last: see ``PixelMaskModel``.

    ``forward(frames: B x T x 3 x H x W in [0, 1], logmel: B x T x 96 x 64, maskige: B x T x 3 x
    H' x W' in [0, 1] or None)`` -> ``{"masks": N x 1 x H' x W' logits (H x W without a Maskige),
    "score_map": N x h x w audio-pixel cosines, "num_frames": T}``. ``segment(outputs, size)``
    gives ``N x size`` logits, > 0 = sounding. Given ``positive_frames`` and ``negative_frames``
    (keyword-only), ``forward`` is ``training_loss`` instead: a DDP-wrapped model syncs gradients
    only through its forward, so a training loop calls ``model(frames=..., logmel=...,
    positive_frames=..., negative_frames=...)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        audio_encoder: VGGishEncoder,
        *,
        feature_stage: int = 2,
        embed_dim: int = 256,
        adapter_dim: int = 64,
        num_adapters: int = 2,
        num_heads: int = 4,
        audio_head: bool = True,
        aggregate: bool = True,
        margin: float = 0.5,
        pool_temperature: float = 0.1,
        use_proposals: bool = True,
        threshold: float = 0.0,
        logit_scale: float = 10.0,
        uncovered_rgb: Sequence[int] = MASKIGE_UNCOVERED_RGB,
        num_classes: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(backbone, feature_stage, num_classes, channels_last)
        if audio_encoder is None:
            raise ValueError(f"{type(self).__name__} is audio-visual: it needs an audio encoder (use_audio=True)")
        if not -1.0 < threshold < 1.0:
            raise ValueError(f"threshold is on a cosine map and must lie in (-1, 1), got {threshold}")
        if margin < 0 or pool_temperature <= 0 or logit_scale <= 0:
            raise ValueError(f"need margin >= 0, pool_temperature > 0, logit_scale > 0; got {margin}, "
                             f"{pool_temperature}, {logit_scale}")
        if not audio_head and embed_dim != audio_encoder.out_dim:
            raise ValueError(f"without an audio head embed_dim must be the audio width {audio_encoder.out_dim}")
        self.audio_encoder = audio_encoder
        c, a = self.feature_channels, audio_encoder.out_dim
        self.adapters = nn.ModuleList(AudioVisualAdapter(c, a, adapter_dim, num_heads) for _ in range(num_adapters))
        self.visual_head = nn.Sequential(nn.LayerNorm(c, elementwise_affine=False), nn.Linear(c, embed_dim))
        self.audio_head = nn.Linear(a, embed_dim) if audio_head else None
        self.aggregate = aggregate
        self.margin = margin
        self.pool_temperature = pool_temperature
        self.use_proposals = use_proposals
        self.threshold = threshold
        self.logit_scale = logit_scale
        self.uncovered_rgb = tuple(int(v) for v in uncovered_rgb)

    def embed(self, images: torch.Tensor, audio: torch.Tensor) -> tuple[AudioPixelMap, tuple[int, int]]:
        """Normalised ``N x 3 x H x W`` and VGGish embeddings ``N x 128`` (the audio each image is
        embedded with) -> the audio-pixel map (``N x P x D`` unit pixels, ``N x P`` cosines) and (h, w)."""
        features = self.frozen_features(images)
        h, w = features.shape[-2:]
        x = features.flatten(2).transpose(1, 2)  # N x P x C
        tokens = audio[:, None, :].to(x.dtype)  # one audio token per image
        for adapter in self.adapters:
            x = adapter(x, tokens)
        pixels = F.normalize(self.visual_head(x), dim=-1)
        e = self.audio_head(tokens[:, 0]) if self.audio_head is not None else tokens[:, 0]
        e = F.normalize(e, dim=-1)
        return AudioPixelMap(pixels, torch.einsum("npd,nd->np", pixels, e)), (h, w)

    def forward(
        self,
        frames: torch.Tensor,
        logmel: torch.Tensor | None = None,
        maskige: torch.Tensor | None = None,
        *,
        positive_frames: torch.Tensor | None = None,
        negative_frames: torch.Tensor | None = None,
        positive_valid: torch.Tensor | None = None,
        negative_valid: torch.Tensor | None = None,
    ) -> dict:
        if positive_frames is not None or negative_frames is not None:
            # a training step: through forward, so that DDP syncs the gradients (it does not for
            # a method called on the wrapped module)
            if positive_frames is None or negative_frames is None:
                raise ValueError("a training step takes positive_frames and negative_frames together")
            return self.training_loss(frames, logmel, positive_frames, negative_frames, positive_valid, negative_valid)
        b, t = self.check_inputs(frames, logmel, True)
        audio = self.encode_audio(self.audio_encoder, logmel).flatten(0, 1)  # N x 128
        maps, (h, w) = self.embed(self.images(frames), audio)
        score_map = maps.scores.reshape(b * t, h, w)
        if maskige is not None and self.use_proposals:
            if maskige.dim() != 5 or maskige.shape[:3] != (b, t, 3):
                raise ValueError(f"maskige must be B x T x 3 x H x W with B={b}, T={t}, got {tuple(maskige.shape)}")
            proposals = maskige_proposals(maskige.flatten(0, 1), self.uncovered_rgb)
            up = F.interpolate(score_map[:, None], size=proposals.shape[-2:], mode="bilinear", align_corners=False)
            logits = match_proposals(up[:, 0], proposals, self.threshold, self.logit_scale)
        else:
            up = F.interpolate(score_map[:, None], size=frames.shape[-2:], mode="bilinear", align_corners=False)
            logits = (up[:, 0] - self.threshold) * self.logit_scale
        return {"masks": logits[:, None], "score_map": score_map, "num_frames": t}

    def training_loss(
        self,
        frames: torch.Tensor,
        logmel: torch.Tensor,
        positive_frames: torch.Tensor,
        negative_frames: torch.Tensor,
        positive_valid: torch.Tensor | None = None,
        negative_valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The contrastive loss of a batch of anchors and their mined partners; no masks.

        frames: ``... x 3 x H x W`` anchor frames in [0, 1] (any leading dims, e.g. B or B x T;
        N in all); logmel: ``... x 96 x 64``, each anchor's second of audio; positive_frames:
        ``... x K x 3 x H x W``; negative_frames: ``... x M x 3 x H x W`` (partners' audio is not
        used: every image is embedded with its anchor's); positive_valid / negative_valid:
        ``... x K`` / ``... x M`` bool, False where a partner is padding. Returns ``loss`` and,
        detached, ``loss_contrastive``, ``positive_score``, ``negative_score``.
        """
        lead = frames.shape[:-3]
        n = lead.numel()
        if frames.dim() < 4 or frames.shape[-3] != 3:
            raise ValueError(f"frames must be ... x 3 x H x W, got {tuple(frames.shape)}")
        image = tuple(frames.shape[-3:])
        if tuple(logmel.shape) != (*lead, LOGMEL_FRAMES, LOGMEL_BANDS):
            raise ValueError(f"logmel must be {(*lead, LOGMEL_FRAMES, LOGMEL_BANDS)}, got {tuple(logmel.shape)}")
        for name, x in (("positive_frames", positive_frames), ("negative_frames", negative_frames)):
            if x.dim() != len(lead) + 4 or x.shape[: len(lead)] != lead or tuple(x.shape[-3:]) != image:
                raise ValueError(f"{name} must be {(*lead, 'K', *image)}, got {tuple(x.shape)}")
        k, m = positive_frames.shape[-4], negative_frames.shape[-4]
        if m == 0:
            raise ValueError("training_loss needs at least one negative per anchor")
        audio = self.encode_audio(self.audio_encoder, logmel.reshape(n, 1, LOGMEL_FRAMES, LOGMEL_BANDS))[:, 0]
        images = torch.cat([frames.reshape(n, *image), positive_frames.reshape(n * k, *image),
                            negative_frames.reshape(n * m, *image)])
        audio_all = torch.cat([audio, audio.repeat_interleave(k, dim=0), audio.repeat_interleave(m, dim=0)])
        maps, _ = self.embed(self.images(images[:, None]), audio_all)

        def part(start: int, count: int, per: int) -> AudioPixelMap:
            pixels, scores = maps.pixels[start : start + count], maps.scores[start : start + count]
            return AudioPixelMap(pixels.reshape(n, per, *pixels.shape[1:]), scores.reshape(n, per, -1))

        anchor = AudioPixelMap(maps.pixels[:n], maps.scores[:n])
        valid = [None if x is None else x.reshape(n, -1).bool() for x in (positive_valid, negative_valid)]
        out = contrastive_loss(anchor, part(n, n * k, k), part(n + n * k, n * m, m), self.margin,
                               self.pool_temperature, self.aggregate, *valid)
        return {"loss": out["loss"], "loss_contrastive": out["loss"].detach(),
                "positive_score": out["positive_score"], "negative_score": out["negative_score"]}


class SimilarityBaseline(MoCA):
    """Baseline (b): the plain audio-visual cosine map, thresholded (module docstring). One trainable
    linear layer (the visual head, C -> VGGish's 128); no adapter, no audio head, no PMA.
    Options as ``MoCA``'s; ``use_proposals`` defaults to False (per-pixel threshold)."""

    def __init__(self, backbone: nn.Module, audio_encoder: VGGishEncoder, *, feature_stage: int = 2,
                 use_proposals: bool = False, **options) -> None:
        super().__init__(backbone, audio_encoder, feature_stage=feature_stage, embed_dim=audio_encoder.out_dim,
                         num_adapters=0, audio_head=False, aggregate=False, use_proposals=use_proposals, **options)


class SaliencyBaseline(_FrozenFeatures):
    """Baseline (a): the most salient Maskige proposal of each frame; hears nothing, learns nothing.

    Args:
        backbone, feature_stage, num_classes, channels_last: as ``MoCA``'s.
        min_area: the smallest proposal (fraction of the frame) that may be picked.
        logit_scale, uncovered_rgb: as ``MoCA``'s.

    ``forward(frames, logmel=None, maskige)`` (``logmel`` ignored; ``maskige`` required) ->
    ``{"masks": N x 1 x H' x W' logits, "saliency_map": N x h x w, "num_frames": T}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        feature_stage: int = 2,
        min_area: float = 0.01,
        logit_scale: float = 10.0,
        uncovered_rgb: Sequence[int] = MASKIGE_UNCOVERED_RGB,
        num_classes: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__(backbone, feature_stage, num_classes, channels_last)
        if not 0 <= min_area < 1:
            raise ValueError(f"min_area is a fraction of the frame in [0, 1), got {min_area}")
        self.audio_encoder = None
        self.min_area = min_area
        self.logit_scale = logit_scale
        self.uncovered_rgb = tuple(int(v) for v in uncovered_rgb)

    def forward(
        self, frames: torch.Tensor, logmel: torch.Tensor | None = None, maskige: torch.Tensor | None = None
    ) -> dict:
        b, t = self.check_inputs(frames, logmel, False)
        if maskige is None:
            raise ValueError("the saliency baseline picks a Maskige proposal: pass maskige (B x T x 3 x H x W)")
        if maskige.dim() != 5 or maskige.shape[:3] != (b, t, 3):
            raise ValueError(f"maskige must be B x T x 3 x H x W with B={b}, T={t}, got {tuple(maskige.shape)}")
        saliency = pixel_saliency(self.frozen_features(self.images(frames)))
        proposals = maskige_proposals(maskige.flatten(0, 1), self.uncovered_rgb)
        up = F.interpolate(saliency[:, None], size=proposals.shape[-2:], mode="bilinear", align_corners=False)
        logits = pick_salient_proposal(up[:, 0], proposals, self.min_area, self.logit_scale)
        return {"masks": logits[:, None], "saliency_map": saliency, "num_frames": t}
