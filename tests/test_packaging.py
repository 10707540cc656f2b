"""What a generated service ships for running it elsewhere: its image, compose file and CI workflow.

There is no Docker here, so the image is not built; what its Dockerfile relies on is checked
instead: the files it copies exist, the package builds into a wheel with the console script the
image runs, and the compose and workflow files wire the service to Kafka and Redis.
"""

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

from .helpers import assert_ok, render, run


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_dockerfile_builds_a_non_root_image_of_the_package(tmp_path: Path) -> None:
    project = render(tmp_path / "invoicebff", service_name="invoicebff")
    dockerfile = (project / "Dockerfile").read_text().splitlines()
    assert "ARG PYTHON_VERSION=3.11" in dockerfile  # the default answer
    stages = [line for line in dockerfile if line.startswith("FROM ")]
    assert stages == [
        "FROM python:${PYTHON_VERSION}-slim AS build",
        "FROM python:${PYTHON_VERSION}-slim",
    ]
    [user] = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert user.isdigit() and int(user) > 0
    for line in dockerfile:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (project / source).exists(), line
    assert 'ENTRYPOINT ["invoicebff"]' in dockerfile

    wheel_dir = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), "."],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = wheel_dir.glob("invoicebff-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [entry_points] = [name for name in names if name.endswith("entry_points.txt")]
        assert "invoicebff = invoicebff.cli:main" in archive.read(entry_points).decode()
    assert "invoicebff/runtime/service.py" in names
    assert "invoicebff/contracts/personas.py" in names


def test_compose_runs_the_service_after_creating_its_topics(tmp_path: Path) -> None:
    project = render(tmp_path / "personabff")
    services = _yaml(project / "compose.yaml")["services"]
    kafka = services["kafka"]["environment"]
    internal = next(
        listener.split("://")[1]
        for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
        if listener.startswith("INTERNAL://")
    )
    service, topics = services["personabff"], services["topics"]
    assert service["build"] == topics["build"] == "."
    assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == internal
    assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert topics["command"] == ["create-topics", "--with-upstream"]
    described = run(project, "personabff", "create-topics", "--help")
    assert_ok(described)
    assert "--with-upstream" in described.stdout


def test_ci_workflow_checks_with_kafka_and_redis(tmp_path: Path) -> None:
    project = render(tmp_path / "personabff", python_version="3.13")
    [job] = _yaml(project / ".github/workflows/ci.yml")["jobs"].values()
    assert set(job["services"]) == {"kafka", "redis"}
    assert job["env"]["KAFKA_BOOTSTRAP_SERVERS"] == "localhost:9092"
    steps = [step.get("run") or step["uses"] for step in job["steps"]]
    assert {"make lint", "make typecheck", "make test"} <= set(steps)
    [setup] = [
        step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python")
    ]
    assert setup["with"]["python-version"] == "3.13"
    makefile = (project / "Makefile").read_text()
    for target in ("lint", "typecheck", "test"):
        assert f"\n{target}:" in makefile
