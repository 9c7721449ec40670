"""The op types; importing this package registers every one of them."""

from simulacra_services.augmentation.engine.ops import geometric, mixing, photometric, weather  # noqa: F401
