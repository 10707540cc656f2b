"""Fixtures of the template's tests: where the real services are, and a versioned template copy."""

import os
from pathlib import Path

import pytest

from .helpers import snapshot_template


@pytest.fixture(scope="session")
def services_env() -> dict[str, str]:
    """Where the real Kafka and Redis are; `make test` starts them and exports these."""
    env = {
        name: os.environ[name]
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
        if name in os.environ
    }
    if len(env) < 2:
        pytest.fail(
            "KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are not set: run `make test`, which starts "
            'Kafka and Redis, or `eval "$(scripts/services.sh env)"` after `make services`',
            pytrace=False,
        )
    return env


@pytest.fixture(scope="session")
def template_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template's working tree committed into a fresh repo tagged v99.0.0 (see helpers)."""
    return snapshot_template(tmp_path_factory.mktemp("template"))
