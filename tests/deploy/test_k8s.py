"""deploy/k8s: valid against the Kubernetes schemas, and in agreement with the code."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from simulacra_services.cli.main import build_parser
from simulacra_services.core.config import SERVICES, Settings, env_vars

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"


def load_documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def cross_check(docs: list[dict]) -> list[str]:
    problems: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = by_kind["ConfigMap"]["simulacra-config"]["data"]
    parser, known = build_parser(), set(env_vars())
    for key in sorted(set(config) - known):
        problems.append(f"ConfigMap: {key} is not read by the configuration")
    served = set()
    for name, deployment in by_kind.get("Deployment", {}).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        try:
            service = parser.parse_args(container["command"][1:]).service
        except SystemExit:
            problems.append(f"{name}: the CLI rejects its command {container['command']}")
            continue
        served.add(service)
        env = {**config, **{e["name"]: e["value"] for e in container.get("env", [])}}
        for key in sorted(set(env) - known):
            problems.append(f"{name}: {key} is not read by the configuration")
        settings = Settings.from_env(env)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if ports.get("grpc") != settings.port(service):
            problems.append(f"{name}: containerPort grpc {ports.get('grpc')} != configured port {settings.port(service)}")
        if ports.get("metrics") != settings.metrics_port(service):
            problems.append(f"{name}: containerPort metrics {ports.get('metrics')} != configured {settings.metrics_port(service)}")
        for probe in ("readinessProbe", "livenessProbe"):
            if container[probe]["grpc"]["port"] != settings.port(service):
                problems.append(f"{name}: {probe} checks port {container[probe]['grpc']['port']}")
        k8s_service = by_kind.get("Service", {}).get(name)
        if k8s_service is None:
            problems.append(f"{name}: no Service")
            continue
        host, _, port = settings.address(service).rpartition(":")
        exposed = {p["name"]: p["port"] for p in k8s_service["spec"]["ports"]}
        if host != name or int(port) != exposed.get("grpc"):
            problems.append(f"{name}: other services reach it at {settings.address(service)}, the Service offers {name}:{exposed.get('grpc')}")
        if k8s_service["spec"]["selector"] != deployment["spec"]["selector"]["matchLabels"]:
            problems.append(f"{name}: the Service selects other pods than the Deployment runs")
    for missing in sorted(set(SERVICES) - served):
        problems.append(f"no Deployment runs 'simulacra serve {missing}'")
    return problems


@pytest.mark.parametrize("doc", load_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_manifests_agree_with_the_code() -> None:
    assert cross_check(load_documents()) == []


def test_images_match_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    deployments = [doc for doc in load_documents() if doc["kind"] == "Deployment"]
    assert deployments
    for doc in deployments:
        service = compose["services"][doc["metadata"]["name"]]
        image = service.get("image", compose["x-simulacra-service"]["image"])
        assert doc["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_checks_can_fail() -> None:
    docs = load_documents()
    broken = copy.deepcopy(docs)
    deployment = next(d for d in broken if d["kind"] == "Deployment" and d["metadata"]["name"] == "sampling")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["containerPort"] = 6000
    container["env"].append({"name": "SIMULACRA_TYPO", "value": "1"})
    problems = "\n".join(cross_check(broken))
    assert "sampling: containerPort grpc 6000" in problems
    assert "SIMULACRA_TYPO" in problems
    container["resources"]["requests"]["cpu"] = {"cores": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
