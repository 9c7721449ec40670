"""docs/annotation-store.md states what the annotation-store does: its RPCs, error reasons and CLI commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from simulacra_client.api.annotation.v1 import annotation_service_pb2
from simulacra_services.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "annotation-store.md"
PACKAGE = ROOT / "services" / "simulacra_services" / "annotation"
# Core modules whose reasons the annotation-store raises as its own (filters, page tokens).
SHARED = [ROOT / "services" / "simulacra_services" / "core" / "api" / name for name in ("filters.py", "pagination.py", "enums.py", "blobs.py")]
# Core modules some of whose reasons reach annotation clients: its jobs run on core/jobs, which
# has reasons of its own the annotation-store never raises (JOB_NOT_PAUSABLE, ...).
SOME_SHARED = [ROOT / "services" / "simulacra_services" / "core" / path for path in ("jobs/store.py", "jobs/runner.py", "db/idempotency.py", "storage/blobs.py")]

# UPPER_SNAKE string constants of the package that are not error reasons.
NOT_REASONS = {"CASCADE", "COCO", "JPEG", "YOLO"}
REASON_LITERAL = re.compile(r'"([A-Z][A-Z0-9_]{3,})"')
TABLE_REASON = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \|", re.MULTILINE)


def _page() -> str:
    return PAGE.read_text()


def _errors_section(page: str) -> str:
    match = re.search(r"^## \d+\. Errors\n(.*?)(?=^## )", page, re.DOTALL | re.MULTILINE)
    assert match is not None, "docs/annotation-store.md has no '## N. Errors' section"
    return match.group(1)


def _documented_reasons() -> set[str]:
    return set(TABLE_REASON.findall(_errors_section(_page())))


def _raised_reasons(*, including_some_shared: bool = False) -> set[str]:
    """Reason literals of the annotation package and the core API helpers it uses
    (job states like JOB_STATE_RUNNING are not reasons)."""
    found: set[str] = set()
    for source in [*PACKAGE.rglob("*.py"), *SHARED, *(SOME_SHARED if including_some_shared else [])]:
        if source.exists():
            found.update(REASON_LITERAL.findall(source.read_text()))
    return {r for r in found if r not in NOT_REASONS and not r.startswith("JOB_STATE_")}


def _datasets_subcommands() -> list[str]:
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001 - no public accessor
    datasets = top.choices["datasets"]
    sub = next(a for a in datasets._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return list(sub.choices)


def test_every_rpc_of_the_service_is_mentioned() -> None:
    page = _page()
    methods = [m.name for m in annotation_service_pb2.DESCRIPTOR.services_by_name["AnnotationService"].methods]
    assert len(methods) >= 30
    missing = [name for name in methods if not re.search(rf"\b{name}\b", page)]
    assert not missing, f"docs/annotation-store.md does not mention these RPCs: {missing}"


def test_every_documented_reason_is_raised_by_the_package() -> None:
    documented = _documented_reasons()
    assert len(documented) >= 50, "the error table was not found or lost its rows"
    unknown = sorted(documented - _raised_reasons(including_some_shared=True))
    assert not unknown, f"the error table lists reasons the annotation package never uses: {unknown}"


def test_every_reason_of_the_package_is_documented() -> None:
    undocumented = sorted(_raised_reasons() - _documented_reasons())
    assert not undocumented, f"add these reasons to the error table of docs/annotation-store.md: {undocumented}"


def test_every_datasets_subcommand_is_documented() -> None:
    page = _page()
    commands = _datasets_subcommands()
    assert {"create", "list", "commit", "stats", "import-coco", "export-coco", "import-mnist"} <= set(commands)
    missing = [name for name in commands if f"`simulacra datasets {name}" not in page]
    assert not missing, f"docs/annotation-store.md does not document: {['simulacra datasets ' + n for n in missing]}"


def test_the_page_is_linked_from_readme_and_architecture() -> None:
    link = "annotation-store.md"
    assert f"[docs/{link}](docs/{link})" in (ROOT / "README.md").read_text()
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    row = next(line for line in architecture.splitlines() if line.startswith("| annotation-store |"))
    assert f"]({link})" in row
