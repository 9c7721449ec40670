"""Revisions, applied in order by ``simulacra_services.core.db.migrate``; add one with ``python -m simulacra_services.core.db.revision``."""
