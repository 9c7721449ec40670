"""Alembic environment and revisions of the metadata database (shipped as package data)."""
