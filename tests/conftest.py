"""Fixtures of the template's tests: where the real services are, and a versioned template copy."""

import os
import time
from collections.abc import Iterator
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


RELIABILITY_PAGE = Path(__file__).resolve().parents[1] / "docs/reliability.md"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"


class Reliability:
    """What the fault suite measured, written to docs/reliability.md when the whole suite passed."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def record(self, fault: str, measured: str) -> None:
        self.rows.append((fault, measured))

    def write(self) -> None:
        table = ["| fault | measured |", "|---|---|"]
        table += [f"| {fault} | {measured} |" for fault, measured in self.rows]
        stamp = f"Measured {time.strftime('%Y-%m-%d')} by `make faults` ({os.cpu_count()} cores)."
        page = RELIABILITY_PAGE.read_text()
        head, _, rest = page.partition(START)
        _, _, tail = rest.partition(END)
        RELIABILITY_PAGE.write_text(
            f"{head}{START}\n{stamp}\n\n" + "\n".join(table) + f"\n{END}{tail}"
        )


@pytest.fixture(scope="session")
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    measured = Reliability()
    yield measured
    # Only a full passing run rewrites the page: no -k, no paths (pytest -m faults, make faults).
    config = request.config
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    passed = request.session.testsfailed == 0
    if measured.rows and whole_suite and not config.getoption("keyword") and passed:
        measured.write()
