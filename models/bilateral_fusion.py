"""Bilateral-Fusion (COMBO): bi-directional multi-head attention between the audio tokens and
the stride-4 mask features through ONE attention matrix, after COMBO's released code
(``fusion_module/utils/fuse_helper.py``: ``BiMultiHeadAttention``, ``BiAttentionBlock``;
``fusion_module/AVFuse.py``, fusing the mask features only, "late" fusion).

With v the visual tokens (HW per frame) and a the audio tokens (Na per frame, COMBO: 1), per
head h of width d:

    v_n = LN(v + level_embed)                  a_n = LN(a)
    S_h = (W_q (a_n + pos_a)) (W_k (v_n + pos_v))^T / sqrt(d)         Na x HW
    P_h = softmax over the PIXELS of clamp(S_h, -5e4, 5e4)           Na x HW
    visual <- audio:  v' = v_n + gamma_v * W_ov( P_h^T (W_va a_n) )  each pixel p gets the audio
                      value weighted by its share P_h[:, p] of the audio token's attention
    audio <- visual:  a' = a_n + gamma_a * W_oa( P_h (W_vv v_n) )    the audio token gathers
                      the pixels' values under the same weights

Both directions normalise over the pixels, as COMBO's code does (``attn_weights_v`` is a
softmax over the pixel axis too), so the visual update differs from pixel to pixel even with
one audio token, and the shared logits (``query_audio``, ``key_visual``) learn from both
directions. Each direction draws its own attention dropout (COMBO: 0.1); ``gamma_v`` and
``gamma_a`` are layer-scale vectors (COMBO: 1e-4); projections start Xavier-uniform with zero
bias; the residual adds to the LayerNorm'd inputs, as COMBO (and GLIP, whose block it follows)
does, so the mask features leave the fusion LayerNorm'd.

COMBO's choices we keep: the above, the level embedding (COMBO: ``nn.Embedding(1, C)``, N(0, 1)
at start, added to the mask features before the norm), a learned audio position (N(0, 1) at
start), sine positions for the pixels, the audio fused at its VGGish width (128) and lifted to
the decoder's width afterwards (``COMBO.audio_proj``).

Where ours differs:
- Names: COMBO calls the visual projection "query" and the audio one "key"; the logits are
  the same bilinear form (ours: ``query_audio``, ``key_visual``).
- ``mode="audio_to_visual"`` (the one-directional ablation) is this block without the audio
  update (no ``value_visual``, ``out_audio``, ``gamma_audio``; audio leaves as ``LN(a)``), so it
  differs from "bilateral" by the audio update alone. COMBO's own one-directional variant
  ("MHA-S", ``AttentionA2I``) is a separate attention whose softmax runs over the audio tokens
  (constant 1 with one token) and passes the audio through un-normalised.
- Any number of audio tokens is accepted (COMBO: exactly one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.transformer_decoder import PositionEmbeddingSine

FUSION_MODES = ("bilateral", "audio_to_visual")
# COMBO clamps the attention logits so that half precision cannot overflow
LOGIT_CLAMP = 50_000.0


def _xavier_linear(c_in: int, c_out: int) -> nn.Linear:
    layer = nn.Linear(c_in, c_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class BilateralFusion(nn.Module):
    """Args:
        dim: D, channels of the visual features (and of the attention).
        audio_dim: A, channels of the audio tokens (COMBO: 128, the VGGish embedding).
        num_heads: attention heads (``dim`` must divide evenly; COMBO: 8).
        mode: "bilateral" (both directions) or "audio_to_visual" (visual <- audio only).
        num_audio_tokens: Na, audio tokens per frame (COMBO: 1).
        layer_scale_init: initial value of the layer-scale gammas (COMBO: 1e-4).
        dropout: dropout on the attention weights, drawn per direction (COMBO: 0.1).

    ``forward(visual: N x D x H x W, audio: N x Na x A)`` -> ``(visual': N x D x H x W,
    audio': N x Na x A)``.
    """

    def __init__(
        self,
        dim: int,
        audio_dim: int = 128,
        num_heads: int = 8,
        mode: str = "bilateral",
        num_audio_tokens: int = 1,
        layer_scale_init: float = 1e-4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode {mode!r} is not one of {FUSION_MODES}")
        if dim % num_heads:
            raise ValueError(f"fusion dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.audio_dim, self.num_heads, self.mode = dim, audio_dim, num_heads, mode
        self.head_dim = dim // num_heads
        self.num_audio_tokens = num_audio_tokens
        self.dropout = dropout
        self.level_embed = nn.Parameter(torch.randn(dim))
        self.norm_visual = nn.LayerNorm(dim)
        self.norm_audio = nn.LayerNorm(audio_dim)
        self.pos_visual = PositionEmbeddingSine(dim // 2)
        self.pos_audio = nn.Parameter(torch.randn(num_audio_tokens, audio_dim))
        # the shared attention logits
        self.query_audio = _xavier_linear(audio_dim, dim)
        self.key_visual = _xavier_linear(dim, dim)
        # visual <- audio
        self.value_audio = _xavier_linear(audio_dim, dim)
        self.out_visual = _xavier_linear(dim, dim)
        self.gamma_visual = nn.Parameter(torch.full((dim,), layer_scale_init))
        if mode == "bilateral":
            # audio <- visual
            self.value_visual = _xavier_linear(dim, dim)
            self.out_audio = _xavier_linear(dim, audio_dim)
            self.gamma_audio = nn.Parameter(torch.full((audio_dim,), layer_scale_init))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``N x L x D`` -> ``N x heads x L x head_dim``."""
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """``N x heads x L x head_dim`` -> ``N x L x D``."""
        return x.transpose(1, 2).flatten(2)

    def attention(self, v_norm: torch.Tensor, a_norm: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The shared attention ``P``: ``N x heads x Na x HW``, each row a softmax over pixels."""
        q = self._heads(self.query_audio(a_norm + self.pos_audio))  # N x h x Na x d
        k = self._heads(self.key_visual(v_norm + pos))  # N x h x HW x d
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        return logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP).softmax(dim=-1)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d, h, w = visual.shape
        if d != self.dim or audio.shape != (n, self.num_audio_tokens, self.audio_dim):
            raise ValueError(
                f"fusion expects visual N x {self.dim} x H x W and audio N x {self.num_audio_tokens} x "
                f"{self.audio_dim}, got {tuple(visual.shape)} and {tuple(audio.shape)}"
            )
        v_norm = self.norm_visual(visual.flatten(2).transpose(1, 2) + self.level_embed)  # N x HW x D
        a_norm = self.norm_audio(audio)  # N x Na x A
        pos = self.pos_visual(visual).flatten(2).transpose(1, 2)
        attn = self.attention(v_norm, a_norm, pos)

        attn_v = F.dropout(attn, self.dropout, self.training).transpose(-1, -2)  # N x h x HW x Na
        msg_v = self.out_visual(self._merge(attn_v @ self._heads(self.value_audio(a_norm))))
        visual_out = (v_norm + self.gamma_visual * msg_v).transpose(1, 2).reshape(n, d, h, w)
        if self.mode == "audio_to_visual":
            return visual_out, a_norm

        attn_a = F.dropout(attn, self.dropout, self.training)  # N x h x Na x HW
        msg_a = self.out_audio(self._merge(attn_a @ self._heads(self.value_visual(v_norm))))
        return visual_out, a_norm + self.gamma_audio * msg_a
