"""``simulacra augment preview|run|rebalance``: augmentation through the SDK only.

``--pipeline`` takes our JSON (the proto3 JSON of PipelineSpec) or a pipeline
that Albumentations saved with ``albumentations.save(..., data_format="json")``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from typing import Any, TextIO

from simulacra_services.cli.common import connection, report_rpc_error
from simulacra_services.core.config import Settings

COMMANDS = ("preview", "run", "rebalance")
DEFAULT_REBALANCE_PIPELINE = {
    "ops": [
        {"horizontal_flip": {}, "probability": 0.5},
        {"affine": {"rotate_degrees": {"min": -15, "max": 15}, "scale": {"min": 0.9, "max": 1.1}, "translate_x": {"min": -0.05, "max": 0.05}, "translate_y": {"min": -0.05, "max": 0.05}}},
        {"color_jitter": {"brightness": {"min": 0.8, "max": 1.2}, "contrast": {"min": 0.8, "max": 1.2}, "saturation": {"min": 0.8, "max": 1.2}}},
    ]
}


def add_commands(parser: argparse.ArgumentParser, settings_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    settings_arguments(common)
    commands = parser.add_subparsers(dest="augment_command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    preview = command("preview", "write a PNG grid of augmentations of one item of NAME@VERSION, annotations drawn")
    preview.add_argument("dataset", metavar="NAME@VERSION")
    preview.add_argument("--pipeline", required=True, metavar="FILE", help="our pipeline JSON or an Albumentations JSON")
    preview.add_argument("--out", required=True, metavar="FILE.png")
    preview.add_argument("--item", default="", metavar="ID", help="the item (default: the version's first item)")
    preview.add_argument("--count", type=int, default=8)
    preview.add_argument("--columns", type=int, default=0)
    preview.add_argument("--seed", type=int, default=0)

    run = command("run", "augment NAME@VERSION into a new version of a dataset (a job; progress bar, prints the version)")
    run.add_argument("dataset", metavar="NAME@VERSION")
    run.add_argument("--pipeline", required=True, metavar="FILE")
    run.add_argument("--copies", type=int, default=1, help="augmented copies per item (1-64)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--into", default="", metavar="DATASET", help="dataset that receives the version (default: NAME)")
    run.add_argument("--split", action="append", default=[], help="augment this split (repeatable; default train)")
    run.add_argument("--category", type=int, action="append", default=[], help="only items with this category id (repeatable)")
    run.add_argument("--filter", default="", help="only items matching a ListItems filter")
    run.add_argument("--include-source", action="store_true", help="the new version also holds the source items")

    rebalance = command("rebalance", "augment the rare classes of NAME@VERSION until the class histogram is within a ratio")
    rebalance.add_argument("dataset", metavar="NAME@VERSION")
    rebalance.add_argument("--max-imbalance", type=float, required=True, metavar="R", help="largest class / rarest class at most R (> 1)")
    rebalance.add_argument("--into", required=True, metavar="DATASET")
    rebalance.add_argument("--pipeline", default="", metavar="FILE", help="default: flip + small affine + colour jitter")
    rebalance.add_argument("--seed", type=int, default=0)
    rebalance.add_argument("--split", action="append", default=[])


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from simulacra_client.augmentation import AugmentationClient, load_pipeline
    from simulacra_client.errors import SimulacraRpcError

    out = out or sys.stdout
    err = err or sys.stderr
    address = settings.address("augmentation")
    arguments = connection(settings)
    try:
        pipeline = load_pipeline(args.pipeline) if getattr(args, "pipeline", "") else DEFAULT_REBALANCE_PIPELINE
        with AugmentationClient(address, **arguments) as client:
            if args.augment_command == "preview":
                _preview(client, args, pipeline, settings, arguments, out)
            elif args.augment_command == "run":
                _job(client, args, pipeline, out, err, copies=args.copies, splits=args.split, categories=args.category,
                     filter=args.filter, include_source=args.include_source)
            else:
                _job(client, args, pipeline, out, err, copies=1, splits=args.split, categories=[], filter="", include_source=True,
                     ratio=args.max_imbalance)
        return 0
    except SimulacraRpcError as error:
        return report_rpc_error(error, "augmentation", address, err)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (a job already started keeps running on the server)", file=err)
        return 130


def _preview(client: Any, args: argparse.Namespace, pipeline: Any, settings: Settings, connection: dict, out: TextIO) -> None:
    import grpc
    import numpy as np
    from PIL import Image

    from simulacra_client.errors import from_rpc_error

    from simulacra_client.annotation import AnnotationClient, version_name
    from simulacra_client.api.annotation.v1 import annotation_pb2 as apb
    from simulacra_client.augmentation import ItemInput

    version = version_name(args.dataset)
    with AnnotationClient(settings.address("annotation"), **connection) as annotations:
        if args.item:
            try:
                item = annotations.stub.GetItem(_get_item(version, args.item)).item
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
        else:
            item = next(iter(annotations.list_items(version, page_size=1, view=apb.ITEM_VIEW_FULL)), None)
            if item is None:
                raise ValueError(f"{args.dataset} has no items")
        categories = annotations.list_categories(args.dataset)
    pixels = np.asarray(Image.open(io.BytesIO(item.image.data)).convert("RGB" if item.image.channels != 1 else "L"))
    png = client.preview(ItemInput(pixels, item.name, list(item.annotations)), pipeline, count=args.count, columns=args.columns,
                         seed=args.seed, categories=categories)
    with open(args.out, "wb") as file:
        file.write(png)
    print(f"wrote {args.out}: {args.count} augmentations of {item.name}", file=out)


def _get_item(version: str, item_id: str) -> Any:
    from simulacra_client.api.annotation.v1 import annotation_service_pb2 as arpc

    return arpc.GetItemRequest(name=f"{version}/items/{item_id}")


def _job(client: Any, args: argparse.Namespace, pipeline: Any, out: TextIO, err: TextIO, *, copies: int, splits: list,
         categories: list, filter: str, include_source: bool, ratio: float | None = None) -> None:
    job = client.create_dataset_job(args.dataset, pipeline, copies=copies, seed=args.seed, into=args.into, category_ids=categories,
                                    include_source_items=include_source, splits=splits, filter=filter, rebalance_ratio=ratio)
    print(f"started {job.name}", file=err)
    bar = _Bar(err)
    try:
        done = client.wait_dataset_job(job.name, progress=bar)
    finally:
        bar.close()
    print(done.output_dataset_version, file=out)
    before, after = dict(done.class_counts_before), dict(done.class_counts_after)
    print(f"{done.items_written} augmented items", file=err)
    if ratio is not None:
        print("category   before    after", file=err)
        for category in sorted(set(before) | set(after)):
            print(f"{category:>8} {before.get(category, 0):>8} {after.get(category, 0):>8}", file=err)


class _Bar:
    """A tqdm bar on stderr fed by the job's progress (only on a terminal)."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.bar: Any = None

    def __call__(self, job: Any) -> None:
        if not self.err.isatty():
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=job.progress.total or None, unit="item", file=self.err, desc="augmenting")
        self.bar.total = job.progress.total or None
        self.bar.n = job.progress.done
        self.bar.set_postfix_str(job.progress.message)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
