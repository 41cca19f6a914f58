"""Mask2Former-style masked-attention transformer decoder (as COMBO uses it).

Learnable queries cycle round-robin over three feature scales (stride 32, 16, 8). Each
layer: masked cross-attention (a query only sees pixels its previous mask prediction
covers), then self-attention, then an FFN, each with a residual and a post-LayerNorm.
Class and mask heads run on the initial queries and after every layer (deep supervision):
``num_layers`` layers give ``num_layers + 1`` predictions (COMBO: 9 layers, its config's
``DEC_LAYERS: 10`` counting the initial prediction). An optional per-frame audio vector is
added to the content queries before the first prediction (COMBO's ``QUERIES_FUSE_TYPE: add``).

Where ours differs from COMBO's ``MultiScaleMaskedTransformerDecoder``: COMBO repeats the
audio over the queries and reshapes without a permute (``repeat(1, Q, 1).reshape(Q, -1, D)``),
which hands query q of frame n the audio of frame ``(q * N + n) // Q``; here every query of
frame n gets frame n's audio. COMBO's 1x1 input projections are identities at its sizes (the
pixel decoder already gives D channels), as here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine 2-D position encoding over normalised coordinates (DETR-style).

    ``forward(x: N x C x H x W) -> N x 2*num_pos_feats x H x W`` (depends on shape only).
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        device, dtype = x.device, torch.float32
        eps, scale = 1e-6, 2 * math.pi
        y_embed = torch.arange(1, h + 1, device=device, dtype=dtype)[:, None].expand(h, w) / (h + eps) * scale
        x_embed = torch.arange(1, w + 1, device=device, dtype=dtype)[None, :].expand(h, w) / (w + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, device=device, dtype=dtype)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, None] / dim_t
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)  # 2F x H x W
        return pos.unsqueeze(0).expand(n, -1, -1, -1).to(x.dtype)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN (post-norm, residuals)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.norm_ffn = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """queries, query_pos: N x Q x D; memory, memory_pos: N x S x D;
        attn_mask: (N * heads) x Q x S bool, True = may not attend."""
        out = self.cross_attn(queries + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        queries = self.norm_cross(queries + self.dropout(out))
        q = queries + query_pos
        out = self.self_attn(q, q, queries, need_weights=False)[0]
        queries = self.norm_self(queries + self.dropout(out))
        return self.norm_ffn(queries + self.dropout(self.ffn(queries)))


class MaskedAttentionDecoder(nn.Module):
    """Args:
        hidden_dim: query and feature width D.
        num_classes: foreground classes; the class head predicts ``num_classes + 1``
            logits, the last one being "no object".
        num_queries: Q (COMBO: 100).
        num_layers: decoder layers (COMBO: 9), giving ``num_layers + 1`` predictions.
        num_heads: attention heads.
        ffn_dim: FFN hidden width (Mask2Former: 2048 for D = 256).
        mask_dim: channels of the mask features (default D).
        num_levels: feature scales cycled through (3).

    ``forward(multi_scale, mask_features, audio_query=None)``:
        multi_scale: ``num_levels`` maps ``N x D x h_l x w_l``, coarse to fine.
        mask_features: ``N x mask_dim x H4 x W4``.
        audio_query: ``N x D`` added to every content query, or None.
    Returns a dict:
        ``pred_logits``: N x Q x (num_classes + 1), ``pred_masks``: N x Q x H4 x W4 (logits)
        from the last layer; ``aux_outputs``: list of ``num_layers`` dicts with the same keys,
        for the initial prediction and layers 1..num_layers-1.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_classes: int,
        num_queries: int,
        num_layers: int,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        mask_dim: int | None = None,
        num_levels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"decoder needs at least 1 layer, got {num_layers}")
        mask_dim = mask_dim or hidden_dim
        self.num_classes, self.num_queries, self.num_layers = num_classes, num_queries, num_layers
        self.num_heads, self.num_levels = num_heads, num_levels
        self.pos_embed = PositionEmbeddingSine(hidden_dim // 2)
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # position
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def predict(
        self, queries: torch.Tensor, mask_features: torch.Tensor, attn_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads on ``queries`` (N x Q x D): class logits, mask logits N x Q x H4 x W4, and the
        attention mask for the next layer ((N * heads) x Q x h*w, True = blocked)."""
        x = self.decoder_norm(queries)
        logits = self.class_embed(x)
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(x), mask_features)
        with torch.no_grad():
            small = F.interpolate(masks.detach(), size=attn_size, mode="bilinear", align_corners=False)
            blocked = (small.sigmoid() < 0.5).flatten(2)  # N x Q x hw
            # a query whose mask is empty everywhere would attend to nothing: let it see all
            blocked[blocked.all(dim=-1)] = False
            blocked = blocked.repeat_interleave(self.num_heads, dim=0)
        return logits, masks, blocked

    def forward(
        self,
        multi_scale: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        audio_query: torch.Tensor | None = None,
    ) -> dict:
        if len(multi_scale) != self.num_levels:
            raise ValueError(f"decoder expects {self.num_levels} feature scales, got {len(multi_scale)}")
        n = mask_features.shape[0]
        memories, memory_pos, sizes = [], [], []
        for i, feat in enumerate(multi_scale):
            sizes.append(tuple(feat.shape[-2:]))
            memory_pos.append(self.pos_embed(feat).flatten(2).transpose(1, 2))
            memories.append(feat.flatten(2).transpose(1, 2) + self.level_embed.weight[i])
        query_pos = self.query_embed.weight.unsqueeze(0).expand(n, -1, -1)
        queries = self.query_feat.weight.unsqueeze(0).expand(n, -1, -1)
        if audio_query is not None:
            queries = queries + audio_query.unsqueeze(1)

        predictions = []
        logits, masks, blocked = self.predict(queries, mask_features, sizes[0])
        predictions.append({"pred_logits": logits, "pred_masks": masks})
        for i, layer in enumerate(self.layers):
            level = i % self.num_levels
            queries = layer(queries, query_pos, memories[level], memory_pos[level], blocked)
            logits, masks, blocked = self.predict(queries, mask_features, sizes[(i + 1) % self.num_levels])
            predictions.append({"pred_logits": logits, "pred_masks": masks})
        out = dict(predictions[-1])
        out["aux_outputs"] = predictions[:-1]
        return out
