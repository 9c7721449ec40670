"""`simulacra sample MODEL[@VERSION|ALIAS] --count N --seed S --out grid.png|DIR`, through the SDK.

``--out`` ending in ``.png`` writes one grid picture of the samples; any other path is a
directory that receives one PNG per sample (``{index:010d}.png``) and ``samples.jsonl``, one
line of lineage per sample (generator version, seed, index, label, attributes, truncation),
enough to produce each one again bit for bit. The service is reached at
``Settings.address("sampling")``. No server code is imported.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from simulacra_services.cli.common import connection, report_rpc_error
from simulacra_services.core.config import Settings

MAX_GRID = 4096
"""Most samples one grid picture holds."""


def add_arguments(parser: argparse.ArgumentParser, settings_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    parser.add_argument("generator", metavar="MODEL[@VERSION]", help="a registry model, optionally @version number or @alias (default: latest)")
    parser.add_argument("--count", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic sample sequence (default 0)")
    parser.add_argument("--start-index", type=int, default=0, help="index of the first sample (default 0)")
    parser.add_argument("--label", type=int, action="append", dest="labels", metavar="LABEL", help="draw only this class (repeatable: equal weights)")
    parser.add_argument("--truncation", type=float, default=None, help="truncation of the latent vectors (> 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per streamed message (default 256)")
    parser.add_argument("--out", required=True, help="grid.png for one picture, or a directory for one PNG per sample")
    settings_arguments(parser)


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from simulacra_client.errors import SimulacraRpcError
    from simulacra_client.sampling import SamplingClient

    out = out or sys.stdout
    err = err or sys.stderr
    address = settings.address("sampling")
    target = Path(args.out)
    grid = target.suffix.lower() == ".png"
    try:
        if args.count < 1 or (grid and args.count > MAX_GRID):
            raise ValueError(f"--count must be within 1..{MAX_GRID if grid else 'any'}, got {args.count}")
        with SamplingClient(address, **connection(settings)) as client:
            batches = list(
                client.stream(
                    args.generator, seed=args.seed, start_index=args.start_index, count=args.count, batch_size=min(args.batch_size, args.count),
                    class_mix={label: 1.0 for label in args.labels} if args.labels else None, truncation=args.truncation,
                    format="uint8" if grid else "png",
                )
            )
        generator = batches[0].generator
        if grid:
            import numpy as np

            pixels = np.concatenate([b.samples for b in batches])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(grid_png(pixels))
            where = str(target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            with open(target / "samples.jsonl", "w") as manifest:
                for batch in batches:
                    for k, index in enumerate(batch.indices.tolist()):
                        name = f"{index:010d}.png"
                        (target / name).write_bytes(batch.images[k])
                        record = {
                            "file": name, "generator": batch.generator, "seed": batch.seed, "index": index,
                            "label": int(batch.labels[k]), "truncation": batch.truncation,
                            "attributes": batch.attributes[k].tolist() if batch.attributes is not None else [],
                        }
                        manifest.write(json.dumps(record) + "\n")
            where = f"{target}/ (+ samples.jsonl)"
        print(f"{args.count} samples of {generator} (seed {args.seed}, from index {args.start_index}) -> {where}", file=out)
        return 0
    except SimulacraRpcError as error:
        return report_rpc_error(error, "sampling", address, err)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        return 130


def grid_png(pixels: "np.ndarray") -> bytes:  # noqa: F821 - numpy imported lazily
    """uint8 [N, C, H, W] (C 1, 3 or 4) as one PNG, samples in rows of ceil(sqrt(N)), 2 px gaps."""
    import numpy as np
    from PIL import Image

    n, channels, height, width = pixels.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    gap = 2
    canvas = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap, channels), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = pixels[i].transpose(1, 2, 0)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    image = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
