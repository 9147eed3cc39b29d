"""Evaluation of a user's own clips: motion discrepancy, CLIP-T, frame consistency, ImageReward, point trackers.

See docs/method.md "Evaluation". Model-backed metrics only use local weights and raise :class:`MetricUnavailable`
(with instructions) when they are missing; the point tracker in use is always reported by name.
"""

from motion_core.eval.metrics import (
    DEFAULT_CLIP_MODEL,
    MetricUnavailable,
    appearance_similarity,
    clip_scores,
    clip_t_from_embeddings,
    frame_consistency_from_embeddings,
    imagereward_score,
    motion_discrepancy,
    trajectory_distance,
    video_motion_discrepancy,
)
from motion_core.eval.trackers import cotracker_available, cotracker_tracks, get_tracker, grid_points, lk_tracks

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "MetricUnavailable",
    "appearance_similarity",
    "clip_scores",
    "clip_t_from_embeddings",
    "cotracker_available",
    "cotracker_tracks",
    "frame_consistency_from_embeddings",
    "get_tracker",
    "grid_points",
    "imagereward_score",
    "lk_tracks",
    "motion_discrepancy",
    "trajectory_distance",
    "video_motion_discrepancy",
]
