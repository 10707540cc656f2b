"""A generated service keeps answering queries from Redis while its Kafka broker is down.

The service runs as a real process against a broker of its own (started with scripts/kafka.sh on
other ports), so stopping that broker disturbs no other test.
"""

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from .helpers import ROOT, forget_keys, render
from .served import Served, free_port, until

pytestmark = pytest.mark.services


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A broker for this test alone; yields its address and the environment of scripts/kafka.sh."""
    env = {
        **os.environ,
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "BFF_RUN_DIR": str(tmp_path / "run"),
    }
    subprocess.run([ROOT / "scripts/kafka.sh", "start"], env=env, check=True, timeout=180)
    try:
        yield f"127.0.0.1:{env['KAFKA_PORT']}", env
    finally:
        subprocess.run([ROOT / "scripts/kafka.sh", "clean"], env=env, check=True, timeout=120)


def test_queries_answer_from_redis_with_kafka_stopped(
    tmp_path: Path, own_kafka: tuple[str, dict[str, str]], services_env: dict[str, str]
) -> None:
    bootstrap, kafka_env = own_kafka
    project = render(tmp_path / "personabff")
    run = f"outage{uuid.uuid4().hex[:8]}"
    upstream = f"{run}.arcadia.identity.personaservice.events"
    env = {
        **services_env,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC_PREFIX": f"{run}.arcadia.identity.personabff",
        "REDIS_KEY_PREFIX": run,
        "UPSTREAM_TOPICS": upstream,
    }

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for n in range(20):
                data = {"persona_id": f"p{n}", "name": f"name {n}", "email": f"{n}@x.io"}
                event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "test"}
                value = orjson.dumps({**event, "type": "persona.created.v1", "data": data})
                await producer.send_and_wait(upstream, value, key=f"p{n}".encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
    server = Served(project, "personabff", env)
    try:
        until(lambda: server.get("/personas/p19").status_code == 200)
        subprocess.run([ROOT / "scripts/kafka.sh", "stop"], env=kafka_env, check=True)

        answers = [server.get(f"/personas/p{n % 20}") for n in range(200)]
        assert [response.status_code for response in answers] == [200] * 200
        assert answers[7].json() == {"persona_id": "p7", "name": "name 7", "email": "7@x.io"}
        assert len(server.get("/personas?limit=500").json()["items"]) == 20
        assert server.get("/health/live").status_code == 200
        assert server.get("/personas/nobody").status_code == 404
    finally:
        server.stop()
        forget_keys(services_env["REDIS_URL"], run)
