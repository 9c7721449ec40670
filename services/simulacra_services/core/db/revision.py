"""Create a migration revision: ``python -m simulacra_services.core.db.revision --chain training "add jobs"``.

How a service adds or changes tables:

1. Define or change them in ``simulacra_services/<service>/tables.py`` on
   ``simulacra_services.core.db.metadata`` (portable types only: they must
   work on SQLite and PostgreSQL).
2. Run this module with a short message and the service's chain. It imports
   every ``tables`` module, migrates a scratch SQLite database to the current
   heads, and lets Alembic write the difference as
   ``simulacra_services/<chain>/migrations/NNNN_<message>.py`` (the folder is
   created with the chain's first revision, which follows core's chain).
   Ids are numbered across all chains, so every id is unique and file names
   sort in the order they were written. ``--chain core`` (the default) writes
   into ``core/db/migrations/versions``.
3. Read the generated file (autogenerate misses renames, server defaults
   and data moves), then run ``tests/core/test_db.py``: its drift test
   fails until the migrations produce exactly the tables in ``metadata``,
   on SQLite and PostgreSQL.

``--database-url`` compares against another database instead (e.g. a
PostgreSQL at head); ``--empty`` writes a blank revision for data migrations.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from .engine import create_engine
from .migrate import CHAIN_FOLDER, SCRIPT_LOCATION, SERVICES_PACKAGE, alembic_config, chain_folders, migrate
from .schema import import_all_tables


def next_revision_id(script_location: str = SCRIPT_LOCATION) -> str:
    """The next sequential id ("0002" after "0001"), so file names sort in applying order."""
    scripts = ScriptDirectory.from_config(alembic_config(script_location))
    numbers = [int(s.revision) for s in scripts.walk_revisions() if s.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def _chain_folder(chain: str, script_location: str) -> Path:
    """The chain's folder, created (as a package) for a service's first revision."""
    folders = chain_folders(script_location)
    if chain in folders:
        return folders[chain]
    if not chain.isidentifier() or not chain.islower():
        raise ValueError(f"a chain is a service package name, got {chain!r}")
    package = Path(importlib.import_module(SERVICES_PACKAGE).__path__[0]) / chain
    if not package.is_dir():
        raise ValueError(f"no service package {SERVICES_PACKAGE}.{chain}")
    folder = package / CHAIN_FOLDER
    folder.mkdir(exist_ok=True)
    (folder / "__init__.py").write_text(f'"""The {chain} service\'s migration chain (revision files)."""\n')
    return folder


def _chain_head(scripts: ScriptDirectory, folder: Path, core_folder: Path) -> str | None:
    """The newest revision whose file is in ``folder`` (for a new chain: core's newest)."""
    for candidate in (folder, core_folder):
        revisions = [s.revision for s in scripts.walk_revisions() if Path(s.path).parent == candidate and s.revision.isdigit()]
        if revisions:
            return max(revisions, key=int)
    return None


def make_revision(
    message: str,
    *,
    database_url: str | None = None,
    empty: bool = False,
    script_location: str = SCRIPT_LOCATION,
    chain: str = "core",
) -> Path | None:
    """Write a revision of ``chain`` for the difference between the migrations and ``metadata``.

    Returns the new file, or ``None`` when autogenerate found no difference
    (no file is written then).
    """
    import_all_tables()
    folder = _chain_folder(chain, script_location)
    head = _chain_head(ScriptDirectory.from_config(alembic_config(script_location)), folder, chain_folders(script_location)["core"])
    with tempfile.TemporaryDirectory(prefix="simulacra-revision-") as scratch:
        url = database_url or f"sqlite:///{Path(scratch) / 'scratch.db'}"
        engine = create_engine(url)
        try:
            if ScriptDirectory.from_config(alembic_config(script_location)).get_heads():
                migrate(engine, script_location=script_location)
            config = alembic_config(script_location)
            with engine.connect() as conn:
                config.attributes["connection"] = conn
                config.attributes["skip_empty_revision"] = not empty
                heads = ScriptDirectory.from_config(config).get_heads()
                script = command.revision(
                    config, message=message, autogenerate=not empty, rev_id=next_revision_id(script_location),
                    head=head or "base", version_path=str(folder), splice=head is not None and head not in heads,
                )
        finally:
            engine.dispose()
    if script is None or isinstance(script, list):
        return None
    return Path(script.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulacra_services.core.db.revision",
        description="Autogenerate a migration from the service table modules.",
    )
    parser.add_argument("message", help="what the revision does, e.g. 'add datasets table'")
    parser.add_argument("--database-url", help="compare against this database instead of a scratch SQLite one")
    parser.add_argument("--empty", action="store_true", help="write a blank revision (for data migrations)")
    parser.add_argument("--chain", default="core", help="the service whose chain gets the revision (default: core)")
    args = parser.parse_args(argv)
    path = make_revision(args.message, database_url=args.database_url, empty=args.empty, chain=args.chain)
    if path is None:
        print("no difference between the migrations and the tables; nothing written", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
