"""A new user's journey, run as the READMEs and docs/update.md tell it: scaffold, install, check,
run, update.

The service gets a virtualenv of its own from its own `make install`, never the shared test
environment, so a missing dependency or install step fails here as on a fresh machine. Commands
run with the shared environment and the test run's variables out of the way; Kafka and Redis are
found through the project's `.env`, as a developer would point it at theirs.
"""

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .helpers import ROOT, forget_keys, git, snapshot_template
from .served import free_port, until

pytestmark = pytest.mark.services


def _environment(services_env: dict[str, str]) -> dict[str, str]:
    """A shell as a new user has it: no virtualenv active, no test-run variables."""
    shared_bin = str(Path(sys.executable).parent)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST", "VIRTUAL_ENV", "KAFKA_", "REDIS_"))
        and name not in ("PYTHONPATH", "COV_CORE_SOURCE")
    }
    env["PATH"] = os.pathsep.join(
        part for part in env["PATH"].split(os.pathsep) if part != shared_bin
    )
    # `make services` finds the test run's Kafka and Redis answering already and uses them.
    kafka, redis = services_env["KAFKA_BOOTSTRAP_SERVERS"], urlsplit(services_env["REDIS_URL"])
    env["KAFKA_PORT"] = kafka.rsplit(":", 1)[1]
    env["REDIS_PORT"] = str(redis.port)
    return env


class Journey:
    """One generated project and the shell its user types in."""

    def __init__(self, project: Path, env: dict[str, str], log: Path) -> None:
        self.project, self.env, self.log = project, env, log
        self.port = free_port()

    def sh(self, command: str, timeout: float = 900) -> str:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        with self.log.open("a") as log:
            log.write(f"$ {command}\n{output}\n")
        assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{output[-6000:]}"
        return output

    @contextmanager
    def serving(self, command: str = "make run") -> Iterator[str]:
        """`command` running in the background until `/health/ready` answers 200."""
        url = f"http://127.0.0.1:{self.port}"
        output = self.log.with_name(f"serve-{self.project.name}.log")
        with output.open("w") as out:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.project,
                env={**self.env, "HTTP_PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def ready() -> bool:
                assert process.poll() is None, f"`{command}` exited:\n{output.read_text()}"
                return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200

            until(ready, within=240)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)

    def write_env(self, services_env: dict[str, str]) -> None:
        (self.project / ".env").write_text(
            "".join(f"{name}={value}\n" for name, value in services_env.items())
        )


def _block(markdown: str, heading: str) -> str:
    """The first bash block under `heading`."""
    section = f"\n{markdown}".split(f"\n{heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, f"no bash block under {heading}"
    return block.group(1)


def _commands(markdown: str, heading: str) -> list[str]:
    """The lines of the first bash block under `heading`, comments dropped."""
    lines = (line.split("  #", 1)[0].strip() for line in _block(markdown, heading).splitlines())
    return [line for line in lines if line]


def _release(template: Path) -> None:
    """The template moves on: a template-owned module changes and one is added; v99.1.0."""
    runtime = template / "template/src/{{package_name}}/runtime"
    health = runtime / "health.py"
    health.write_text(health.read_text() + '\n\nRELEASED_IN = "v99.1.0"\n')
    (runtime / "release.py").write_text('"""Added in v99.1.0."""\n\nRELEASE = "v99.1.0"\n')
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "release v99.1.0")
    git(template, "tag", "v99.1.0")


def _update_and_check(journey: Journey, template: Path, package: str) -> None:
    """docs/update.md's commands; its closing `make check` as lint, types, contracts, a smoke run."""
    _release(template)
    commands = _commands((ROOT / "docs/update.md").read_text(), "# Update")
    assert commands[-1] == "make check", commands
    for command in commands[:-1]:
        journey.sh(command)
    runtime = journey.project / "src" / package / "runtime"
    assert 'RELEASED_IN = "v99.1.0"' in (runtime / "health.py").read_text()
    assert (runtime / "release.py").exists()
    journey.sh("make lint typecheck contracts")
    with journey.serving():
        pass


def _first_commit(project: Path) -> None:
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "generated")


@pytest.fixture
def service_name() -> Iterator[str]:
    name = f"journey{uuid.uuid4().hex[:8]}"
    yield name
    forget_keys(os.environ["REDIS_URL"], f"arcadia.identity.{name}")


def test_make_new_then_the_readme_then_an_update(
    tmp_path: Path, services_env: dict[str, str], service_name: str
) -> None:
    template = snapshot_template(tmp_path / "template")
    env = _environment(services_env)
    # The template's README opens with the two commands: this one scaffolds (`make test` runs this).
    readme = (ROOT / "README.md").read_text()
    assert _commands(readme, readme.splitlines()[0]) == ["make new", "make test"]
    new = subprocess.run(
        ["make", "new", f"NEW_ARGS=--defaults --data service_name={service_name}"],
        cwd=template,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert new.returncode == 0, new.stdout + new.stderr
    project = tmp_path / service_name  # beside the clone, named after the answer
    answers = (project / ".copier-answers.yml").read_text()
    assert f"_src_path: {template}" in answers  # a source `copier update` finds again
    _first_commit(project)
    journey = Journey(project, env, tmp_path / "journey.log")
    journey.write_env(services_env)

    readme = (project / "README.md").read_text()
    start = _commands(readme, "## Start")
    assert start[-1] == "make run", start
    for command in start[:-1]:
        journey.sh(command)
    assert (project / ".venv/bin/python").exists()
    with journey.serving(start[-1]) as url:
        # "Try it", as one script in a second terminal: an upstream event reaches the read model.
        try_it = _block(readme, "## Try it").replace("http://127.0.0.1:8000", url)
        journey.sh(f"set -e\n{try_it}")
        until(lambda: httpx.get(f"{url}/personas/p-1").json().get("name") == "Ada Lovelace")
        # The pin is a command: it went through only with the README's token.
        until(lambda: httpx.get(f"{url}/personas/p-1").json().get("pinned") is True)
    journey.sh("make check", timeout=1500)

    _update_and_check(journey, template, service_name)


def test_cookiecutter_then_an_update(
    tmp_path: Path, services_env: dict[str, str], service_name: str
) -> None:
    template = snapshot_template(tmp_path / "template")
    env = _environment(services_env)
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    made = subprocess.run(
        [cookiecutter, "--no-input", "-o", tmp_path, template, f"service_name={service_name}"],
        env={**env, "PATH": f"{cookiecutter.parent}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / service_name
    _first_commit(project)
    journey = Journey(project, env, tmp_path / "journey.log")
    journey.write_env(services_env)
    for command in (
        "make install",
        "make lint typecheck contracts",
        "make topics",
        "make dev-auth",
    ):
        journey.sh(command)
    with journey.serving():
        pass

    _update_and_check(journey, template, service_name)
