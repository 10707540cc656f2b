"""A rendered project's service, run as a real process: `python -m <package> serve`."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

# Below Linux's ephemeral range (32768-60999): a port chosen here cannot be taken by some client's
# outgoing connection between choosing it and the server binding it, as a port the kernel hands
# out for bind(0) can be on a machine busy with parallel tests.
_PORTS = range(20000, 32768)


def free_port() -> int:
    for port in random.sample(_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS}")


def until(check: Callable[[], bool], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"not true within {within}s")


def package_command(
    project: Path, package: str, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m <package> ARGS` in a rendered project, failing the test if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", package, *args],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src"), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done


class Served:
    """`python -m <package> serve` of a rendered project, on a free port, trusting the local token
    issuer `make dev-auth` sets up; its requests carry a token for the user `tester`."""

    def __init__(
        self, project: Path, package: str, env: dict[str, str], *, wait_ready: bool = True
    ) -> None:
        self.port = free_port()
        self.env = env
        self.log = project / "serve.log"
        package_command(project, package, env, "auth", "dev-setup")
        token = package_command(project, package, env, "auth", "dev-token", "tester").stdout
        self.headers = {"authorization": f"Bearer {token.strip()}"}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", package, "serve", "--port", str(self.port)],
                cwd=project,
                env={**os.environ, "PYTHONPATH": str(project / "src"), **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        probe = "/health/ready" if wait_ready else "/health/live"
        until(lambda: self._alive() and self.get(probe).status_code == 200)

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log.read_text()}")
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, headers=self.headers, timeout=30)

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=30)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
