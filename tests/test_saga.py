"""Two services generated from the template talk through Kafka: a BFF and the upstream it commands.

`personabff` projects the persona service's Fact Events and sends it `persona.rename.v1`;
`personaservice` (the same template, another name) handles the command, publishes
`persona.renamed.v2` and replies. Both run as real processes against the real Kafka and Redis.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from .helpers import assert_ok, render, run

pytestmark = pytest.mark.services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _until(check: Callable[[], bool], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"not true within {within}s")


class Served:
    """`python -m <package> serve` of a rendered project, on a free port."""

    def __init__(self, project: Path, package: str, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.log = project / "serve.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", package, "serve", "--port", str(self.port)],
                cwd=project,
                env={**os.environ, "PYTHONPATH": str(project / "src"), **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _until(lambda: self.get("/health/ready").status_code == 200)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=30)

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.port}{path}", json=body, timeout=30)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def services(tmp_path: Path, services_env: dict[str, str]) -> Iterator[tuple[Served, Served]]:
    run_id = f"saga{uuid.uuid4().hex[:8]}"
    prefix = f"{run_id}.arcadia.identity"
    bff = render(tmp_path / "personabff")
    upstream = render(
        tmp_path / "personaservice", service_name="personaservice", upstream_service="personabff"
    )
    common = {**services_env, "KAFKA_STARTUP_TIMEOUT_S": "30"}
    upstream_env = {
        **common,
        "TOPIC_PREFIX": f"{prefix}.personaservice",
        "REDIS_KEY_PREFIX": f"{run_id}.personaservice",
        # The persona service keeps its own view of personas from its own Fact Events.
        "UPSTREAM_TOPICS": f"{prefix}.personaservice.events",
    }
    bff_env = {
        **common,
        "TOPIC_PREFIX": f"{prefix}.personabff",
        "REDIS_KEY_PREFIX": f"{run_id}.personabff",
        "UPSTREAM_TOPICS": f"{prefix}.personaservice.events",
        "UPSTREAM_COMMANDS_TOPIC": f"{prefix}.personaservice.commands",
    }
    for project, package, env in (
        (upstream, "personaservice", upstream_env),
        (bff, "personabff", bff_env),
    ):
        assert_ok(run(project, package, "create-topics", "--partitions", "2", env=env))

    async def persona_created() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=services_env["KAFKA_BOOTSTRAP_SERVERS"])
        await producer.start()
        try:
            data = {"persona_id": "p1", "name": "Ann", "email": "ann@x.io"}
            event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "personaservice"}
            value = orjson.dumps({**event, "type": "persona.created.v1", "data": data})
            await producer.send_and_wait(f"{prefix}.personaservice.events", value, key=b"p1")
        finally:
            await producer.stop()

    asyncio.run(persona_created())
    worker = Served(upstream, "personaservice", upstream_env)
    try:
        front = Served(bff, "personabff", bff_env)
        try:
            yield front, worker
        finally:
            front.stop()
    finally:
        worker.stop()


def test_rename_command_round_trip_between_two_generated_services(
    services: tuple[Served, Served],
) -> None:
    bff, _ = services
    _until(lambda: bff.get("/personas/p1").status_code == 200)

    accepted = bff.post("/personas/p1/rename", {"name": "Anna"})
    assert accepted.status_code == 202
    command_id = accepted.json()["command_id"]
    assert accepted.json()["status_url"] == f"/commands/{command_id}"

    waited = bff.post("/personas/p1/rename?wait=20", {"name": "Annabel"})
    assert waited.status_code == 200, waited.text
    assert waited.json()["status"] == "succeeded"
    assert waited.json()["result"] == {"persona_id": "p1", "name": "Annabel"}

    _until(lambda: bff.get(f"/commands/{command_id}").json()["status"] == "succeeded")
    _until(lambda: bff.get("/personas/p1").json()["name"] == "Annabel")

    refused = bff.post("/personas/nobody/rename?wait=20", {"name": "X"})
    assert refused.status_code == 200
    assert refused.json()["status"] == "failed"
    assert "does not exist" in refused.json()["error"]

    assert bff.post("/personas/p1/rename", {"name": ""}).status_code == 422
    assert bff.post("/personas/p1/rename?wait=99", {"name": "Y"}).status_code == 422
