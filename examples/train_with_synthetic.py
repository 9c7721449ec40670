#!/usr/bin/env python3
"""Train a classifier on real digits mixed with synthetic ones streamed from a running Simulacra suite.

What a user copies into a project: it imports only the SDK (``simulacra-client[torch]``)
and torch. It reads a dataset version from the annotation-store, augments it through
the augmentation service, mixes in samples of a generator served by the sampling
service, trains, and checkpoints both the model and the data position, so that a
killed run started again continues with exactly the samples it would have seen.

    simulacra up &                                   # or any running suite
    simulacra demo --no-start                        # makes datasets and a generator (or bring yours)
    python examples/train_with_synthetic.py \\
        --dataset demo-5000-s0-scarce@1 --generator models/demo-5000-s0-gan/versions/1 \\
        --test demo-5000-s0-digits@1 --steps 400 --checkpoint /tmp/classifier.pt

Addresses default to the suite's defaults (SIMULACRA_*_ADDRESS override them).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from simulacra_client import Pipeline
from simulacra_client.torch_data import Augmented, RealDataset, ResumableLoader, SyntheticDataset, mix, to_tensors


def address(service: str, port: int) -> str:
    return os.environ.get(f"SIMULACRA_{service.upper()}_ADDRESS") or f"127.0.0.1:{port}"


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="training data, NAME@VERSION (its train split)")
    parser.add_argument("--test", required=True, help="test data, NAME@VERSION (its test split)")
    parser.add_argument("--generator", required=True, help="a generator the sampling service serves, models/M/versions/V")
    parser.add_argument("--synthetic-share", type=float, default=0.5, help="share of synthetic samples in the mix")
    parser.add_argument("--balance", action="store_true", help="draw synthetic samples for the classes the dataset lacks")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--checkpoint", type=Path, default=Path("classifier.pt"))
    args = parser.parse_args()

    annotation, augmentation, sampling = address("annotation", 50051), address("augmentation", 50052), address("sampling", 50054)
    shifts = Pipeline().add("affine", translate_x=(-0.1, 0.1), translate_y=(-0.1, 0.1), rotate_degrees=(-12, 12))
    real = Augmented(RealDataset(annotation, args.dataset, split="train", cycle=True), augmentation, shifts, seed=1)
    synthetic = SyntheticDataset(sampling, args.generator, seed=1)
    data = mix(real, synthetic, balance=True) if args.balance else mix(real, synthetic, ratio=args.synthetic_share)
    loader = ResumableLoader(data, batch_size=32, num_workers=2)

    net = model()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    step = 0
    if args.checkpoint.exists():  # a restarted run: model, optimizer and the data position together
        state = torch.load(args.checkpoint)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["data"])
        step = state["step"]
        print(f"resumed at step {step}, data position {state['data']['position']} ({state['data']['taken']})")

    loss_fn = nn.CrossEntropyLoss()
    for images, labels in loader:
        if step >= args.steps:
            break
        optimizer.zero_grad()
        loss = loss_fn(net(images), labels)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "data": loader.state_dict(), "step": step}, args.checkpoint)
            print(f"step {step}: loss {loss.item():.3f}, checkpoint saved")

    test_images, test_labels = to_tensors(RealDataset(annotation, args.test, split="test"))
    net.eval()
    with torch.no_grad():
        accuracy = (net(test_images).argmax(1) == test_labels).float().mean().item()
    print(f"test accuracy after {step} steps: {100 * accuracy:.1f}%")


if __name__ == "__main__":
    main()
