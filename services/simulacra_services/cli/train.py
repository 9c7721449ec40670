"""``simulacra train create|watch|list|cancel|pause|resume``: training jobs through the SDK only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from simulacra_services.cli.common import connection, report_rpc_error
from simulacra_services.core.config import Settings

COMMANDS = ("create", "watch", "list", "cancel", "pause", "resume", "preview")
STATE_PREFIX = "JOB_STATE_"


def add_commands(parser: argparse.ArgumentParser, settings_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    settings_arguments(common)
    commands = parser.add_subparsers(dest="train_command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    create = command("create", "queue a training job on NAME@VERSION; the finished model is registered as MODEL's next version")
    create.add_argument("dataset", metavar="NAME@VERSION")
    create.add_argument("--kind", required=True, choices=("cvae", "cgan", "enhanced-gan"))
    create.add_argument("--model", default="", help="registry model that receives the version (default: NAME-KIND)")
    create.add_argument("--epochs", type=int)
    create.add_argument("--steps", type=int, dest="max_steps", help="stop after this many optimiser steps")
    create.add_argument("--batch-size", type=int)
    create.add_argument("--latent-dim", type=int)
    create.add_argument("--width", type=int, dest="base_width", help="channels of the networks' narrowest layer")
    create.add_argument("--size", type=int, help="image height and width (default 28)")
    create.add_argument("--channels", type=int, choices=(1, 3))
    create.add_argument("--seed", type=int)
    create.add_argument("--lr", type=float, dest="learning_rate")
    create.add_argument("--loss", choices=("hinge", "nonsaturating"))
    create.add_argument("--r1-gamma", type=float)
    create.add_argument("--checkpoint-every", type=int, dest="checkpoint_every_steps")
    create.add_argument("--preview-every", type=int, dest="preview_every_steps")
    create.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any other hyperparameter (repeatable)")
    create.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    create.add_argument("--filter", default="", help='only items matching a ListItems filter, e.g. split = "train"')
    create.add_argument("--holdout-split", default="", help="split held out for the report (default: a 10%% draw of train)")
    create.add_argument("--crop-category", type=int, action="append", default=[], help="train on box crops of this category id")
    create.add_argument("--attribute", action="append", default=[], help="condition on this item attribute (repeatable)")
    create.add_argument("--gate", action="append", default=[], metavar="NAME=VALUE",
                        help="quality gate, e.g. min_tstr_to_trtr_ratio=0.9 (repeatable)")
    create.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")

    for name, help in (("watch", "follow a job until it ends (progress bar with losses)"), ("cancel", "stop a job at a checkpoint"),
                       ("pause", "pause a job at a checkpoint"), ("resume", "resume a paused, cancelled or failed job")):
        command(name, help).add_argument("job", metavar="JOB")
    preview = command("preview", "save a job's latest sample grid, loss curve or report summary as PNG")
    preview.add_argument("job", metavar="JOB")
    preview.add_argument("--kind", choices=("samples", "loss-curve", "report"), default="samples")
    preview.add_argument("--out", required=True, metavar="FILE.png")
    listing = command("list", "list the training jobs")
    listing.add_argument("--state", default="", help="only jobs in this state, e.g. RUNNING")
    listing.add_argument("--dataset", default="", metavar="NAME@VERSION")


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return [part for part in text.split(",") if part] if "," in text else text


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: write NAME=VALUE")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


def hyperparameters_of(args: argparse.Namespace) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in ("epochs", "max_steps", "batch_size", "latent_dim", "base_width", "channels",
                                                      "seed", "learning_rate", "loss", "r1_gamma", "checkpoint_every_steps",
                                                      "preview_every_steps") if getattr(args, name) is not None}
    if args.size is not None:
        values["image_height"] = values["image_width"] = args.size
    values |= _pairs(args.set, "--set")
    if "diff_augment" in values and isinstance(values["diff_augment"], str):
        values["diff_augment"] = [values["diff_augment"]]
    return values


def format_job(job: Any) -> str:
    from simulacra_client.api.common.v1 import common_pb2

    state = common_pb2.JobState.Name(job.state).removeprefix(STATE_PREFIX)
    progress = job.training_progress
    line = f"{job.name}  {state:<10} {job.dataset_version}  step {progress.step}/{progress.total_steps}"
    if job.model_version:
        line += f"  -> {job.model_version}"
    if job.error.reason:
        line += f"  [{job.error.reason}] {job.error.message}"
    return line


class _Bar:
    """A tqdm bar over the job's steps with the latest losses (stderr)."""

    def __init__(self, err: TextIO) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="step", file=err, dynamic_ncols=True)

    def __call__(self, job: Any) -> None:
        p = job.training_progress
        if p.total_steps and self.bar.total != p.total_steps:
            self.bar.total = p.total_steps
        self.bar.n = p.step
        losses = " ".join(f"{k}={v:.3f}" for k, v in sorted(p.losses.items()))
        stage = job.progress.message.split(":")[0] if job.progress.message else ""
        self.bar.set_postfix_str(f"{stage} {losses}".strip(), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _watch(client: Any, job: str, out: TextIO, err: TextIO) -> int:
    from simulacra_client.api.common.v1 import common_pb2

    bar = _Bar(err)
    try:
        last = client.wait_job(job, progress=bar)
    finally:
        bar.close()
    print(format_job(last), file=out)
    return 0 if last.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_PAUSED) else 1


def run(args: argparse.Namespace, settings: Settings, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from simulacra_client.annotation import version_name
    from simulacra_client.api.common.v1 import common_pb2
    from simulacra_client.errors import SimulacraRpcError
    from simulacra_client.training import TrainingClient

    out, err = out or sys.stdout, err or sys.stderr
    address = settings.address("training")
    try:
        with TrainingClient(address, **connection(settings)) as client:
            command = args.train_command
            if command == "create":
                dataset = version_name(args.dataset)
                model = args.model or f"{dataset.split('/')[1]}-{args.kind}"
                job = client.create_job(
                    dataset, args.kind, model=model, hyperparameters=hyperparameters_of(args), device=args.device,
                    filter=args.filter, holdout_split=args.holdout_split, crop_category_ids=args.crop_category,
                    attribute_keys=args.attribute, quality_gate=_pairs(args.gate, "--gate"),
                )
                print(format_job(job), file=out)
                return _watch(client, job.name, out, err) if args.watch else 0
            if command == "watch":
                return _watch(client, args.job, out, err)
            if command == "list":
                state = common_pb2.JobState.Value(STATE_PREFIX + args.state.upper()) if args.state else 0
                dataset = version_name(args.dataset) if args.dataset else ""
                for job in client.list_jobs(state=state, dataset_version=dataset):
                    print(format_job(job), file=out)
                return 0
            if command == "preview":
                data = client.preview(args.job, args.kind)
                with open(args.out, "wb") as file:
                    file.write(data)
                print(f"{args.out}: {len(data)} bytes", file=out)
                return 0
            action = {"cancel": client.cancel_job, "pause": client.pause_job, "resume": client.resume_job}[command]
            print(format_job(action(args.job)), file=out)
            return 0
    except SimulacraRpcError as error:
        return report_rpc_error(error, "training", address, err)
    except (ValueError, KeyError, OSError) as error:
        print(f"error: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (the job keeps running on the server)", file=err)
        return 130
