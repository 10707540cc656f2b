"""A Kafka broker and a Redis of a test's own, on free ports, for it to kill and restart.

The broker is scripts/kafka.sh pointed at its own ports and run directory; Redis is Debian's
redis-server (installed by scripts/redis.sh), run in the foreground as a child of the test.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from .helpers import ROOT
from .served import free_port


def _wait(check: object, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not within {within}s")


class OwnKafka:
    """A single KRaft node whose data survives `kill()` and `start()`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "BFF_RUN_DIR": str(run_dir),
        }

    def _script(self, command: str) -> None:
        subprocess.run([ROOT / "scripts/kafka.sh", command], env=self.env, check=True, timeout=180)

    def start(self) -> None:
        self._script("start")

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would leave it."""
        pid = int((self.run_dir / "kafka/kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not Path(f"/proc/{pid}").exists(), "broker gone", 30)

    def clean(self) -> None:
        self._script("clean")


class OwnRedis:
    """redis-server on a free port; `persistent` keeps an append-only file (fsync every second)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, persistent: bool = True, password: str | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "yes" if persistent else "no",
                "--appendfsync", "everysec",
                "--hash-max-listpack-entries", "512",
                "--hash-max-listpack-value", "1024",
                *(["--requirepass", password] if password else []),
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, password=password)
        _wait(lambda: self._answers(client), "redis answering", 20)
        client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: what was not yet fsynced to the append-only file is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def wipe(self) -> None:
        """Forget everything, as a Redis without persistence does when it restarts."""
        shutil.rmtree(self.data_dir, ignore_errors=True)
