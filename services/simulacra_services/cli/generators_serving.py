"""`simulacra generators load|unload MODEL[@VERSION|ALIAS]`: what a sampling server holds in memory.

Registered under the ``generators`` command beside the registry commands (list, report, alias,
import) of ``cli/generators.py``; ``COMMANDS`` names the ones this module runs. Loading an alias
again is the hot reload of a moved alias. Through the SDK only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from simulacra_services.cli.common import connection, report_rpc_error
from simulacra_services.core.config import Settings

COMMANDS = ("load", "unload")


def add_commands(commands: Any, settings_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``load`` and ``unload`` to the ``generators`` subparsers ``commands``."""
    load = commands.add_parser("load", help="load a generator into a sampling server (an alias: reload it where it points now)")
    load.add_argument("generator", metavar="MODEL[@VERSION]")
    load.add_argument("--provider", default="", help="auto (default), cpu, cuda or tensorrt")
    load.add_argument("--pin", action="store_true", help="keep this version loaded after its alias moves on")
    settings_arguments(load)
    unload = commands.add_parser("unload", help="free a generator's memory on a sampling server once its calls end")
    unload.add_argument("generator", metavar="MODEL[@VERSION]")
    settings_arguments(unload)


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from simulacra_client.errors import SimulacraRpcError
    from simulacra_client.sampling import SamplingClient

    out = out or sys.stdout
    err = err or sys.stderr
    address = settings.address("sampling")
    try:
        with SamplingClient(address, **connection(settings)) as client:
            if args.generators_command == "load":
                generator = client.load(args.generator, provider=args.provider, pin=args.pin)
                pinned = ", pinned" if generator.pinned else ""
                print(f"loaded {generator.name} on {generator.device}{pinned} (aliases: {', '.join(generator.aliases) or 'none'})", file=out)
            else:
                generator = client.unload(args.generator)
                print(f"unloaded {generator.name}", file=out)
        return 0
    except SimulacraRpcError as error:
        return report_rpc_error(error, "sampling", address, err)
