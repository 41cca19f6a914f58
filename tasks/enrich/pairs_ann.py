"""Approximate pair mining for data sets too large for the exact blockwise search.

The exact miner (:mod:`tasks.enrich.pairs`) scores every pair: its time grows with the square of
the frame count (20k / 80k frames: 11 / 176 s on 2 cores with k = 10; 1M frames would take hours).
Here an inverted file (IVF) limits each anchor to the rows of a few cells near it.

The library: faiss makes the cells (``faiss.Kmeans``, spherical k-means on a seeded sample) and
assigns every row and every anchor to them (``IndexFlatIP`` over the centroids, matrix products).
The scan of the cells is ours: faiss's own ``IndexIVFFlat`` scans the lists one query at a time,
which measured about 5 GFLOP/s on our 2 cores (320k frames, nlist 1131, nprobe 16: 230 s of
search), where one matrix product per cell (all the anchors that probe it against all its rows)
runs at the 34 GFLOP/s of a plain matrix multiplication, in torch, on the GPU when there is one.
An HNSW graph was not taken: it inserts every vector one by one, which on 2 cores takes longer
than the whole search here, and it has no cheap way to share one build across Ray tasks.

The steps:

1. Cells: ``nlist`` (0 = 2 sqrt(N)) spherical k-means centroids from a seeded sample of
   ``nlist x train_points_per_cell`` rows, ``kmeans_iters`` iterations; each row joins its
   nearest centroid's cell.
2. Positives: each anchor probes its ``nprobe`` nearest cells; per cell, one matrix product of
   the anchors that probe it against the cell's rows, rows of the anchor's own clip masked, the
   best ``k_pos`` kept; then the best ``k_pos`` over the probed cells, scores recomputed as one
   dot product per pair (so they do not depend on how anchors were grouped), ties by smaller row.
3. Negatives: rows of other clips with cosine below ``neg_threshold``, drawn uniformly at random
   as in the exact path, but not the same sample: the exact path keeps the eligible rows with the
   smallest seeded hash of (anchor, row), which needs every pair scored. Here each anchor draws
   candidate rows from a counter-based hash of (seed, anchor, draw number) and keeps the first
   ``num_neg`` distinct eligible ones in draw order, out of ``4 num_neg + 16`` draws. The draws are a
   pure function of (seed, anchor): how the anchors are split over tasks does not change them. A
   row whose draws hold fewer eligible candidates gets fewer negatives (counted in ``df.attrs``).
4. Distribution: the cells (centroids, rows sorted by cell) and the unit embeddings go into Ray's
   object store once; the anchors are split into ``partitions`` contiguous ranges, one task of
   1 CPU each, and the results are concatenated in anchor order. Every task searches the whole
   shared index for its own anchors, so no top-k merge is needed, and a cluster with more CPUs
   runs more ranges at once. With Ray not running (or ``partitions=1``) one process searches.
5. Recall: ``recall_sample`` seeded anchors get their exact top ``k_pos`` (``exact_top_k``), and
   ``recall_at_k`` = mean over them of |approximate positives & exact positives| / |exact|; logged
   and kept in ``df.attrs``.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from infra.schema.enrich import PairsConfig
from tasks.enrich.knn import exact_top_k

log = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """A bijection of uint64 with good mixing (SplitMix64's finaliser)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def negative_draws(anchors: np.ndarray, n: int, draws: int, seed: int) -> np.ndarray:
    """[A, draws] candidate rows in [0, n) for each anchor row: a pure function of (seed, anchor, draw)."""
    base = _splitmix64(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ anchors.astype(np.uint64))
    with np.errstate(over="ignore"):
        z = _splitmix64(base[:, None] + np.arange(draws, dtype=np.uint64)[None, :] * _GOLDEN)
    return (z % np.uint64(max(n, 1))).astype(np.int64)


def pick_negatives(x: np.ndarray, code: np.ndarray, anchors: np.ndarray, cfg: PairsConfig
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, rows, found) [A, num_neg]: the first num_neg distinct draws of another clip below
    neg_threshold (module docstring, step 3)."""
    a, m = len(anchors), cfg.num_neg
    if m == 0 or a == 0:
        return np.zeros((a, m), np.float32), np.zeros((a, m), np.int64), np.zeros((a, m), bool)
    cand = negative_draws(anchors, x.shape[0], 4 * m + 16, cfg.seed)
    cos = _pair_scores(x, anchors, cand)
    order = np.argsort(cand, axis=1, kind="stable")  # equal draws: the earlier one first
    repeat = np.zeros(cand.shape, bool)
    srt = np.take_along_axis(cand, order, 1)
    np.put_along_axis(repeat, order[:, 1:], srt[:, 1:] == srt[:, :-1], 1)
    eligible = (code[cand] != code[anchors, None]) & (cos < cfg.neg_threshold) & ~repeat
    first = np.argsort(~eligible, axis=1, kind="stable")[:, :m]  # eligible draws in draw order
    found = np.take_along_axis(eligible, first, 1)
    return np.take_along_axis(cos, first, 1), np.take_along_axis(cand, first, 1), found


def _positives(scores: np.ndarray, rows: np.ndarray, code: np.ndarray, anchors: np.ndarray, k: int, n: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate hits without the anchor's own clip (row -1 = none), best k by (score
    descending, row ascending); missing: score -inf, row n."""
    valid = rows >= 0
    valid &= code[np.where(valid, rows, 0)] != code[anchors, None]
    s = np.where(valid, scores, -np.inf).astype(np.float32)
    r = np.where(valid, rows, n)
    by_row = np.argsort(r, axis=1, kind="stable")
    s, r = np.take_along_axis(s, by_row, 1), np.take_along_axis(r, by_row, 1)
    best = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s, r = np.take_along_axis(s, best, 1), np.take_along_axis(r, best, 1)
    if s.shape[1] < k:  # fewer rows than k searched at all
        pad = k - s.shape[1]
        s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
        r = np.pad(r, ((0, 0), (0, pad)), constant_values=n)
    return s, r


@dataclass
class Cells:
    """The inverted file: centroids [nlist, D] and the rows sorted by cell (cell c holds
    ``rows[starts[c]:starts[c + 1]]``)."""

    centroids: np.ndarray
    rows: np.ndarray
    starts: np.ndarray

    @property
    def nlist(self) -> int:
        return len(self.centroids)


def _nearest_cells(centroids: np.ndarray, x: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """[N, k] ids of the k nearest centroids (inner product) of each row of x."""
    import faiss

    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    out = np.empty((x.shape[0], k), np.int64)
    for b0 in range(0, x.shape[0], block):
        out[b0:b0 + block] = flat.search(np.ascontiguousarray(x[b0:b0 + block]), k)[1]
    return out


def build_index(x: np.ndarray, cfg: PairsConfig) -> Cells:
    """The cells over unit rows x (module docstring, step 1)."""
    import faiss

    n, d = x.shape
    # faiss's k-means wants >= 39 rows per cell; the automatic size keeps to that
    nlist = min(cfg.nlist, n) if cfg.nlist else max(1, min(int(round(2 * math.sqrt(n))), n // 39))
    sample = min(n, nlist * cfg.train_points_per_cell)
    picked = np.sort(np.random.default_rng(cfg.seed).choice(n, size=sample, replace=False))
    kmeans = faiss.Kmeans(d, nlist, niter=cfg.kmeans_iters, spherical=True, seed=cfg.seed & 0x7FFFFFFF,
                          max_points_per_centroid=cfg.train_points_per_cell, verbose=False)
    kmeans.train(np.ascontiguousarray(x[picked]))
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    cell = _nearest_cells(centroids, x, 1)[:, 0]
    rows = np.argsort(cell, kind="stable")
    starts = np.searchsorted(cell[rows], np.arange(nlist + 1))
    return Cells(centroids, rows, starts)


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # Ray's object store hands out read-only arrays; nothing writes to them
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(a).to(device)


def search_range(cells: Cells, x: np.ndarray, code: np.ndarray, lo: int, hi: int, cfg: PairsConfig,
                 block: int = 65536, device: str | torch.device | None = None) -> tuple[np.ndarray, ...]:
    """Positives and negatives of anchors lo..hi-1 (module docstring, steps 2-3):
    (pos_s, pos_i, neg_s, neg_i, neg_ok)."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, k = x.shape[0], cfg.k_pos
    nprobe = min(cfg.nprobe, cells.nlist)
    xt, ct = _tensor(x, dev), _tensor(code, dev)
    cell_rows = _tensor(cells.rows, dev)
    out: list[list[np.ndarray]] = [[], [], [], [], []]
    for b0 in range(lo, hi, block):
        anchors = np.arange(b0, min(b0 + block, hi))
        m = len(anchors)
        probe = _nearest_cells(cells.centroids, x[anchors], nprobe).reshape(-1)  # slot = anchor * nprobe + p
        cand_s = torch.full((m * nprobe, k), -torch.inf, device=dev)
        cand_i = torch.full((m * nprobe, k), n, dtype=torch.int64, device=dev)
        a = xt[b0:b0 + m]
        slots = np.argsort(probe, kind="stable")
        bounds = np.searchsorted(probe[slots], np.arange(cells.nlist + 1))
        for c in np.nonzero(np.diff(bounds))[0]:
            members = cell_rows[cells.starts[c]:cells.starts[c + 1]]
            if len(members) == 0:
                continue
            slot = torch.from_numpy(slots[bounds[c]:bounds[c + 1]]).to(dev)
            who = slot // nprobe
            scores = a[who] @ xt[members].T
            scores.masked_fill_(ct[b0 + who][:, None] == ct[members][None, :], -torch.inf)
            top_s, top_j = torch.topk(scores, min(k, len(members)), dim=1)
            cand_s[slot, : top_s.shape[1]] = top_s
            cand_i[slot, : top_s.shape[1]] = torch.where(torch.isfinite(top_s), members[top_j], n)
        rows = cand_i.reshape(m, nprobe * k).cpu().numpy()
        best_s, best_i = _positives(cand_s.reshape(m, nprobe * k).cpu().numpy(), np.where(rows < n, rows, -1),
                                    code, anchors, k, n)
        pos = _positives(_pair_scores(x, anchors, best_i), np.where(best_i < n, best_i, -1), code, anchors, k, n)
        for acc, part in zip(out, (*pos, *pick_negatives(x, code, anchors, cfg))):
            acc.append(part)
    return tuple(np.concatenate(parts) for parts in out) if out[0] else _empty(k, cfg.num_neg)


def _pair_scores(x: np.ndarray, anchors: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[A, k] cosine of each anchor with each of its rows (n = none: -inf), one dot product per pair,
    so a score does not depend on which other anchors shared its matrix product."""
    n = x.shape[0]
    out = np.full(rows.shape, -np.inf, np.float32)
    for c0 in range(0, len(anchors), chunk):
        r = rows[c0:c0 + chunk]
        found = r < n
        s = np.einsum("ad,akd->ak", x[anchors[c0:c0 + chunk]], x[np.where(found, r, 0)])
        out[c0:c0 + chunk] = np.where(found, s, -np.inf)
    return out


def _empty(k: int, m: int) -> tuple[np.ndarray, ...]:
    return (np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), np.zeros((0, m), np.float32),
            np.zeros((0, m), np.int64), np.zeros((0, m), bool))


def _search_task(cells: Cells, x: np.ndarray, code: np.ndarray, lo: int, hi: int,
                 cfg: PairsConfig) -> tuple[np.ndarray, ...]:
    """One Ray task: its anchors searched in the shared cells, at one thread (the task's CPU)."""
    import faiss

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    return search_range(cells, x, code, lo, hi, cfg)


def _partitions(cfg: PairsConfig) -> int:
    import ray

    if cfg.partitions == 1 or not ray.is_initialized():
        return 1
    return cfg.partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))


def mine_ivf(x: np.ndarray, clip_code: np.ndarray, cfg: PairsConfig) -> tuple:
    """Approximate positives and sampled negatives of every row of the unit embeddings x
    (module docstring). Returns (pos_s, pos_i, neg_s, neg_i, neg_ok, attrs)."""
    n = x.shape[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    code = np.asarray(clip_code, dtype=np.int64)
    started = time.perf_counter()
    cells = build_index(x, cfg)
    built = time.perf_counter()
    parts = _partitions(cfg)
    if parts == 1:
        result = search_range(cells, x, code, 0, n, cfg)
    else:
        import ray

        bounds = np.linspace(0, n, parts + 1).astype(int)
        shared = [ray.put(v) for v in (cells, x, code)]
        task = ray.remote(num_cpus=1)(_search_task)
        pieces = ray.get([task.remote(*shared, int(lo), int(hi), cfg) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo])
        result = tuple(np.concatenate([p[i] for p in pieces]) for i in range(5))
    searched = time.perf_counter()
    attrs = {"method": "ivf", "nlist": cells.nlist, "nprobe": min(cfg.nprobe, cells.nlist), "partitions": parts,
             "build_s": round(built - started, 2), "search_s": round(searched - built, 2)}
    if cfg.recall_sample and n:
        attrs["recall_at_k"] = sampled_recall(x, code, result[1], cfg.k_pos, cfg.recall_sample, cfg.seed)
        attrs["recall_sample"] = min(n, cfg.recall_sample)
    log.info("pairs: IVF over %d frames (nlist %d, nprobe %d, %d partition(s)): cells %.1f s, search %.1f s%s",
             n, cells.nlist, attrs["nprobe"], parts, attrs["build_s"], attrs["search_s"],
             f", recall@{cfg.k_pos} {attrs['recall_at_k']:.3f} on {attrs['recall_sample']} anchors"
             if "recall_at_k" in attrs else "")
    return (*result, attrs)


def sampled_recall(x: np.ndarray, code: np.ndarray, approx_rows: np.ndarray, k: int, sample: int,
                   seed: int) -> float:
    """Mean over a seeded sample of anchors of |approximate top-k & exact top-k| / |exact top-k|."""
    n = x.shape[0]
    anchors = np.sort(np.random.default_rng([seed, 1]).choice(n, size=min(n, sample), replace=False))
    with torch.inference_mode():
        scores, rows = exact_top_k(torch.from_numpy(x), torch.from_numpy(code), torch.from_numpy(anchors), k)
    hits = total = 0
    for a, exact_row, exact_s in zip(anchors, rows.numpy(), scores.numpy()):
        exact = set(exact_row[np.isfinite(exact_s)].tolist())
        hits += len(exact & set(approx_rows[a].tolist()))
        total += len(exact)
    return hits / total if total else float("nan")
