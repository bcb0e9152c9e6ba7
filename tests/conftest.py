"""Shared fixtures: each concern lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.database",
    "tests.fixtures.sandbox",
    "tests.fixtures.app",
    "tests.fixtures.webhook_receiver",
    "tests.fixtures.s3",
]
