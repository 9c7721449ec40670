"""Simulacra client SDK: typed stubs (``simulacra_client.api``) and a friendly client."""

__version__ = "0.1.0"
