"""Exact k nearest rows by cosine, blockwise and deterministic: the primitives of both pair miners
(:mod:`tasks.enrich.pairs` exact, :mod:`tasks.enrich.pairs_ann` for its recall check)."""
from __future__ import annotations

import numpy as np
import torch


def canonical(primary: torch.Tensor, index: torch.Tensor, keep: int, descending: bool):
    """Sort each row by primary (ties: smaller index first) and keep the first ``keep``. Returns the order."""
    by_index = torch.argsort(index, dim=1, stable=True)
    p = primary.gather(1, by_index)
    by_primary = torch.argsort(p, dim=1, descending=descending, stable=True)
    return by_index.gather(1, by_primary)[:, :keep]


def _chunk_top(scores: torch.Tensor, c0: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's k best per row (ties at the k-th score: smaller index first). [B, C] -> [B, k]."""
    c = scores.shape[1]
    values, index = torch.topk(scores, min(k + 1, c), dim=1)
    if c > k:
        # The (k+1)-th equal to the k-th: topk split a tie arbitrarily; redo those rare rows exactly.
        ties = (values[:, k] == values[:, k - 1]) & torch.isfinite(values[:, k])
        for r in torch.nonzero(ties).flatten().tolist():
            row = scores[r].cpu().numpy()
            pick = torch.from_numpy(np.lexsort((np.arange(c), -row))[:k + 1]).to(scores.device)
            values[r], index[r] = scores[r, pick], pick
    return values[:, :k], index[:, :k] + c0


def normalised(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (cosine = dot product); zero rows stay zero."""
    x = np.asarray(emb, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def merge_top(top_s: torch.Tensor, top_i: torch.Tensor, scores: torch.Tensor, c0: int,
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running best k per row merged with a chunk's scores (columns c0..): ties, smaller index first."""
    c_s, c_i = _chunk_top(scores, c0, k)
    cat_s, cat_i = torch.cat([top_s, c_s], 1), torch.cat([top_i, c_i], 1)
    order = canonical(cat_s, cat_i, k, descending=True)
    return cat_s.gather(1, order), cat_i.gather(1, order)


def exact_top_k(x: torch.Tensor, code: torch.Tensor, anchors: torch.Tensor, k: int,
                chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact k most similar rows of other clips for the given anchor rows (x: normalised [N, D]).
    Returns scores and indices [A, k] (index N and score -inf where fewer exist)."""
    n = x.shape[0]
    a = x[anchors]
    top_s = torch.full((len(anchors), k), -torch.inf, device=x.device)
    top_i = torch.full((len(anchors), k), n, dtype=torch.int64, device=x.device)
    for c0 in range(0, n, chunk_size):
        c1 = min(c0 + chunk_size, n)
        other = code[anchors, None] != code[None, c0:c1]
        top_s, top_i = merge_top(top_s, top_i, (a @ x[c0:c1].T).masked_fill(~other, -torch.inf), c0, k)
    return top_s, top_i
