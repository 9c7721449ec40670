"""Shared fixtures, registered as plugins so every test module can use them."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.s3"]
