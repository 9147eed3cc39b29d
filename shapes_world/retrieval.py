"""Retrieval check of a motion feature (docs/method.md "Evaluation"; MotionMatcher App. C).

Each video in a set is used once as a query. Its positives are the ``positive_fraction`` of the *other* videos with
the smallest motion discrepancy to it; the other videos are ranked by feature distance to the query and the
average precision (AP) of that ranking is computed. The score is the mean AP over queries, returned as a
**fraction in [0, 1]** (the paper reports percent: multiply by 100; its numbers are M 32.78 %, random 10.71 %).

A random ranking does not score exactly ``positive_fraction``: with n candidates and k positives its expected AP
is ``(H_n + (k - 1) / (n - 1) * (n - H_n)) / n`` (``H_n`` the n-th harmonic number), see :func:`expected_random_ap`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _num_positives(num_candidates: int, positive_fraction: float) -> int:
    if not 0.0 < positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in (0, 1]; got {positive_fraction}")
    return int(min(num_candidates, max(1, round(positive_fraction * num_candidates))))


def _check_discrepancy(discrepancy: np.ndarray) -> int:
    if discrepancy.ndim != 2 or discrepancy.shape[0] != discrepancy.shape[1]:
        raise ValueError(f"discrepancy must be a square (N, N) matrix; got {discrepancy.shape}")
    if discrepancy.shape[0] < 2:
        raise ValueError("need at least two videos")
    return discrepancy.shape[0]


def feature_distances(features: Any, metric: str = "l2") -> np.ndarray:
    """(N, N) pairwise distances between flattened features: ``"l2"`` (Euclidean) or ``"cosine"`` (1 - cos)."""
    f = _as_array(features)
    f = f.reshape(f.shape[0], -1)
    if metric == "l2":
        sq = np.sum(f * f, axis=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T)
        return np.sqrt(np.maximum(d2, 0.0))
    if metric == "cosine":
        norms = np.linalg.norm(f, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValueError("a feature vector has zero norm; cosine distance is undefined")
        g = f / norms
        return 1.0 - g @ g.T
    raise ValueError(f"unknown metric {metric!r}; choose 'l2' or 'cosine'")


def average_precision(ranked_relevance: np.ndarray) -> float:
    """AP of one ranking given the 0/1 relevance of the ranked items: mean of precision@rank at each positive."""
    rel = np.asarray(ranked_relevance, dtype=np.float64)
    num_pos = rel.sum()
    if num_pos == 0:
        raise ValueError("a ranking needs at least one positive")
    precision_at = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision_at * rel).sum() / num_pos)


def _positives(discrepancy: np.ndarray, query: int, others: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask over ``others``: the k with smallest discrepancy to ``query`` (stable ties: lower index)."""
    order = np.argsort(discrepancy[query, others], kind="stable")
    pos = np.zeros(len(others), dtype=bool)
    pos[order[:k]] = True
    return pos


def average_precision_retrieval(
    features: Any,
    discrepancy: Any,
    positive_fraction: float = 0.1,
    metric: str = "l2",
) -> float:
    """Mean average precision of retrieving low-motion-discrepancy videos by feature distance (App. C).

    Args:
        features: (N, D) features, one row per video (higher-dimensional rows are flattened).
        discrepancy: (N, N) motion discrepancy between videos (row = query; the diagonal is ignored).
        positive_fraction: share of the N - 1 other videos that count as positives (at least one).
        metric: feature distance, ``"l2"`` or ``"cosine"``.

    Returns:
        Mean AP over all N queries as a fraction in [0, 1]. Ties in feature distance are broken by video index.
    """
    disc = _as_array(discrepancy)
    n = _check_discrepancy(disc)
    dist = feature_distances(features, metric)
    if dist.shape[0] != n:
        raise ValueError(f"{dist.shape[0]} feature rows but a {n}x{n} discrepancy matrix")
    k = _num_positives(n - 1, positive_fraction)
    aps = []
    for q in range(n):
        others = np.delete(np.arange(n), q)
        pos = _positives(disc, q, others, k)
        ranking = np.argsort(dist[q, others], kind="stable")
        aps.append(average_precision(pos[ranking]))
    return float(np.mean(aps))


def random_baseline_ap(
    discrepancy: Any,
    positive_fraction: float = 0.1,
    seed: int = 0,
    trials: int = 100,
) -> float:
    """Mean AP of uniformly random rankings (fraction in [0, 1]), averaged over queries and ``trials`` shuffles."""
    disc = _as_array(discrepancy)
    n = _check_discrepancy(disc)
    if trials < 1:
        raise ValueError(f"trials must be >= 1; got {trials}")
    k = _num_positives(n - 1, positive_fraction)
    rng = np.random.default_rng(seed)
    aps = []
    for q in range(n):
        others = np.delete(np.arange(n), q)
        pos = _positives(disc, q, others, k)
        for _ in range(trials):
            aps.append(average_precision(pos[rng.permutation(n - 1)]))
    return float(np.mean(aps))


def expected_random_ap(num_candidates: int, num_positives: int) -> float:
    """Exact expected AP of a uniformly random ranking of ``num_candidates`` items with ``num_positives`` positives.

    From E[rel_r] = k/n and E[rel_r rel_s] = k(k-1)/(n(n-1)) for r != s:
    ``E[AP] = (H_n + (k - 1)/(n - 1) * (n - H_n)) / n``.
    """
    n, k = num_candidates, num_positives
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= num_positives <= num_candidates; got {k}, {n}")
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    pair = (k - 1) / (n - 1) if n > 1 else 0.0
    return (harmonic + pair * (n - harmonic)) / n
