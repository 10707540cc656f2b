"""Two services generated from the template talk through Kafka: a BFF and the upstream it commands.

`personabff` projects the persona service's Fact Events and sends it `persona.rename.v1`;
`personaservice` (the same template, another name, with a rename handler its team added) handles
the command, publishes `persona.renamed.v2` and replies. Both run as real processes against the
real Kafka and Redis.
"""

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis import Redis as SyncRedis

from . import personas
from .conftest import Reliability
from .helpers import assert_ok, forget_keys, render, run
from .served import Served, until

pytestmark = pytest.mark.services


@pytest.fixture
def services(tmp_path: Path, services_env: dict[str, str]) -> Iterator[tuple[Served, Served]]:
    run_id = f"saga{uuid.uuid4().hex[:8]}"
    prefix = f"{run_id}.arcadia.identity"
    bff = render(tmp_path / "personabff")
    upstream = personas.render_persona_service(tmp_path / "personaservice")
    common = {**services_env, "KAFKA_STARTUP_TIMEOUT_S": "30"}
    upstream_env = {
        **common,
        "TOPIC_PREFIX": f"{prefix}.personaservice",
        "REDIS_KEY_PREFIX": f"{run_id}.personaservice",
        # The persona service keeps its own view of personas from its own Fact Events.
        "UPSTREAM_TOPICS": f"{prefix}.personaservice.events",
        # Its own rename route commands the BFF, which refuses: renames are not the BFF's.
        "UPSTREAM_PREFIXES": f"personabff={prefix}.personabff",
    }
    bff_env = {
        **common,
        "TOPIC_PREFIX": f"{prefix}.personabff",
        "REDIS_KEY_PREFIX": f"{run_id}.personabff",
        "UPSTREAM_PREFIXES": f"personaservice={prefix}.personaservice",
        "COMMANDS_PER_MINUTE": "1000",  # one user renames 200 times in a few seconds below
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
        forget_keys(services_env["REDIS_URL"], run_id)


def test_rename_command_round_trip_between_two_generated_services(
    services: tuple[Served, Served],
) -> None:
    bff, _ = services
    until(lambda: bff.get("/personas/p1").status_code == 200)

    accepted = bff.post("/personas/p1/rename", {"name": "Anna"})
    assert accepted.status_code == 202
    command_id = accepted.json()["command_id"]
    assert accepted.json()["status_url"] == f"/commands/{command_id}"

    waited = bff.post("/personas/p1/rename?wait=10", {"name": "Annabel"})
    assert waited.status_code == 200, waited.text
    assert waited.json()["status"] == "succeeded"
    assert waited.json()["result"] == {"persona_id": "p1", "name": "Annabel"}

    until(lambda: bff.get(f"/commands/{command_id}").json()["status"] == "succeeded")
    until(lambda: bff.get("/personas/p1").json()["name"] == "Annabel")

    refused = bff.post("/personas/nobody/rename?wait=10", {"name": "X"})
    assert refused.status_code == 200
    assert refused.json()["status"] == "failed"
    assert "does not exist" in refused.json()["error"]

    assert bff.post("/personas/p1/rename", {"name": ""}).status_code == 422
    assert bff.post("/personas/p1/rename?wait=99", {"name": "Y"}).status_code == 422


def test_a_read_with_the_rename_s_consistency_token_is_never_stale(
    services: tuple[Served, Served], services_env: dict[str, str]
) -> None:
    """The frontend's journey: rename, then at once read the persona back with the token the
    rename answered; the BFF applies the persona service's Fact Event in between, or says why not."""
    bff, _ = services
    until(lambda: bff.get("/personas/p1").status_code == 200)
    stale = []
    for n in range(200):
        name = f"Ann {n}"
        renamed = bff.post("/personas/p1/rename?wait=10", {"name": name})
        assert renamed.status_code == 200, renamed.text
        token = renamed.json()["consistency_token"]
        read = httpx.get(
            f"{bff.url}/personas/p1", headers={**bff.headers, "consistency-token": token}
        )
        if read.status_code != 200 or read.json()["name"] != name:
            stale.append((n, read.status_code, read.text[:200]))
    assert stale == []

    # With the BFF's projector held (the read model's freeze, as a snapshot export sets it), the
    # rename is replied to but not applied: a read without the token answers the state before;
    # with it, 503 and Retry-After until the rename is applied.
    freeze = "{" + bff.env["REDIS_KEY_PREFIX"] + "}:freeze"
    with SyncRedis.from_url(services_env["REDIS_URL"]) as redis:
        redis.set(freeze, b"1")
        try:
            renamed = bff.post("/personas/p1/rename?wait=10", {"name": "Held"})
            assert renamed.status_code == 200, renamed.text
            token = renamed.json()["consistency_token"]
            assert bff.get("/personas/p1").json()["name"] == "Ann 199"
            held = httpx.get(
                f"{bff.url}/personas/p1",
                headers={**bff.headers, "consistency-token": token},
                timeout=30,
            )
            assert held.status_code == 503, held.text
            assert held.headers["retry-after"] == "1"
        finally:
            redis.delete(freeze)
    read = httpx.get(f"{bff.url}/personas/p1", headers={**bff.headers, "consistency-token": token})
    assert (read.status_code, read.json()["name"]) == (200, "Held")


@pytest.mark.faults
def test_http_apis_keep_their_schemas_under_fuzzing(
    services: tuple[Served, Served], reliability: Reliability, tmp_path: Path
) -> None:
    """Schemathesis against both services: examples, boundary values and random input for every
    operation, every check (no 5xx, responses match the schema, bad input refused)."""
    generated = {}
    # The bearer token goes where the schema declares it (its HTTPBearer scheme), so schemathesis
    # also checks that what needs one refuses requests without it.
    (tmp_path / "schemathesis.toml").write_text('[auth.openapi.HTTPBearer]\nbearer = "${TOKEN}"\n')
    for server in services:
        # One worker: with two threads, CPython 3.11 before 3.11.8 (a bug fixed there) can fail parsing
        # the source of hypothesis' lambdas with "AST constructor recursion depth mismatch".
        result = subprocess.run(
            [
                Path(sys.executable).parent / "schemathesis", "--no-color", "run",
                f"{server.url}/openapi.json",
                "--checks", "all", "--phases", "examples,coverage,fuzzing",
                "--max-examples", "40", "--workers", "1", "--seed", "1", "--request-timeout", "30",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=tmp_path,  # where schemathesis keeps its cache and finds its configuration
            env={**os.environ, "TOKEN": server.headers["authorization"].removeprefix("Bearer ")},
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-6000:]
        [count] = re.findall(r"(\d+) generated", result.stdout)
        generated[server.url] = int(count)
    bff, upstream = (generated[server.url] for server in services)
    reliability.record(
        "HTTP API fuzzed from its OpenAPI schema (schemathesis, every check)",
        f"{bff:,} requests to the BFF and {upstream:,} to its upstream: no 5xx, no response"
        " outside its schema, every invalid request refused with 4xx",
    )
