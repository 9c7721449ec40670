"""The quality report of a generator: what the registry stores with each version (as JSON).

Real data is split in two: ``train`` (what the generator learnt from) and ``holdout`` (never seen
by it). The domain feature extractor is a small CNN trained on ``train``; distances are measured
between ``holdout`` and the synthetic samples in its feature space, next to a real-vs-real baseline
(train vs holdout, same count) that says what "as good as real" reads as. Privacy figures are in
pixel space, where a copy is a copy whatever the extractor learnt.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import torch

from simulacra_services.training.loop.run import TrainingData
from simulacra_services.training.report import classifier as cnn
from simulacra_services.training.report import metrics

NEIGHBOURS = 5
MEMORIZATION_QUANTILE = 0.05


@torch.no_grad()
def draw_samples(sampler: torch.nn.Module, labels: torch.Tensor, attributes: torch.Tensor | None, latent_dim: int, seed: int, batch_size: int = 256) -> torch.Tensor:
    """Sample i of (generator, seed) is reproducible: z comes from a seeded numpy stream."""
    z = torch.from_numpy(np.random.default_rng(seed).standard_normal((len(labels), latent_dim)).astype(np.float32))
    sampler = sampler.eval()
    device = next(sampler.parameters()).device
    out = []
    for start in range(0, len(labels), batch_size):
        part = slice(start, start + batch_size)
        chunk_attributes = None if attributes is None else attributes[part].to(device)
        out.append(sampler(z[part].to(device), labels[part].to(device), chunk_attributes).float().cpu())
    return torch.cat(out)


class FrechetSelector:
    """Scores checkpoints by the report's Fréchet distance (same extractor: same seed, same training
    items), on fewer samples, so that the job can export its best checkpoint rather than its last."""

    def __init__(self, train: TrainingData, holdout: TrainingData, num_classes: int, seed: int, samples: int = 500) -> None:
        self.extractor = cnn.train_classifier(train.images, train.labels, num_classes, seed=seed)
        self.real = cnn.features(self.extractor, holdout.images)
        self.labels, self.attributes = synthetic_conditions(train, holdout, min(samples, max(len(holdout), 2)), seed)
        self.seed = seed

    def score(self, sampler: torch.nn.Module, latent_dim: int) -> float:
        with torch.random.fork_rng(devices=[]):
            synthetic = draw_samples(sampler, self.labels, self.attributes, latent_dim, self.seed + 101)
        return metrics.frechet_distance(self.real, cnn.features(self.extractor, synthetic))


VALIDATION_FRACTION = 0.3


def validation_split(holdout: TrainingData, seed: int, fraction: float = VALIDATION_FRACTION) -> tuple[TrainingData, TrainingData, bool]:
    """Splits the held-out items into (validation, test, disjoint): checkpoints are chosen on the
    validation part and the report is measured on the test part, so that the figure reported is not
    the one that was minimised. With fewer than 4 held-out items there is nothing to split: both are the
    whole holdout and ``disjoint`` is False (the report says so)."""
    if len(holdout) < 4:
        return holdout, holdout, False
    order = torch.from_numpy(np.random.default_rng(seed + 2).permutation(len(holdout)))
    cut = min(max(2, int(round(len(holdout) * fraction))), len(holdout) - 2)

    def part(indices: torch.Tensor) -> TrainingData:
        attributes = None if holdout.attributes is None else holdout.attributes[indices]
        return TrainingData(holdout.images[indices], holdout.labels[indices], attributes)

    return part(order[:cut]), part(order[cut:]), True


def synthetic_conditions(train: TrainingData, holdout: TrainingData, count: int, seed: int):
    """Labels follow the holdout's class mix (like is compared with like); attributes the train's."""
    rng = np.random.default_rng(seed + 1)
    labels = holdout.labels[torch.from_numpy(rng.integers(0, len(holdout), count))]
    attributes = None
    if train.attributes is not None:
        attributes = train.attributes[torch.from_numpy(rng.integers(0, len(train), count))]
    return labels, attributes


def _fidelity(real_f: np.ndarray, synth_f: np.ndarray, seed: int) -> dict:
    return {"frechet_distance": metrics.frechet_distance(real_f, synth_f),
            "kid": metrics.kernel_inception_distance(real_f, synth_f, seed=seed)} | metrics.prdc(real_f, synth_f, NEIGHBOURS)


def quality_report(
    train: TrainingData,
    holdout: TrainingData,
    synthetic: TrainingData,
    *,
    num_classes: int,
    class_names: tuple[str, ...] = (),
    seed: int = 0,
    epochs: int = 5,
    min_steps: int = cnn.MIN_STEPS,
) -> dict:
    conditional = num_classes >= 2
    extractor = cnn.train_classifier(train.images, train.labels, num_classes, epochs=epochs, seed=seed, min_steps=min_steps)
    f_train, f_hold, f_synth = (cnn.features(extractor, d.images) for d in (train, holdout, synthetic))
    rng = np.random.default_rng(seed)
    baseline_train = f_train[rng.choice(len(f_train), min(len(f_train), len(f_hold)), replace=False)]

    fidelity = _fidelity(f_hold, f_synth, seed) | {
        "frechet_distance_real_baseline": metrics.frechet_distance(baseline_train, f_hold),
        "kid_real_baseline": metrics.kernel_inception_distance(baseline_train, f_hold, seed=seed),
        "neighbours": NEIGHBOURS,
        "c2st_accuracy": cnn.two_sample_accuracy(f_hold, f_synth, seed=seed),
    }
    report: dict = {
        "feature_extractor": f"simulacra-small-cnn@sha256:{cnn.weights_digest(extractor)}",
        "real_sample_count": len(holdout),
        "synthetic_sample_count": len(synthetic),
        "seed": seed,
        "fidelity": fidelity,
        "create_time": dt.datetime.now(dt.timezone.utc).isoformat(),
    }

    tstr_predictions = None
    if conditional:
        fidelity["label_fidelity"] = float((cnn.predict(extractor, synthetic.images) == synthetic.labels.numpy()).mean())
        trtr_model = cnn.train_classifier(train.images, train.labels, num_classes, epochs=epochs, seed=seed + 1, min_steps=min_steps)
        tstr_model = cnn.train_classifier(synthetic.images, synthetic.labels, num_classes, epochs=epochs, seed=seed + 1,
                                          min_steps=min_steps)
        tstr_predictions = cnn.predict(tstr_model, holdout.images)
        report["utility"] = {
            "tstr_accuracy": float((tstr_predictions == holdout.labels.numpy()).mean()),
            "trtr_accuracy": float((cnn.predict(trtr_model, holdout.images) == holdout.labels.numpy()).mean()),
            "classifier": f"small CNN (3 conv + dense, >= {epochs} epochs and >= 400 steps up to 50 epochs, Adam 2e-3), the extractor's architecture",
        }

    pixels = [d.images.flatten(1).numpy() for d in (train, holdout, synthetic)]
    report["privacy"] = metrics.privacy(*pixels, quantile=MEMORIZATION_QUANTILE)
    if conditional:
        report["per_class"] = _per_class(
            train, holdout, synthetic, f_hold, f_synth, pixels, tstr_predictions, extractor, num_classes, class_names, seed
        )
    return report


def _per_class(train, holdout, synthetic, f_hold, f_synth, pixels, tstr_predictions, extractor, num_classes, class_names, seed):
    out = []
    synth_predicted = cnn.predict(extractor, synthetic.images)
    for label in range(num_classes):
        real_mask = (holdout.labels == label).numpy()
        synth_mask = (synthetic.labels == label).numpy()
        train_mask = (train.labels == label).numpy()
        entry = {
            "label": label,
            "class_name": class_names[label] if label < len(class_names) else "",
            "real_sample_count": int(real_mask.sum()),
            "synthetic_sample_count": int(synth_mask.sum()),
        }
        if real_mask.sum() >= 2 and synth_mask.sum() >= 2:
            entry["fidelity"] = _fidelity(f_hold[real_mask], f_synth[synth_mask], seed)
            entry["label_fidelity"] = float((synth_predicted[synth_mask] == label).mean())
            entry["tstr_recall"] = float((tstr_predictions[real_mask] == label).mean())
            if train_mask.sum() >= 2:
                entry["privacy"] = metrics.privacy(
                    pixels[0][train_mask], pixels[1][real_mask], pixels[2][synth_mask], quantile=MEMORIZATION_QUANTILE
                )
        out.append(entry)
    return out
