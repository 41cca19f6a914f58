"""Bilateral-Fusion (COMBO): bi-directional multi-head cross attention between audio tokens
and the stride-4 mask features, through ONE attention-logit matrix.

With pre-LayerNorm'd inputs, per head h:

    S_h = (W_q a)(W_k v + pos)^T / sqrt(d)                   Na x Nv, computed once
    visual <- audio:  v' = v + gamma_v * W_ov( softmax_over_audio(S_h^T) (W_va a) )
    audio <- visual:  a' = a + gamma_a * W_oa( softmax_over_pixels(S_h) (W_vv v) )

so each direction reads the same matrix (S^T for one, S for the other), each normalised
over its own keys, as GLIP-style bi-attention (which COMBO's fusion follows) does.
``gamma_v`` and ``gamma_a`` are layer-scale vectors (per channel, small init) so the block
starts close to the identity.

``fusion="audio_to_visual"`` is the one-directional ablation: the same block without the
audio update (no ``W_vv``, ``W_oa``, ``gamma_a``); audio tokens pass through unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.transformer_decoder import PositionEmbeddingSine

FUSION_MODES = ("bilateral", "audio_to_visual")


class BilateralFusion(nn.Module):
    """Args:
        dim: channels of both the visual features and the audio tokens.
        num_heads: attention heads (``dim`` must divide evenly).
        mode: "bilateral" (both directions) or "audio_to_visual" (visual <- audio only).
        num_audio_tokens: audio tokens per frame (COMBO: 1).
        layer_scale_init: initial value of the layer-scale gammas.

    ``forward(visual: N x D x H x W, audio: N x Na x D)`` -> ``(visual': N x D x H x W,
    audio': N x Na x D)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        mode: str = "bilateral",
        num_audio_tokens: int = 1,
        layer_scale_init: float = 1e-4,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode {mode!r} is not one of {FUSION_MODES}")
        if dim % num_heads:
            raise ValueError(f"fusion dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.mode = dim, num_heads, mode
        self.head_dim = dim // num_heads
        self.norm_visual = nn.LayerNorm(dim)
        self.norm_audio = nn.LayerNorm(dim)
        self.pos_visual = PositionEmbeddingSine(dim // 2)
        self.pos_audio = nn.Parameter(torch.zeros(num_audio_tokens, dim))
        # the shared attention logits: audio queries, visual keys
        self.query_audio = nn.Linear(dim, dim)
        self.key_visual = nn.Linear(dim, dim)
        # visual <- audio
        self.value_audio = nn.Linear(dim, dim)
        self.out_visual = nn.Linear(dim, dim)
        self.gamma_visual = nn.Parameter(torch.full((dim,), layer_scale_init))
        if mode == "bilateral":
            # audio <- visual
            self.value_visual = nn.Linear(dim, dim)
            self.out_audio = nn.Linear(dim, dim)
            self.gamma_audio = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.num_audio_tokens = num_audio_tokens

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d, h, w = visual.shape
        if d != self.dim or audio.shape != (n, self.num_audio_tokens, self.dim):
            raise ValueError(
                f"fusion expects visual N x {self.dim} x H x W and audio N x {self.num_audio_tokens} x {self.dim}, "
                f"got {tuple(visual.shape)} and {tuple(audio.shape)}"
            )
        v_tokens = visual.flatten(2).transpose(1, 2)  # N x HW x D
        v_norm = self.norm_visual(v_tokens)
        a_norm = self.norm_audio(audio)
        pos = self.pos_visual(visual).flatten(2).transpose(1, 2)

        q = self._heads(self.query_audio(a_norm + self.pos_audio))  # N x h x Na x dh
        k = self._heads(self.key_visual(v_norm + pos))  # N x h x HW x dh
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # N x h x Na x HW

        attn_v = torch.softmax(logits.transpose(-1, -2), dim=-1)  # pixels attend over audio tokens
        msg_v = attn_v @ self._heads(self.value_audio(a_norm))  # N x h x HW x dh
        msg_v = self.out_visual(msg_v.transpose(1, 2).reshape(n, h * w, d))
        v_tokens = v_tokens + self.gamma_visual * msg_v
        visual_out = v_tokens.transpose(1, 2).reshape(n, d, h, w)

        if self.mode == "audio_to_visual":
            return visual_out, audio
        attn_a = torch.softmax(logits, dim=-1)  # audio tokens attend over pixels
        msg_a = attn_a @ self._heads(self.value_visual(v_norm))  # N x h x Na x dh
        msg_a = self.out_audio(msg_a.transpose(1, 2).reshape(n, self.num_audio_tokens, d))
        return visual_out, audio + self.gamma_audio * msg_a
