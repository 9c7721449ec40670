"""The stages of `simulacra demo` after the suite is up, through the SDK only (imports torch).

Data: the digits are split train/val/test (60/20/20) by ``split_seed``; the
scarce set keeps ``label_fraction`` of each class's train digits, the biased
set the same but only ``biased_fraction`` for ``biased_classes``. Each is a
dataset version of the annotation-store, read back with ``RealDataset``.

Every classifier run takes ``steps`` batches of ``batch_size``, shared between
its sources: the real set (in memory, shuffled per seed), augmented copies of
it (made once through ``Augmented``, the augmentation service's stream) and
synthetic samples streamed by ``SyntheticDataset`` from the sampling service
(uniform classes for the scarce set; for the biased set, the classes it lacks,
those under half the largest class's count, weighted by their deficit). Synthetic samples take ``synthetic_share`` of each batch
(0: an equal share) and pass a label filter first: a judge classifier trained
on the variant's real (and augmented) training data only keeps a sample when
it gives the sample's conditioned label at least ``synthetic_confidence``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from simulacra_client import AnnotationClient
from simulacra_client.annotation import ProgressEvent
from simulacra_client.errors import SimulacraRpcError
from simulacra_services.cli.demo import ARMS, VARIANTS, Journal, Plan
from simulacra_services.cli.demo_classifier import FilterStarved, LabelFilter, RunResult, Tally, in_memory_batches, train, train_and_test
from simulacra_services.core.config import Settings

AUGMENT_COPIES = 10
JUDGE_SEED = 100  # the label filter's classifier: a seed no arm uses


def digit_pipeline() -> Any:
    """Small shifts, turns, zooms and shears: what a handwritten digit survives."""
    from simulacra_client import Pipeline

    return Pipeline().add("affine", scale=(0.9, 1.1), translate_x=(-0.1, 0.1), translate_y=(-0.1, 0.1), rotate_degrees=(-12, 12), shear_x_degrees=(-8, 8))


@dataclass
class Availability:
    """Whether an arm's extra data source can run, and why not."""

    augmented: str = ""  # "" = available, else the reason
    synthetic: str = ""
    generator: str = ""  # models/M/versions/V when a generator is served


@dataclass
class Results:
    runs: dict[tuple[str, str], list[RunResult]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # arm -> reason
    datasets: dict[str, str] = field(default_factory=dict)  # role -> version name
    counts: dict[str, list[int]] = field(default_factory=dict)  # role -> items per class
    filtered: dict[str, Tally] = field(default_factory=dict)  # variant -> synthetic samples drawn and accepted


def split_indices(labels: np.ndarray, plan: Plan) -> dict[str, np.ndarray]:
    """train/val/test/scarce/biased index arrays into the digit arrays, from ``plan.split_seed``."""
    rng = np.random.default_rng(plan.split_seed)
    order = rng.permutation(len(labels))
    n_train, n_val = int(len(order) * 0.6), int(len(order) * 0.2)
    train, val, test = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    scarce, biased = [], []
    for digit in range(10):
        members = train[labels[train] == digit]  # already in random order
        keep = max(1, round(len(members) * plan.label_fraction))
        scarce.extend(members[:keep])
        cut = max(1, round(len(members) * plan.biased_fraction)) if digit in plan.biased_classes else keep
        biased.extend(members[:cut])
    return {"train": train, "val": val, "test": test, "scarce": np.sort(np.array(scarce)), "biased": np.sort(np.array(biased))}


class Flow:
    def __init__(self, plan: Plan, settings: Settings, journal: Journal) -> None:
        self.plan = plan
        self.settings = settings
        self.journal = journal
        self.results = Results()
        self.grids: dict[str, Path] = {}
        self.generator_report: dict[str, float] = {}
        self.pools: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # variant -> augmented images, labels
        self.tag = ""
        self.label_map: dict[int, int] = {}
        self.filters: dict[str, LabelFilter] = {}  # variant -> its synthetic label filter
        self._last_progress = 0.0

    def _client(self) -> AnnotationClient:
        s = self.settings
        return AnnotationClient(s.address("annotation"), token=s.auth_token or None, tls_ca=s.tls_ca or None, max_message_bytes=s.max_message_bytes)

    def _progress(self, event: ProgressEvent) -> None:
        import time

        now = time.monotonic()
        if now - self._last_progress > 2.0 or (event.total and event.done == event.total):
            self._last_progress = now
            total = f"/{event.total}" if event.total else ""
            self.journal.say(f"   {event.stage} {event.done}{total} {event.unit}".rstrip())

    # ---- stages ----------------------------------------------------------------
    def run(self) -> Path:
        torch.set_num_threads(1)  # small models: one thread each is faster than two fighting
        self.plan.out_dir.mkdir(parents=True, exist_ok=True)
        self.import_data()
        availability = self.prepare_sources()
        self.train_classifiers(availability)
        stage = self.journal.begin("report")
        from simulacra_services.cli.demo_report import write_report

        path = write_report(self.plan, self.results, availability, self.journal, self.grids, self.generator_report)
        self.journal.end(stage, "done", str(path))
        self.print_table()
        return path

    def import_data(self) -> None:
        stage = self.journal.begin("data: import the MNIST digits, split, scarce and biased sets")
        from simulacra_services.cli.datasets import load_mnist_digits

        images, labels = load_mnist_digits()
        if self.plan.digits < len(labels):  # --quick: a stratified subset
            chosen = np.sort(np.random.default_rng(1234).permutation(len(labels))[: self.plan.digits])
            images, labels = images[chosen], labels[chosen]
        parts = split_indices(labels, self.plan)
        tag = self.tag = f"demo-{len(labels)}-s{self.plan.split_seed}"
        val = ("val", images[parts["val"]], labels[parts["val"]])  # the generator's holdout, never a classifier's training data
        with self._client() as client:
            self.results.datasets["digits"] = self._dataset(client, f"{tag}-digits", [(name, images[parts[name]], labels[parts[name]]) for name in ("train", "val", "test")])
            for role in ("scarce", "biased"):
                self.results.datasets[role] = self._dataset(client, f"{tag}-{role}", [("train", images[parts[role]], labels[parts[role]]), val])
        for role in ("scarce", "biased"):
            self.results.counts[role] = np.bincount(labels[parts[role]], minlength=10).tolist()
        from simulacra_services.cli.demo_report import save_grid

        self.grids["real (scarce set)"] = save_grid(images[parts["scarce"]], labels[parts["scarce"]], self.plan.out_dir / "real-scarce.png")
        sizes = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
        self.journal.end(stage, "done", f"{sizes}; versions {', '.join(self.results.datasets.values())}")

    def _dataset(self, client: AnnotationClient, name: str, splits: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
        """A committed version holding ``splits``; reused when an earlier run made it (same seed, same content)."""
        try:
            client.get_dataset(name)
            version = client.get_version(f"{name}@latest")
            self.journal.say(f"   {name}: reusing {version.name}")
            return version.name
        except SimulacraRpcError as error:
            if error.code is not grpc.StatusCode.NOT_FOUND:
                raise
        client.create_dataset(name, description="made by simulacra demo")
        for split, split_images, split_labels in splits:
            self.journal.say(f"   {name}: importing {len(split_labels)} {split} digits")
            client.import_mnist(name, split_images, split_labels, split=split, progress=self._progress)
        return client.commit(name, description="simulacra demo").version.name

    def prepare_sources(self) -> Availability:
        """Augmentation, generator training and serving: each stage runs when its service can, else says why not."""
        availability = Availability()
        stage = self.journal.begin("augment (augmentation service)")
        availability.augmented = self._probe("augmentation", "ListPipelines")
        if not availability.augmented:
            self.augment_pools()
        self.journal.end(stage, "not available" if availability.augmented else "done", availability.augmented or f"{AUGMENT_COPIES} augmented copies of each labelled digit, through AugmentStream")

        stage = self.journal.begin("train the enhanced GAN on the scarce set (generator-training service)")
        if self.plan.generator:
            availability.generator = self.plan.generator
            self.journal.end(stage, "done", f"skipped: using {self.plan.generator} (--generator)")
        else:
            problem = self._probe("training", "ListTrainingJobs")
            if not problem:
                from simulacra_services.cli.demo_generator import train_generator

                trained = train_generator(
                    self.settings, self.results.datasets["scarce"], model=f"{self.tag}-gan", steps=self.plan.gan_steps,
                    evaluation_samples=self.plan.evaluation_samples, say=self.journal.say,
                )
                problem = trained.problem
                availability.generator = trained.version
                self.generator_report = trained.report
                titles = {"loss_curve": "generator loss curve (training service)", "report": "generator quality report (training service)"}
                for key, png in trained.pictures.items():
                    path = self.plan.out_dir / f"generator-{key.replace('_', '-')}.png"
                    path.write_bytes(png)
                    self.grids[titles[key]] = path
            self.journal.end(stage, "not available" if problem else "done", problem or f"{availability.generator} registered")
            availability.synthetic = problem and f"no generator: {problem}"

        stage = self.journal.begin("serve the generator (sampling service)")
        if availability.generator:
            from simulacra_services.cli.demo_generator import serve_generator

            availability.synthetic = self._probe("sampling", "ListGenerators") or serve_generator(self.settings, availability.generator)
            if not availability.synthetic:
                self.synthetic_grid(availability.generator)
        self.journal.end(stage, "not available" if availability.synthetic else "done", availability.synthetic or f"{availability.generator} loaded")
        return availability

    def _probe(self, service: str, method: str) -> str:
        """"" when ``service`` implements ``method``, else why not (the status it answers)."""
        from simulacra_client.channel import open_channel

        stubs = {
            "augmentation": ("simulacra_client.api.augmentation.v1", "augmentation_service", "AugmentationService"),
            "training": ("simulacra_client.api.training.v1", "training_service", "TrainingService"),
            "sampling": ("simulacra_client.api.sampling.v1", "sampling_service", "SamplingService"),
        }
        import importlib

        package, module, service_name = stubs[service]
        messages = importlib.import_module(f"{package}.{module}_pb2")
        grpc_module = importlib.import_module(f"{package}.{module}_pb2_grpc")
        s = self.settings
        with open_channel(s.address(service), token=s.auth_token or None, tls_ca=s.tls_ca or None) as channel:
            stub = getattr(grpc_module, f"{service_name}Stub")(channel)
            try:
                getattr(stub, method)(getattr(messages, f"{method}Request")(page_size=1), timeout=10)
                return ""
            except grpc.RpcError as error:
                from simulacra_client.errors import from_rpc_error

                typed = from_rpc_error(error)
                reason = typed.reason or typed.code.name
                if typed.code is grpc.StatusCode.UNIMPLEMENTED:
                    return f"the {service} service does not implement its API yet ({reason})"
                return f"the {service} service answered {typed.code.name} ({reason}): {typed.message}"

    # ---- classifiers -------------------------------------------------------------
    def train_classifiers(self, availability: Availability) -> None:
        from simulacra_client.torch_data import RealDataset, to_tensors

        address = self.settings.address("annotation")
        test_images, test_labels = to_tensors(RealDataset(address, self.results.datasets["digits"], split="test"))
        for arm in ARMS:
            reason = "; ".join(r for r in (availability.augmented if "augmented" in arm else "", availability.synthetic if "synthetic" in arm else "") if r)
            if reason:
                self.results.skipped[arm] = reason
        for variant in VARIANTS:
            train_images, train_labels = to_tensors(RealDataset(address, self.results.datasets[variant], split="train"))
            if any("synthetic" in arm and arm not in self.results.skipped for arm in ARMS):
                self.filters[variant] = self._label_filter(variant, train_images, train_labels)
            for arm in ARMS:
                if arm in self.results.skipped:
                    continue
                stage = self.journal.begin(f"classifier: {variant} / {arm}, {self.plan.seeds} seed(s) x {self.plan.steps} steps")
                runs = []
                try:
                    for seed in range(self.plan.seeds):
                        batches = self._batches(arm, variant, train_images, train_labels, seed, availability)
                        result = train_and_test(batches, test_images, test_labels, steps=self.plan.steps, seed=seed)
                        self.journal.say(f"   seed {seed}: test accuracy {100 * result.accuracy:.1f}% ({result.seconds:.1f} s, {result.samples} samples)")
                        runs.append(result)
                except FilterStarved as starved:
                    self.results.skipped[f"{arm} ({variant} set)"] = str(starved)
                    self.journal.end(stage, "not available", str(starved))
                    continue
                self.results.runs[(variant, arm)] = runs
                accuracy = [r.accuracy for r in runs]
                self.journal.end(stage, "done", f"accuracy {format_spread(accuracy)}")
            if variant in self.results.filtered:
                tally = self.results.filtered[variant]
                self.journal.say(f"   {variant}: the label filter kept {tally.accepted} of {tally.drawn} synthetic digits ({100 * tally.rate:.0f}%)")

    def _label_filter(self, variant: str, images: torch.Tensor, labels: torch.Tensor) -> LabelFilter:
        """The judge of the variant's synthetic samples: the small CNN trained on its real training
        digits and their augmented copies (never on val or test)."""
        stage = self.journal.begin(f"label filter: a judge classifier on the {variant} set's training digits")
        if variant in self.pools:
            pool_images, pool_labels = self.pools[variant]
            half = self.plan.batch_size // 2
            real, augmented = in_memory_batches(images, labels, half, JUDGE_SEED), in_memory_batches(pool_images, pool_labels, self.plan.batch_size - half, JUDGE_SEED)
            batches = ((torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(real, augmented))
        else:
            batches = in_memory_batches(images, labels, self.plan.batch_size, JUDGE_SEED)
        judge, _ = train(batches, steps=self.plan.steps, seed=JUDGE_SEED, channels=images.shape[1])
        self.journal.end(stage, "done", f"keeps a synthetic digit when it gives its label >= {self.plan.synthetic_confidence:g}")
        return LabelFilter(judge, self.plan.synthetic_confidence)

    def _batches(self, arm: str, variant: str, images: torch.Tensor, labels: torch.Tensor, seed: int, availability: Availability) -> Any:
        """Each batch: the real share shuffled in memory, then the augmented and synthetic shares."""
        sources = ["real"] + [s for s in ("augmented", "synthetic") if s in arm]
        shares = batch_shares(self.plan.batch_size, sources, self.plan.synthetic_share)
        streams = []
        for source, share in zip(sources, shares):
            if source == "real":
                streams.append(in_memory_batches(images, labels, share, seed))
            elif source == "augmented":
                streams.append(in_memory_batches(*self.pools[variant], share, 1000 + seed))
            else:
                streams.append(self._synthetic_batches(variant, share, seed, availability.generator))
        while True:
            parts = [next(stream) for stream in streams]
            yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _synthetic_batches(self, variant: str, share: int, seed: int, generator: str) -> Any:
        """Batches streamed from the sampling service: uniform classes for the scarce set; for the
        biased one, the classes it lacks (under half the largest class's count), weighted by their
        deficit to the largest (docs/results.md: better than every class by its deficit)."""
        from simulacra_client.torch_data import ResumableLoader, SyntheticDataset

        counts = self.results.counts[variant]
        class_mix = {c: float(max(counts) - n) for c, n in enumerate(counts) if 2 * n < max(counts)} if variant == "biased" else None
        dataset = SyntheticDataset(self.settings.address("sampling"), generator, seed=seed, class_mix=class_mix or None, label_map=self.label_map)
        tally = self.results.filtered.setdefault(variant, Tally())
        yield from self.filters[variant].batches(iter(ResumableLoader(dataset, batch_size=256)), share, tally)

    def augment_pools(self) -> None:
        """AUGMENT_COPIES augmented copies of each labelled digit of each variant, streamed once, kept in memory."""
        from simulacra_client.torch_data import Augmented, RealDataset, ResumableLoader

        for variant in VARIANTS:
            source = RealDataset(self.settings.address("annotation"), self.results.datasets[variant], split="train", cycle=True)
            total = AUGMENT_COPIES * sum(self.results.counts[variant])
            augmented = Augmented(source, self.settings.address("augmentation"), digit_pipeline(), seed=self.plan.split_seed)
            images, labels = [], []
            for batch_images, batch_labels in ResumableLoader(augmented, batch_size=256):
                images.append(batch_images)
                labels.append(batch_labels)
                if sum(len(b) for b in labels) >= total:
                    break
            self.pools[variant] = (torch.cat(images)[:total], torch.cat(labels)[:total])
            self.journal.say(f"   {variant}: {total} augmented digits")
        pool_images, pool_labels = self.pools["scarce"]
        from simulacra_services.cli.demo_report import save_grid

        pixels = (pool_images * 255).round().to(torch.uint8).numpy()
        self.grids["augmented (scarce set)"] = save_grid(pixels, pool_labels.numpy(), self.plan.out_dir / "augmented-scarce.png")

    def synthetic_grid(self, generator: str) -> None:
        from simulacra_client.torch_data import SyntheticDataset
        from simulacra_services.cli.demo_report import save_grid

        dataset = SyntheticDataset(self.settings.address("sampling"), generator, seed=0, num_samples=200, as_uint8=True)
        info = dataset.info
        with self._client() as client:
            order = sorted(c.category_id for c in client.list_categories(self.results.datasets["scarce"]))
        index = {category: i for i, category in enumerate(order)}
        # Generator label i is category_ids[i]; the classifier's label is the index in category-id order.
        self.label_map = {i: index.get(int(c), i) for i, c in enumerate(info.category_ids)} if info is not None else {}
        dataset.label_map = self.label_map
        samples = list(dataset)
        images = torch.stack([image for image, _ in samples]).numpy()
        labels = np.array([label for _, label in samples])
        self.grids["synthetic (sampling service)"] = save_grid(images, labels, self.plan.out_dir / "synthetic.png")

    def print_table(self) -> None:
        out = self.journal.out
        print("\nTest accuracy (mean ± standard deviation over seeds):", file=out)
        print(f"  {'arm':<28}" + "".join(f"{v:>22}" for v in VARIANTS), file=out)
        for arm in ARMS:
            cells = []
            for variant in VARIANTS:
                runs = self.results.runs.get((variant, arm))
                cells.append(format_spread([r.accuracy for r in runs]) if runs else "not run")
            print(f"  {arm:<28}" + "".join(f"{c:>22}" for c in cells), file=out)
        for arm, reason in self.results.skipped.items():
            print(f"  not run: {arm}: {reason}", file=out)
        out.flush()


def batch_shares(batch_size: int, sources: list[str], synthetic_share: float) -> list[int]:
    """Samples of each source per batch: ``synthetic_share`` of it synthetic (0: an equal share), the rest equal."""
    if "synthetic" in sources and synthetic_share > 0:
        synthetic = max(1, round(batch_size * synthetic_share))
        others = batch_shares(batch_size - synthetic, [s for s in sources if s != "synthetic"], 0.0)
        return [synthetic if s == "synthetic" else others.pop(0) for s in sources]
    return [batch_size // len(sources) + (1 if i < batch_size % len(sources) else 0) for i in range(len(sources))]


def format_spread(values: list[float]) -> str:
    """Mean ± sample standard deviation, in accuracy points."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f}% ± {100 * spread:.1f}"


def mean_recall(runs: list[RunResult]) -> list[float]:
    return [statistics.fmean(r.recall[c] for r in runs) if not any(math.isnan(r.recall[c]) for r in runs) else float("nan") for c in range(len(runs[0].recall))]
