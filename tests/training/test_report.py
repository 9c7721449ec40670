"""Report metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulacra_services.training.loop.run import TrainingData
from simulacra_services.training.report import metrics
from simulacra_services.training.report.quality import quality_report, validation_split


def _blobs(n: int, seed: int, dim: int = 8, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)) + shift


def test_a_set_against_itself_is_perfect():
    x = _blobs(200, 0)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shifted = metrics.kernel_inception_distance(x, x + 1.0, subset_size=100)
    assert abs(metrics.kernel_inception_distance(x, x, subset_size=100)) < 0.1 * shifted
    figures = metrics.prdc(x, x, k=5)
    assert figures["precision"] == figures["recall"] == figures["coverage"] == 1.0
    assert figures["density"] >= 1.0


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    a, b = _blobs(20000, 1, dim=2), _blobs(20000, 2, dim=2, shift=3.0)
    assert metrics.frechet_distance(a, b) == pytest.approx(18.0, rel=0.03)  # 2 dims * 3^2
    scaled = _blobs(20000, 3, dim=1) * 2.0  # 1-d: (sigma_a - sigma_b)^2 = 1
    assert metrics.frechet_distance(_blobs(20000, 4, dim=1), scaled) == pytest.approx(1.0, rel=0.05)


def test_far_away_samples_have_no_precision_and_no_coverage():
    real, far = _blobs(200, 5), _blobs(200, 6, shift=50.0)
    figures = metrics.prdc(real, far, k=5)
    assert figures == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert metrics.kernel_inception_distance(real, far, subset_size=100) > 1.0


def test_roc_auc_known_values():
    assert metrics.roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert metrics.roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert metrics.roc_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5


def test_privacy_of_copies_fresh_samples_and_noise():
    train, holdout, fresh = _blobs(300, 7), _blobs(300, 8), _blobs(300, 9)
    copies = metrics.privacy(train, holdout, train.copy())
    assert copies["memorization_rate"] == 1.0 and copies["dcr_ratio"] == 0.0
    assert copies["median_dcr_synthetic"] == pytest.approx(0.0, abs=1e-6)
    assert copies["membership_inference_auc"] == 1.0 and copies["median_nndr"] == pytest.approx(0.0, abs=1e-6)
    honest = metrics.privacy(train, holdout, fresh)
    assert 0.8 < honest["dcr_ratio"] < 1.25
    assert honest["memorization_rate"] < 0.15
    assert 0.4 < honest["membership_inference_auc"] < 0.6


def _digits(seed: int, n: int, labels: np.ndarray | None = None) -> TrainingData:
    """Three easy 'classes': a bright square in a different place per class, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n) if labels is None else labels
    images = np.full((n, 1, 16, 16), -1.0, dtype=np.float32) + rng.normal(0, 0.1, (n, 1, 16, 16)).astype(np.float32)
    for i, label in enumerate(labels):
        images[i, 0, 2 + 4 * label : 6 + 4 * label, 3:9 + int(rng.integers(0, 4))] = 1.0
    return TrainingData(torch.from_numpy(images).clamp(-1, 1), torch.from_numpy(labels))


def test_report_real_as_synthetic_scores_like_the_baseline_and_noise_scores_badly():
    train, holdout = _digits(0, 300), _digits(1, 200)
    fresh = _digits(2, 200, labels=holdout.labels.numpy())  # the report draws the holdout's class mix
    good = quality_report(train, holdout, fresh, num_classes=3, class_names=("a", "b", "c"), epochs=3, min_steps=0)
    noise = TrainingData(torch.rand(200, 1, 16, 16) * 2 - 1, fresh.labels)
    bad = quality_report(train, holdout, noise, num_classes=3, epochs=3, min_steps=0)

    assert good["fidelity"]["frechet_distance"] < 3 * good["fidelity"]["frechet_distance_real_baseline"] + 1e-3
    assert bad["fidelity"]["frechet_distance"] > 10 * good["fidelity"]["frechet_distance"]
    assert good["fidelity"]["precision"] > 0.8 and bad["fidelity"]["precision"] < 0.2
    assert good["fidelity"]["label_fidelity"] > 0.9
    assert good["utility"]["trtr_accuracy"] > 0.9 and good["utility"]["tstr_accuracy"] > 0.9
    assert bad["utility"]["tstr_accuracy"] < 0.6
    assert good["fidelity"]["c2st_accuracy"] < 0.7 < bad["fidelity"]["c2st_accuracy"]
    assert [c["class_name"] for c in good["per_class"]] == ["a", "b", "c"]
    assert sum(c["synthetic_sample_count"] for c in good["per_class"]) == 200
    assert good["feature_extractor"].startswith("simulacra-small-cnn@sha256:")


def test_report_flags_memorized_copies():
    train, holdout = _digits(0, 300), _digits(1, 200)
    copies = TrainingData(train.images[:200].clone(), train.labels[:200].clone())
    report = quality_report(train, holdout, copies, num_classes=3, epochs=1, min_steps=0)
    assert report["privacy"]["memorization_rate"] == 1.0
    assert report["privacy"]["dcr_ratio"] == pytest.approx(0.0, abs=1e-4)
    assert report["privacy"]["membership_inference_auc"] > 0.75


def test_checkpoints_are_chosen_on_a_validation_part_disjoint_from_the_reported_test_part():
    images = torch.arange(20, dtype=torch.float32).reshape(20, 1, 1, 1)
    holdout = TrainingData(images, torch.arange(20) % 3, torch.arange(20).reshape(20, 1))
    validation, test, disjoint = validation_split(holdout, seed=0)
    assert disjoint and (len(validation), len(test)) == (6, 14)
    seen_v, seen_t = set(validation.images.flatten().tolist()), set(test.images.flatten().tolist())
    assert not seen_v & seen_t and seen_v | seen_t == set(range(20))
    assert validation.attributes.flatten().tolist() == validation.images.flatten().tolist()  # rows stay together
    assert (test.labels == test.images.flatten().long() % 3).all()
    again, _, _ = validation_split(holdout, seed=0)
    assert torch.equal(again.images, validation.images)  # the same job picks the same digits on resume
    tiny = TrainingData(images[:3], torch.zeros(3, dtype=torch.long))
    v, t, disjoint = validation_split(tiny, seed=0)
    assert not disjoint and len(v) == len(t) == 3
