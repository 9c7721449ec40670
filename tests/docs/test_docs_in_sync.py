"""The docs state what the code does: the configuration table and the README's commands."""

from __future__ import annotations

import os
import re
from pathlib import Path

from simulacra_services.cli.main import build_parser
from simulacra_services.core.config import markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_page_holds_the_generated_table() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert markdown_table() in page, "regenerate the table: python -m simulacra_services.core.config"


def test_readme_opens_with_two_runnable_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines() if line.split("#")[0].strip()]
    assert commands == [".ci/demo", ".ci/test"]
    for command in commands:
        assert os.access(ROOT / command, os.X_OK), f"{command} is not executable"
    assert "exec .ci/test" in (ROOT / ".ci" / "run").read_text()


def test_every_cli_command_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    subcommands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public accessor
    for name in subcommands:
        assert f"`simulacra {name}" in readme, f"README does not document `simulacra {name}`"
