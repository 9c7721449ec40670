"""Distribution, manifold and privacy metrics on feature (or pixel) vectors: numpy only.

Every function takes plain float arrays [N, D]; none knows where the vectors come from, so each can
be checked on cases with known answers (a set against itself, against noise, against its copies).
"""

from __future__ import annotations

import numpy as np


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] in float64."""
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), by symmetric eigendecompositions."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False)) if len(a) > 1 else np.zeros((a.shape[1],) * 2)
    s_b = np.atleast_2d(np.cov(b, rowvar=False)) if len(b) > 1 else np.zeros((b.shape[1],) * 2)
    root_a = _psd_sqrt(s_a)
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_cross = np.sqrt(np.clip(middle, 0.0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * trace_cross)
    return max(value, 0.0)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018), averaged over subsets."""
    rng = np.random.default_rng(seed)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        return float("nan")
    d = a.shape[1]
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)].astype(np.float64)
        y = b[rng.choice(len(b), m, replace=False)].astype(np.float64)
        k_xx, k_yy, k_xy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        total += (
            (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
            + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            - 2 * k_xy.mean()
        )
    return float(total / subsets)


def _kth_neighbour_radii(x: np.ndarray, k: int) -> np.ndarray:
    distances = pairwise_distances(x, x)
    return np.partition(distances, k, axis=1)[:, k]  # index 0 is the point itself


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k-NN balls."""
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        return {"precision": float("nan"), "recall": float("nan"), "density": float("nan"), "coverage": float("nan")}
    real_radii, fake_radii = _kth_neighbour_radii(real, k), _kth_neighbour_radii(fake, k)
    distances = pairwise_distances(real, fake)  # [R, F]
    inside_real = distances <= real_radii[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((distances <= fake_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((distances.min(axis=1) <= real_radii).mean()),
    }


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def privacy(train: np.ndarray, holdout: np.ndarray, synthetic: np.ndarray, quantile: float = 0.05) -> dict[str, float]:
    """Distance-to-closest-record figures, memorization and a distance membership-inference attack.

    - dcr_ratio: median DCR synthetic->train over median DCR holdout->train (about 1 when the
      generator does not copy; near 0 when it does).
    - memorization_rate: share of synthetic samples closer to a training item than the
      ``quantile`` of the holdout->train distances (about ``quantile`` for a fresh sample).
    - membership_inference_auc: an attacker scores each real item by its closeness to the
      synthetic set and tries to tell training items (members) from holdout items; 0.5 = no leak.
    """
    to_train = pairwise_distances(synthetic, train)
    nearest_two = np.partition(to_train, 1, axis=1)[:, :2] if train.shape[0] > 1 else np.repeat(to_train, 2, 1)
    dcr_synthetic = nearest_two[:, 0]
    dcr_holdout = pairwise_distances(holdout, train).min(axis=1)
    threshold = float(np.quantile(dcr_holdout, quantile))
    nndr = dcr_synthetic / np.maximum(nearest_two[:, 1], 1e-12)
    rng = np.random.default_rng(0)
    members = train[rng.choice(len(train), min(len(train), len(holdout)), replace=False)]
    member_scores = -pairwise_distances(members, synthetic).min(axis=1)
    holdout_scores = -pairwise_distances(holdout, synthetic).min(axis=1)
    median_holdout = float(np.median(dcr_holdout))
    return {
        "median_dcr_synthetic": float(np.median(dcr_synthetic)),
        "median_dcr_holdout": median_holdout,
        "dcr_ratio": float(np.median(dcr_synthetic) / median_holdout) if median_holdout > 0 else float("nan"),
        "memorization_threshold": threshold,
        "memorization_rate": float((dcr_synthetic <= threshold).mean()),
        "median_nndr": float(np.median(nndr)),
        "membership_inference_auc": roc_auc(member_scores, holdout_scores),
    }
