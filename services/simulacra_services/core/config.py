"""Configuration: one table of settings, read from environment variables and flags.

Every setting has an environment variable (``SIMULACRA_*``) and a command-line
flag; a flag wins over the environment, which wins over the default.
``docs/configuration.md`` holds the same table, and a test keeps the two equal
(``python -m simulacra_services.core.config`` prints it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICES = ("annotation", "augmentation", "training", "sampling")
"""The four services, in start-up order."""

TITLES = {"annotation": "annotation-store", "augmentation": "augmentation", "training": "generator-training", "sampling": "sampling"}
"""What people call each service."""

DEFAULT_PORTS = {"annotation": 50051, "augmentation": 50052, "training": 50053, "sampling": 50054}
DEFAULT_METRICS_PORTS = {"annotation": 9451, "augmentation": 9452, "training": 9453, "sampling": 9454}


def _setting(env: str, default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """All settings of a Simulacra process. Paths left empty derive from ``data_dir``."""

    data_dir: str = _setting("SIMULACRA_DATA_DIR", ".simulacra", "Directory for embedded storage and the SQLite database.")
    host: str = _setting("SIMULACRA_HOST", "127.0.0.1", "Address the servers bind to. Use 0.0.0.0 only behind a firewall or in a container.")
    annotation_port: int = _setting("SIMULACRA_ANNOTATION_PORT", DEFAULT_PORTS["annotation"], "gRPC port of annotation-store.")
    augmentation_port: int = _setting("SIMULACRA_AUGMENTATION_PORT", DEFAULT_PORTS["augmentation"], "gRPC port of augmentation.")
    training_port: int = _setting("SIMULACRA_TRAINING_PORT", DEFAULT_PORTS["training"], "gRPC port of generator-training.")
    sampling_port: int = _setting("SIMULACRA_SAMPLING_PORT", DEFAULT_PORTS["sampling"], "gRPC port of sampling.")
    annotation_metrics_port: int = _setting("SIMULACRA_ANNOTATION_METRICS_PORT", DEFAULT_METRICS_PORTS["annotation"], "Prometheus port of annotation-store (0 turns metrics off).")
    augmentation_metrics_port: int = _setting("SIMULACRA_AUGMENTATION_METRICS_PORT", DEFAULT_METRICS_PORTS["augmentation"], "Prometheus port of augmentation (0 turns metrics off).")
    training_metrics_port: int = _setting("SIMULACRA_TRAINING_METRICS_PORT", DEFAULT_METRICS_PORTS["training"], "Prometheus port of generator-training (0 turns metrics off).")
    sampling_metrics_port: int = _setting("SIMULACRA_SAMPLING_METRICS_PORT", DEFAULT_METRICS_PORTS["sampling"], "Prometheus port of sampling (0 turns metrics off).")
    annotation_address: str = _setting("SIMULACRA_ANNOTATION_ADDRESS", "", "Where clients and other services reach annotation-store (default HOST:PORT).")
    augmentation_address: str = _setting("SIMULACRA_AUGMENTATION_ADDRESS", "", "Where clients reach augmentation (default HOST:PORT).")
    training_address: str = _setting("SIMULACRA_TRAINING_ADDRESS", "", "Where clients reach generator-training (default HOST:PORT).")
    sampling_address: str = _setting("SIMULACRA_SAMPLING_ADDRESS", "", "Where clients reach sampling (default HOST:PORT).")
    storage_backend: str = _setting("SIMULACRA_STORAGE_BACKEND", "local", "Object storage: 'local' (files under STORAGE_DIR) or 's3'.")
    storage_dir: str = _setting("SIMULACRA_STORAGE_DIR", "", "Root of local object storage (default DATA_DIR/objects).")
    s3_endpoint: str = _setting("SIMULACRA_S3_ENDPOINT", "127.0.0.1:9000", "host:port of the S3 service (MinIO, SeaweedFS, AWS).")
    s3_bucket: str = _setting("SIMULACRA_S3_BUCKET", "simulacra", "Bucket holding every object; created when missing.")
    s3_region: str = _setting("SIMULACRA_S3_REGION", "", "S3 region, when the service needs one.")
    s3_secure: bool = _setting("SIMULACRA_S3_SECURE", False, "Use HTTPS to reach the S3 service.")
    s3_access_key: str = _setting("AWS_ACCESS_KEY_ID", "", "S3 access key.", secret=True)
    s3_secret_key: str = _setting("AWS_SECRET_ACCESS_KEY", "", "S3 secret key.", secret=True)
    database_url: str = _setting("SIMULACRA_DATABASE_URL", "", "SQLAlchemy URL of the metadata database (default sqlite:///DATA_DIR/simulacra.db); postgresql+psycopg://... at scale.")
    auth_token: str = _setting("SIMULACRA_AUTH_TOKEN", "", "When set, servers require 'authorization: Bearer TOKEN' and clients send it.", secret=True)
    tls_cert: str = _setting("SIMULACRA_TLS_CERT", "", "PEM certificate chain; with TLS_KEY, servers speak TLS.")
    tls_key: str = _setting("SIMULACRA_TLS_KEY", "", "PEM private key of TLS_CERT.")
    tls_ca: str = _setting("SIMULACRA_TLS_CA", "", "PEM root certificate that clients trust; setting it makes clients use TLS.")
    max_message_bytes: int = _setting("SIMULACRA_MAX_MESSAGE_BYTES", 64 * 1024 * 1024, "Largest gRPC message accepted or sent, on servers and clients.")
    max_image_pixels: int = _setting("SIMULACRA_MAX_IMAGE_PIXELS", 64 * 1024 * 1024, "Largest image (width x height) the annotation-store accepts; larger ones are refused before decoding (IMAGE_TOO_MANY_PIXELS).")
    augmentation_engine_processes: int = _setting("SIMULACRA_AUGMENTATION_ENGINE_PROCESSES", 0, "Child processes that run AugmentStream's engine off the augmentation server's GIL (0: its worker threads do; docs/augmentation.md, section 10).")
    decode_budget_pixels: int = _setting("SIMULACRA_DECODE_BUDGET_PIXELS", 128 * 1024 * 1024, "Pixels the annotation-store decodes at once across all uploads and imports; a decode waits while the budget is spent (an image larger than it runs alone).")
    stream_packs: bool = _setting("SIMULACRA_STREAM_PACKS", True, "Whether the annotation-store keeps a read-optimised copy (a stream pack) of each committed version that was streamed whole in the FULL view, and answers later unfiltered FULL streams of it from that copy (docs/annotation-store.md, StreamItems).")
    stream_pack_max_bytes: int = _setting("SIMULACRA_STREAM_PACK_MAX_BYTES", 2 * 1024 * 1024 * 1024, "Largest stream pack the annotation-store builds (the version's FULL stream in bytes, about its image bytes); a larger version is always streamed item by item.")
    job_lease_seconds: float = _setting("SIMULACRA_JOB_LEASE_SECONDS", 30.0, "How long a replica's claim on a running job lasts unless renewed (renewed every third of it); the jobs of a replica that died are taken over once it has run out.")
    job_runner_id: str = _setting("SIMULACRA_JOB_RUNNER_ID", "", "Stable identity of this replica's job runner (e.g. its pod name): restarted with the same id it recovers its own jobs at once instead of after the lease. Default: unique per process.")
    shutdown_grace_seconds: float = _setting(
        "SIMULACRA_SHUTDOWN_GRACE_SECONDS", 10.0,
        "Time in-flight RPCs get to finish on SIGTERM/SIGINT. After them the service's close hook runs (unloading generators, "
        "stopping job workers) for at most 120 s (`server.CLOSE_HOOK_SECONDS`); a hook still running then is logged as an error "
        "and left behind, so a stop never hangs.",
    )
    log_level: str = _setting("SIMULACRA_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: str = _setting("SIMULACRA_LOG_FORMAT", "json", "Log format: 'json' (one object a line) or 'text'.")

    # ---- derived values -------------------------------------------------
    def port(self, service: str) -> int:
        return int(getattr(self, f"{_check(service)}_port"))

    def metrics_port(self, service: str) -> int:
        return int(getattr(self, f"{_check(service)}_metrics_port"))

    def address(self, service: str) -> str:
        explicit = getattr(self, f"{_check(service)}_address")
        if explicit:
            return explicit
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port(service)}"

    @property
    def resolved_storage_dir(self) -> Path:
        return Path(self.storage_dir) if self.storage_dir else Path(self.data_dir) / "objects"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(Path(self.data_dir) / 'simulacra.db').resolve()}"

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The environment that makes a child process read these same settings."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            env[f.metadata["env"]] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return env

    # ---- loading ----------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then environment variables, then ``overrides`` (non-None values)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_env(environ, **{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per setting (default None: unset flags defer to the environment)."""
        group = parser.add_argument_group("configuration (flags override SIMULACRA_* environment variables)")
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = _type(f)
            if kind is bool:
                group.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=f"{f.metadata['help']} [{f.metadata['env']}]")
            else:
                group.add_argument(flag, dest=f.name, default=None, type=kind, metavar=f.name.upper(), help=f"{f.metadata['help']} [{f.metadata['env']}]")

    def validate(self) -> None:
        if self.storage_backend not in ("local", "s3"):
            raise ValueError(f"SIMULACRA_STORAGE_BACKEND must be 'local' or 's3', got {self.storage_backend!r}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"SIMULACRA_LOG_FORMAT must be 'json' or 'text', got {self.log_format!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("SIMULACRA_TLS_CERT and SIMULACRA_TLS_KEY must be set together")
        if self.max_message_bytes < 1024:
            raise ValueError("SIMULACRA_MAX_MESSAGE_BYTES must be at least 1024")
        if self.max_image_pixels < 1:
            raise ValueError("SIMULACRA_MAX_IMAGE_PIXELS must be at least 1")
        if self.decode_budget_pixels < 1:
            raise ValueError("SIMULACRA_DECODE_BUDGET_PIXELS must be at least 1")
        if self.augmentation_engine_processes < 0:
            raise ValueError("SIMULACRA_AUGMENTATION_ENGINE_PROCESSES must be at least 0")
        for service in SERVICES:
            for port in (self.port(service), self.metrics_port(service)):
                if not 0 <= port <= 65535:
                    raise ValueError(f"port {port} of {service} is outside 0..65535")


def _check(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return service


def _type(f: dataclasses.Field) -> type:
    return {"int": int, "float": float, "bool": bool, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = _type(f)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.metadata['env']} must be true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{f.metadata['env']} must be {kind.__name__}, got {raw!r}") from None


def env_vars() -> list[str]:
    """Every environment variable the configuration reads."""
    return [f.metadata["env"] for f in dataclasses.fields(Settings)]


def markdown_table() -> str:
    """The configuration table of docs/configuration.md."""
    rows = ["| Environment variable | Flag | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = "" if f.default == "" else f"`{f.default}`"
        rows.append(f"| `{f.metadata['env']}` | `--{f.name.replace('_', '-')}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
