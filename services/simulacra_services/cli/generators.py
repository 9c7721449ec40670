"""``simulacra generators list|report|alias|import``: the model registry through the SDK only."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from simulacra_services.cli.common import connection, report_rpc_error
from simulacra_services.core.config import Settings

COMMANDS = ("list", "report", "alias", "import")


def add_commands(commands: Any, settings_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the registry commands to the ``generators`` group's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    settings_arguments(common)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    listing = command("list", "models of the registry with their versions and aliases (MODEL: its versions)")
    listing.add_argument("model", nargs="?", default="")
    report = command("report", "the quality report of MODEL@VERSION (or MODEL@ALIAS, MODEL for latest) as a table")
    report.add_argument("reference", metavar="MODEL@VERSION")
    report.add_argument("--png", type=Path, metavar="FILE", help="also save the report's summary picture")
    report.add_argument("--per-class", action="store_true", help="add the per-class table")
    alias = command("alias", "point ALIAS of MODEL at VERSION (compare-and-swap with --etag)")
    alias.add_argument("model")
    alias.add_argument("version", type=int)
    alias.add_argument("alias")
    alias.add_argument("--etag", default="", help="fail unless the model is still at this etag")
    imported = command("import", "register an ONNX generator trained elsewhere (its signature is checked)")
    imported.add_argument("file", type=Path, metavar="FILE.onnx")
    imported.add_argument("--model", required=True)
    imported.add_argument("--classes", default="", help="comma-separated class names of labels 0..n-1")
    imported.add_argument("--attribute", action="append", default=[], metavar="NAME=V1,V2",
                          help="values of an attribute input column, in order (repeatable)")


def _n(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_report(version: Any, *, per_class: bool = False) -> str:
    r = version.quality_report
    f, u, p = r.fidelity, r.utility, r.privacy
    rows = [
        ("model version", version.name),
        ("trained by", f"{version.training_job or 'imported'} on {version.dataset_version or '-'}"),
        ("signature", f"z[{version.signature.latent_dim}] -> {version.signature.channels}x{version.signature.height}x"
                      f"{version.signature.width}, {version.signature.num_classes} classes"),
        ("feature extractor", r.feature_extractor[:60] or "-"),
        ("real / synthetic samples", f"{r.real_sample_count} / {r.synthetic_sample_count}"),
        ("Frechet distance", f"{_n(f.frechet_distance)}   (real vs real {_n(f.frechet_distance_real_baseline)})"),
        ("KID", f"{_n(f.kid, 4)}   (real vs real {_n(f.kid_real_baseline, 4)})"),
        ("precision / recall", f"{_n(f.precision)} / {_n(f.recall)}"),
        ("density / coverage", f"{_n(f.density)} / {_n(f.coverage)}"),
        ("classifier two-sample acc.", f"{_n(f.c2st_accuracy)}   (0.5 = indistinguishable)"),
        ("label fidelity", _n(f.label_fidelity)),
        ("TSTR / TRTR accuracy", f"{_n(u.tstr_accuracy)} / {_n(u.trtr_accuracy)}"),
        ("memorization rate", f"{_n(p.memorization_rate)}   (threshold {_n(p.memorization_threshold)})"),
        ("DCR ratio synth/holdout", f"{_n(p.dcr_ratio)}   (~1: no copying)"),
        ("membership-inference AUC", f"{_n(p.membership_inference_auc)}   (0.5: nothing leaks)"),
        ("ONNX parity max |diff|", f"{r.onnx_parity_max_abs_diff:.2e}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if per_class and r.per_class:
        lines += ["", f"{'class':<10} {'real':>5} {'synth':>5} {'FD':>8} {'prec':>5} {'recall':>6} {'fidelity':>8} {'TSTR rec':>8}"]
        for c in r.per_class:
            lines.append(f"{(c.class_name or str(c.label))[:10]:<10} {c.real_sample_count:>5} {c.synthetic_sample_count:>5} "
                         f"{_n(c.fidelity.frechet_distance, 2):>8} {_n(c.fidelity.precision, 2):>5} {_n(c.fidelity.recall, 2):>6} "
                         f"{_n(c.label_fidelity, 2):>8} {_n(c.tstr_recall, 2):>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from simulacra_client.errors import SimulacraRpcError
    from simulacra_client.training import TrainingClient

    out, err = out or sys.stdout, err or sys.stderr
    address = settings.address("training")
    try:
        with TrainingClient(address, **connection(settings)) as client:
            command = args.generators_command
            if command == "list":
                if args.model:
                    for v in client.list_versions(args.model):
                        print(f"{v.name}  {v.signature.num_classes} classes  {v.onnx_size_bytes} B  "
                              f"FD {_n(v.quality_report.fidelity.frechet_distance, 2)}  aliases {','.join(v.aliases) or '-'}", file=out)
                    return 0
                for m in client.list_models():
                    aliases = ", ".join(f"{k}={v}" for k, v in sorted(m.aliases.items())) or "-"
                    print(f"{m.name}  latest {m.latest_version}  aliases {aliases}", file=out)
                return 0
            if command == "report":
                version = client.get_version(args.reference)
                print(format_report(version, per_class=args.per_class), file=out)
                if args.png:
                    args.png.write_bytes(client.download(version.name, "report_png"))
                    print(f"summary picture: {args.png}", file=out)
                return 0
            if command == "alias":
                model = client.set_alias(args.model, args.alias, args.version, etag=args.etag)
                print(f"{model.name}: {args.alias} -> {model.aliases[args.alias]} (etag {model.etag})", file=out)
                return 0
            if command == "import":
                attributes = {}
                for item in args.attribute:
                    name, sep, values = item.partition("=")
                    if not sep:
                        raise ValueError(f"--attribute {item!r}: write NAME=V1,V2")
                    attributes[name] = [v for v in values.split(",") if v]
                classes = [c for c in args.classes.split(",") if c]
                version = client.import_onnx(args.model, args.file, class_names=classes, attributes=attributes)
                print(f"registered {version.name} ({version.onnx_size_bytes} B, sha256 {version.onnx_sha256[:12]})", file=out)
                return 0
            raise AssertionError(command)
    except SimulacraRpcError as error:
        return report_rpc_error(error, "training", address, err)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=err)
        return 1
