"""The `simulacra` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from simulacra_services.cli import augment as augment_cli
from simulacra_services.cli import datasets as datasets_cli
from simulacra_services.cli import generators as generators_cli
from simulacra_services.cli import train as train_cli
from simulacra_services.cli import generators_serving as generators_serving_cli
from simulacra_services.cli import sample as sample_cli
from simulacra_services.cli import demo as demo_cli  # argparse and the suite only; the flow imports torch when it runs
from simulacra_services.core.config import SERVICES, TITLES, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simulacra", description="Simulacra: synthetic training data as a service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start all four services on this machine (embedded storage and SQLite)")
    up.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for every service to report SERVING")
    Settings.add_arguments(up)

    serve = commands.add_parser("serve", help="run one service in the foreground (what a container runs)")
    serve.add_argument("service", choices=SERVICES)
    Settings.add_arguments(serve)

    status = commands.add_parser("status", help="print the health of each service")
    status.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to SECONDS for every service to be SERVING")
    status.add_argument("--service", action="append", choices=SERVICES, dest="only", help="check only this service (repeatable); containers use it as their health check")
    Settings.add_arguments(status)

    datasets = commands.add_parser("datasets", help="create, import, export, commit and inspect datasets of a running annotation-store")
    datasets_cli.add_commands(datasets, Settings.add_arguments)

    augment = commands.add_parser("augment", help="preview augmentations, augment or rebalance a dataset version on a running augmentation service")
    augment_cli.add_commands(augment, Settings.add_arguments)

    sample = commands.add_parser("sample", help="draw deterministic samples of a generator from a running sampling service")
    sample_cli.add_arguments(sample, Settings.add_arguments)

    generators = commands.add_parser("generators", help="generators of the model registry and of the sampling servers")
    generator_commands = generators.add_subparsers(dest="generators_command", required=True, metavar="COMMAND")
    generators_cli.add_commands(generator_commands, Settings.add_arguments)
    generators_serving_cli.add_commands(generator_commands, Settings.add_arguments)

    train = commands.add_parser("train", help="create, follow, list, cancel, pause and resume generator training jobs")
    train_cli.add_commands(train, Settings.add_arguments)

    demo = commands.add_parser("demo", help="the whole flow on the MNIST digits: data, augmentation, generator, sampling, classifiers, report")
    demo_cli.add_arguments(demo)
    Settings.add_arguments(demo)
    _compact_usage(parser)
    return parser


def _compact_usage(parser: argparse.ArgumentParser) -> None:
    """Usage lines name the command's own arguments; the ~30 configuration flags are
    listed once, in the help's configuration group, instead of in every usage line."""
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk of subparsers
        if not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        for sub in action.choices.values():
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):  # noqa: SLF001
                _compact_usage(sub)
                continue
            settings_flags = {a.dest for a in sub._actions if a.dest in Settings.__dataclass_fields__}  # noqa: SLF001
            own = [a for a in sub._actions if a.dest not in settings_flags and a.dest != "help"]  # noqa: SLF001
            formatter = sub._get_formatter()  # noqa: SLF001
            formatter.add_usage(None, own, [], prefix="")
            usage = formatter.format_help().strip()
            sub.usage = f"{usage} [configuration flags]" if settings_flags else usage


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_args(args)
    except ValueError as error:
        print(f"simulacra: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "up":
        from simulacra_services.cli.launcher import run_up

        return run_up(settings, startup_timeout=args.startup_timeout)
    if args.command == "serve":
        return _serve(args.service, settings)
    if args.command == "status":
        return _status(settings, wait=args.wait, only=args.only or list(SERVICES))
    if args.command == "datasets":
        return datasets_cli.run(args, settings)
    if args.command == "augment":
        return augment_cli.run(args, settings)
    if args.command == "sample":
        return sample_cli.run(args, settings)
    if args.command == "generators" and args.generators_command in generators_serving_cli.COMMANDS:
        return generators_serving_cli.run(args, settings)
    if args.command == "generators" and args.generators_command in generators_cli.COMMANDS:
        return generators_cli.run(args, settings)
    if args.command == "train":
        return train_cli.run(args, settings)
    if args.command == "demo":
        return demo_cli.run(args, settings)
    raise AssertionError(args.command)


def _serve(service: str, settings: Settings) -> int:
    from simulacra_services.core.server import configure_logging, serve_forever
    from simulacra_services.services import definition

    configure_logging(settings)
    try:
        asyncio.run(serve_forever(definition(service), settings))
    except OSError as error:  # a busy port, an unreadable TLS key: say so in one line
        print(f"simulacra serve {service}: {error}", file=sys.stderr)
        return 1
    return 0


def _status(settings: Settings, *, wait: float, only: list[str]) -> int:
    from simulacra_services.cli import health

    deadline = time.monotonic() + wait
    while True:
        states = {name: health.check(settings.address(name), settings) for name in only}
        if all(s == "SERVING" for s in states.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for name, state in states.items():
        print(f"{TITLES[name]:<22} {settings.address(name):<22} {state}")
    return 0 if all(s == "SERVING" for s in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
