"""Retrieval AP of the motion-feature check (``shapes_world/retrieval.py``): hand-computed and simulated answers."""

from __future__ import annotations

import numpy as np
import pytest

from shapes_world.retrieval import (
    average_precision,
    average_precision_retrieval,
    expected_random_ap,
    random_baseline_ap,
)


def test_average_precision_single_ranking() -> None:
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision(np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_retrieval_ap_perfect_when_features_match_discrepancy(metric: str) -> None:
    rng = np.random.default_rng(0)
    if metric == "l2":
        features = rng.normal(size=(60, 3))
        discrepancy = ((features[:, None] - features[None]) ** 2).sum(-1)  # monotone in L2 distance
    else:
        angles = rng.uniform(0, np.pi, 60)
        features = np.stack([np.cos(angles), np.sin(angles)], axis=1) * rng.uniform(0.5, 2.0, (60, 1))
        discrepancy = np.abs(angles[:, None] - angles[None])  # monotone in cosine distance on a half circle
    assert average_precision_retrieval(features, discrepancy, 0.1, metric=metric) == pytest.approx(1.0)
    # reversed order: features that rank the positives last score far lower
    assert average_precision_retrieval(features, -discrepancy, 0.1, metric=metric) < 0.2


def test_retrieval_ap_random_features_near_positive_fraction() -> None:
    n, frac = 300, 0.1
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(n, 2))
    discrepancy = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    expected = expected_random_ap(n - 1, round(frac * (n - 1)))  # ~0.112 for 299 candidates, 30 positives
    assert abs(expected - frac) < 0.02
    ap = average_precision_retrieval(rng.normal(size=(n, 16)), discrepancy, frac)
    assert ap == pytest.approx(expected, abs=0.02)
    baseline = random_baseline_ap(discrepancy, frac, seed=0, trials=5)
    assert baseline == pytest.approx(expected, abs=0.01)


def test_expected_random_ap_matches_simulation() -> None:
    rng = np.random.default_rng(2)
    rel = np.zeros(20, dtype=int)
    rel[:4] = 1
    sim = np.mean([average_precision(rng.permutation(rel)) for _ in range(20000)])
    assert expected_random_ap(20, 4) == pytest.approx(sim, abs=0.005)
    assert expected_random_ap(5, 5) == pytest.approx(1.0)
