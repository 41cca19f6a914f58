"""Pair mining over every frame embedding: positives and negatives per frame (MoCA-style).

For each frame (the anchor): the ``k_pos`` most similar frames of OTHER clips by cosine
(positives), and ``num_neg`` frames of other clips drawn at random among those with cosine
below ``neg_threshold`` (negatives). Pairs are global, so they live beside the shards in
``pairs.parquet``.

Memory stays O(block_size * chunk_size): anchors are taken ``block_size`` rows at a time
and compared with all rows ``chunk_size`` at a time, keeping a running top-k. Negatives
are the eligible candidates with the smallest seeded hash key of (anchor, candidate): a
pseudo-random sample without replacement that does not depend on how the rows are
blocked, so the blockwise result is the full-matrix result, and a seed fixes the pairs.
Similarities run in torch, on the GPU when there is one.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from infra.schema.enrich import PairsConfig
from tasks.enrich.knn import canonical, merge_top, normalised

log = logging.getLogger(__name__)

PAIRS_COLUMNS = ("key", "clip_id", "positives", "positive_scores", "negatives", "negative_scores")
_NO_KEY = np.iinfo(np.int64).max  # "not eligible": larger than every key
_MUL32 = -1640531535  # 0x9E3779B1 (odd) as a signed int32


def _mix32(x: np.ndarray) -> np.ndarray:
    """A bijection of uint32 (the "lowbias32" integer hash): distinct inputs stay distinct."""
    x = x.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def _pair_keys(row_hash: torch.Tensor, col_hash: torch.Tensor) -> torch.Tensor:
    """Random priority of each (anchor, candidate), a pure function of the pair. int32 [B, C].

    Column hashes are distinct, so for one anchor (r ^ c) and its product with an odd
    constant (a bijection mod 2^32) are distinct too: no ties among an anchor's keys.
    """
    return (row_hash[:, None] ^ col_hash[None, :]) * _MUL32


def mine_pairs(keys: Sequence[str], clip_ids: Sequence[str], emb: np.ndarray, cfg: PairsConfig | None = None,
               device: str | torch.device | None = None) -> pd.DataFrame:
    """Positives and negatives for every frame.

    keys: N frame keys (unique); clip_ids: N clip ids (frames of one clip never pair);
    emb: float [N, D] embeddings (normalised here, so cosine = dot product).
    device: where the exact path's similarity blocks are computed (default: GPU when available).
    ``cfg.method`` picks exact (this module) or the approximate IVF search
    (:mod:`tasks.enrich.pairs_ann`); ``auto`` takes exact up to ``cfg.exact_max_frames``.
    Returns a DataFrame with one row per frame, in input order: key, clip_id, positives
    (list[str], best first), positive_scores (list[float]), negatives (list[str]),
    negative_scores (list[float]). Rows get fewer than k_pos positives when fewer frames
    of other clips exist, and fewer than num_neg negatives when fewer fall below
    neg_threshold; ``df.attrs`` counts them (and, for ivf, holds the measured recall).
    """
    cfg = cfg or PairsConfig()
    keys = list(keys)
    clip_ids = list(clip_ids)
    emb = np.asarray(emb)
    n = len(keys)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"emb must be [N, D] with N = len(keys) = {n}, got {list(emb.shape)}")
    if len(clip_ids) != n:
        raise ValueError(f"clip_ids has {len(clip_ids)} entries for {n} keys")
    if len(set(keys)) != n:
        dup = pd.Series(keys)[pd.Series(keys).duplicated()].iloc[0]
        raise ValueError(f"frame keys must be unique; {dup!r} appears more than once")
    if not np.isfinite(emb).all():
        bad = int(np.nonzero(~np.isfinite(emb).all(1))[0][0])
        raise ValueError(f"emb has non-finite values, first in row {bad} (key {keys[bad]!r})")
    if n >= 2**32:
        raise ValueError(f"mine_pairs handles fewer than 2**32 frames, got {n}")
    _, clip_code = np.unique(np.asarray(clip_ids, dtype=object), return_inverse=True)
    clip_code = clip_code.astype(np.int64)
    attrs: dict = {}
    if cfg.method == "ivf" or (cfg.method == "auto" and n > cfg.exact_max_frames):
        from tasks.enrich.pairs_ann import mine_ivf

        pos_s, pos_i, neg_s, neg_i, neg_ok, attrs = mine_ivf(normalised(emb), clip_code, cfg)
    else:
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pos_s, pos_i, neg_s, neg_i, neg_ok = _mine_exact(emb, clip_code, cfg, dev)
        attrs["method"] = "exact"
    return _to_frame(keys, clip_ids, pos_s, pos_i, neg_s, neg_i, neg_ok, cfg, attrs)


def _mine_exact(emb: np.ndarray, clip_code: np.ndarray, cfg: PairsConfig, dev: torch.device) -> tuple:
    """Every pair scored, blockwise (module docstring). Returns (pos_s, pos_i, neg_s, neg_i, neg_ok)."""
    n = emb.shape[0]
    x = torch.nn.functional.normalize(torch.from_numpy(emb.astype(np.float32)).to(dev), dim=1)
    code = torch.from_numpy(clip_code).to(dev)
    seed = _mix32(np.array([cfg.seed & 0xFFFFFFFF, (cfg.seed >> 32) & 0xFFFFFFFF], dtype=np.uint64))
    ids = np.arange(n, dtype=np.uint64)
    row_hash = torch.from_numpy(_mix32(_mix32(ids) ^ seed[0]).view(np.int32)).to(dev)
    col_hash = torch.from_numpy(_mix32((ids + seed[1]) & 0xFFFFFFFF).view(np.int32)).to(dev)  # distinct per column

    k, n_neg = cfg.k_pos, cfg.num_neg
    pos_s, pos_i, neg_s, neg_i, neg_k = [], [], [], [], []
    for b0 in range(0, n, cfg.block_size):
        b1 = min(b0 + cfg.block_size, n)
        a = x[b0:b1]
        top_s = torch.full((b1 - b0, k), -torch.inf, device=dev)
        top_i = torch.full((b1 - b0, k), n, dtype=torch.int64, device=dev)  # n = "none"
        low_k = torch.full((b1 - b0, n_neg), _NO_KEY, dtype=torch.int64, device=dev)
        low_i = torch.full((b1 - b0, n_neg), n, dtype=torch.int64, device=dev)
        low_s = torch.zeros((b1 - b0, n_neg), device=dev)
        for c0 in range(0, n, cfg.chunk_size):
            c1 = min(c0 + cfg.chunk_size, n)
            s = a @ x[c0:c1].T  # [B, C] cosine
            other = code[b0:b1, None] != code[None, c0:c1]
            # The chunk's best, then merged with the running best (only [B, k] kept).
            top_s, top_i = merge_top(top_s, top_i, s.masked_fill(~other, -torch.inf), c0, k)
            if n_neg:
                eligible = other & (s < cfg.neg_threshold)
                hk = torch.where(eligible, _pair_keys(row_hash[b0:b1], col_hash[c0:c1]).long(), _NO_KEY)
                c_k, c_j = torch.topk(hk, min(n_neg, c1 - c0), dim=1, largest=False)
                cat_k = torch.cat([low_k, c_k], 1)
                cat_i = torch.cat([low_i, c_j + c0], 1)
                cat_s = torch.cat([low_s, s.gather(1, c_j)], 1)
                order = canonical(cat_k, cat_i, n_neg, descending=False)
                low_k, low_i, low_s = cat_k.gather(1, order), cat_i.gather(1, order), cat_s.gather(1, order)
        pos_s.append(top_s.cpu().numpy())
        pos_i.append(top_i.cpu().numpy())
        neg_s.append(low_s.cpu().numpy())
        neg_i.append(low_i.cpu().numpy())
        neg_k.append(low_k.cpu().numpy())
    if not n:
        empty = np.zeros((0, k)), np.zeros((0, k), np.int64)
        return (*empty, np.zeros((0, n_neg)), np.zeros((0, n_neg), np.int64), np.zeros((0, n_neg), bool))
    pos_s, pos_i, neg_s, neg_i, neg_k = (np.concatenate(v) for v in (pos_s, pos_i, neg_s, neg_i, neg_k))
    return pos_s, pos_i, neg_s, neg_i, neg_k != _NO_KEY


def _to_frame(keys: list[str], clip_ids: list[str], pos_s: np.ndarray, pos_i: np.ndarray, neg_s: np.ndarray,
              neg_i: np.ndarray, neg_ok: np.ndarray, cfg: PairsConfig, attrs: dict) -> pd.DataFrame:
    """The pairs table from index arrays (positives: finite score = found; negatives: neg_ok)."""
    n, k, n_neg = len(keys), cfg.k_pos, cfg.num_neg
    key_arr = np.asarray(keys, dtype=object)
    rows_pos, rows_pos_s, rows_neg, rows_neg_s = [], [], [], []
    pos_ok = np.isfinite(pos_s)
    for r in range(n):
        ok, okn = pos_ok[r], neg_ok[r]
        rows_pos.append(key_arr[pos_i[r][ok]].tolist())
        rows_pos_s.append(pos_s[r][ok].tolist())
        rows_neg.append(key_arr[neg_i[r][okn]].tolist())
        rows_neg_s.append(neg_s[r][okn].tolist())
    short_pos = int((pos_ok.sum(1) < k).sum()) if n else 0
    short_neg = int((neg_ok.sum(1) < n_neg).sum()) if n else 0
    df = pd.DataFrame({"key": keys, "clip_id": clip_ids, "positives": rows_pos, "positive_scores": rows_pos_s,
                       "negatives": rows_neg, "negative_scores": rows_neg_s})
    df.attrs.update(num_frames=n, rows_short_of_positives=short_pos, rows_short_of_negatives=short_neg,
                    k_pos=k, num_neg=n_neg, neg_threshold=cfg.neg_threshold, seed=cfg.seed, **attrs)
    if short_pos or short_neg:
        log.warning("pairs: %d of %d frames have fewer than %d positives, %d fewer than %d negatives "
                    "(cosine < %.2f)", short_pos, n, k, short_neg, n_neg, cfg.neg_threshold)
    return df


def write_pairs(df: pd.DataFrame, url: str, storage=None) -> None:
    """Write pairs as parquet to url (local path or s3://), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from infra.storage import Storage

    missing = [c for c in PAIRS_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"pairs frame lacks columns {missing}")
    table = pa.Table.from_pandas(df[list(PAIRS_COLUMNS)], preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    (storage or Storage()).write_bytes(url, buf.getvalue())


def read_pairs(url: str, storage=None) -> pd.DataFrame:
    """Pairs parquet at url -> DataFrame with Python lists in the list columns."""
    import pyarrow.parquet as pq

    from infra.storage import Storage

    table = pq.read_table(io.BytesIO((storage or Storage()).read_bytes(url)))
    missing = [c for c in PAIRS_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{url}: not a pairs file, columns {missing} are missing")
    df = table.to_pandas()
    for col in ("positives", "positive_scores", "negatives", "negative_scores"):
        df[col] = [list(v) for v in df[col]]
    return df


def pair_precision(df: pd.DataFrame, clip_categories: dict[str, set[str]], key_to_clip: dict[str, str]) -> float:
    """Share of mined positives whose clip shares a visible category with the anchor's clip.

    NaN when no frame has a positive.
    """
    hits = total = 0
    for key, positives in zip(df["key"], df["positives"]):
        anchor = clip_categories.get(key_to_clip[key], set())
        for p in positives:
            total += 1
            hits += bool(anchor & clip_categories.get(key_to_clip[p], set()))
    return hits / total if total else float("nan")
