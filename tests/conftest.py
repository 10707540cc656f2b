"""Fixtures of the template's tests: where the real services are, and a versioned template copy."""

import os
from pathlib import Path

import pytest

from .helpers import ROOT, git


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
    """The template's working tree committed into a fresh repo tagged v99.0.0.

    A copy made from a dirty checkout records a commit that later updates cannot find; a snapshot
    gives copier and cookiecutter the same, real, versioned source.
    """
    dest = tmp_path_factory.mktemp("template")
    files = git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "snapshot")
    git(dest, "tag", "v99.0.0")
    return dest
