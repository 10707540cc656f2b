"""Kafka ACLs close a service's private topics: two generated services, each logging in as its own
SASL principal with exactly the ACLs its `acls` command prints, on a broker that runs Kafka's
standard authorizer (tests/infra.py, AuthorizingKafka).

`personabff` sends `persona.rename.v1` to `personaservice`, which handles it and answers on the
BFF's `.private.reply` topic (as in test_saga.py). `mallory`, a third principal that no ACL names,
forges the answer a pending command waits for: the broker refuses it, the command stays pending,
and the real answer completes it. A service cannot write a topic it was not granted either.
"""

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAuthorizationFailedError

from . import personas
from .helpers import assert_ok, forget_keys, render, run
from .infra import AuthorizingKafka
from .served import Served, until

# One worker runs the whole module: one broker with the authorizer per run.
pytestmark = [pytest.mark.services, pytest.mark.xdist_group("acls")]

BFF, UPSTREAM = "personabff", "personaservice"
Env = dict[str, str]


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizingKafka]:
    broker = AuthorizingKafka(tmp_path_factory.mktemp("kafka"), users=[BFF, UPSTREAM, "mallory"])
    broker.start()
    try:
        yield broker
    finally:
        broker.clean()


@dataclass
class Deployment:
    """The two services, rendered, with their topics created and their ACLs added."""

    projects: dict[str, Path]
    envs: dict[str, Env]  # each service's settings, logging in as its own principal
    prefix: str  # of every topic of this test

    def topic(self, service: str, suffix: str) -> str:
        return f"{self.prefix}.{service}.{suffix}"


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    kafka: AuthorizingKafka,
    services_env: dict[str, str],
) -> Iterator[Deployment]:
    run_id = f"acls{uuid.uuid4().hex[:8]}"
    prefix = f"{run_id}.arcadia.identity"
    where = tmp_path_factory.mktemp("acls")
    bff = render(where / BFF)
    upstream = personas.render_persona_service(where / UPSTREAM)
    common = {"REDIS_URL": services_env["REDIS_URL"], "KAFKA_STARTUP_TIMEOUT_S": "30"}
    settings = {
        # The persona service keeps its own view of personas from its own Fact Events, and its
        # own rename route commands the BFF.
        UPSTREAM: {
            **common,
            "TOPIC_PREFIX": f"{prefix}.{UPSTREAM}",
            "REDIS_KEY_PREFIX": f"{run_id}.{UPSTREAM}",
            "UPSTREAM_TOPICS": f"{prefix}.{UPSTREAM}.events",
            "UPSTREAM_PREFIXES": f"{BFF}={prefix}.{BFF}",
        },
        BFF: {
            **common,
            "TOPIC_PREFIX": f"{prefix}.{BFF}",
            "REDIS_KEY_PREFIX": f"{run_id}.{BFF}",
            "UPSTREAM_PREFIXES": f"{UPSTREAM}={prefix}.{UPSTREAM}",
        },
    }
    projects = {BFF: bff, UPSTREAM: upstream}
    envs = {name: {**env, **kafka.client_env(name)} for name, env in settings.items()}
    # Topics are created by an operator (a super user here, on the PLAINTEXT listener); each
    # service's own topics cover the other's upstream topics.
    admin = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
    for name, project in projects.items():
        assert_ok(
            run(project, name, "create-topics", "--partitions", "2", env=settings[name] | admin)
        )
    # Each service's ACLs, as its `acls` command prints them: its principal is its SASL user; the
    # other is the upstream it commands, and answers on its reply topic.
    lines: list[str] = []
    for name, other in ((BFF, UPSTREAM), (UPSTREAM, BFF)):
        printed = run(
            projects[name], name, "acls", "--format", "kafka-acls",
            "--upstream-principal", f"{other}=User:{other}",
            "--bootstrap-server", kafka.bootstrap,
            env=envs[name],
        )  # fmt: skip
        assert_ok(printed)
        lines += printed.stdout.splitlines()
    kafka.kafka_acls(lines)
    created = {"persona_id": "p1", "name": "Ann", "email": "ann@x.io"}
    personas.publish(
        kafka.bootstrap, f"{prefix}.{UPSTREAM}.events", [("p1", "persona.created.v1", created)]
    )
    try:
        yield Deployment(projects, envs, prefix)
    finally:
        forget_keys(services_env["REDIS_URL"], run_id)


def _forged_reply(command_id: str, correlation_id: str) -> bytes:
    """The answer a pending command waits for, in every attribute the BFF reads, but not sent by
    the service it commanded."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": UPSTREAM,
            "type": "command.reply.v1",
            "subject": "p1",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "datacontenttype": "application/json",
            "causationid": command_id,
            "correlationid": correlation_id,
            "data": {"status": "succeeded", "result": {"admin": True}},
        }
    )


async def _produce(
    kafka: AuthorizingKafka, user: str, topic: str, value: bytes, *, idempotent: bool = True
) -> None:
    """Send one record as `user`, by default with a producer like the services' (idempotent):
    one needs WRITE on some topic to start, which `mallory` has on none."""
    producer = AIOKafkaProducer(
        **kafka.client_options(user), enable_idempotence=idempotent, request_timeout_ms=10_000
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"p1")
    finally:
        await producer.stop()


async def _records_in(kafka: AuthorizingKafka, topic: str) -> int:
    """How many records the topic holds, asked as a super user."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    assert partitions, described
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka's background tasks begin: a stop now cannot cancel them
    try:
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


def _no_authorization_errors(project: Path) -> None:
    log = (project / "serve.log").read_text()
    assert "AuthorizationFailed" not in log, log[-4000:]


def test_a_forged_reply_is_refused_and_the_real_one_completes_the_command(
    deployment: Deployment, kafka: AuthorizingKafka
) -> None:
    projects, envs = deployment.projects, deployment.envs
    # The persona service knows p1 before it is commanded (its handler checks), then is stopped:
    # the BFF's command waits for it.
    upstream = Served(projects[UPSTREAM], UPSTREAM, envs[UPSTREAM])
    try:
        until(lambda: upstream.get("/personas/p1").status_code == 200)
    finally:
        upstream.stop()
    bff = Served(projects[BFF], BFF, envs[BFF])
    try:
        until(lambda: bff.get("/personas/p1").status_code == 200)
        accepted = bff.post("/personas/p1/rename", {"name": "Anna"})
        assert accepted.status_code == 202, accepted.text
        command_id = accepted.json()["command_id"]
        pending = bff.get(f"/commands/{command_id}").json()
        assert pending["status"] == "pending"

        reply_topic = deployment.topic(BFF, "private.reply")
        forged = _forged_reply(command_id, pending["correlation_id"])
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_produce(kafka, "mallory", reply_topic, forged, idempotent=False))
        assert asyncio.run(_records_in(kafka, reply_topic)) == 0
        assert bff.get(f"/commands/{command_id}").json()["status"] == "pending"

        upstream = Served(projects[UPSTREAM], UPSTREAM, envs[UPSTREAM])
        try:
            until(lambda: bff.get(f"/commands/{command_id}").json()["status"] != "pending")
            done = bff.get(f"/commands/{command_id}").json()
            assert done["status"] == "succeeded", done
            assert done["result"] == {"persona_id": "p1", "name": "Anna"}
            until(lambda: bff.get("/personas/p1").json()["name"] == "Anna")
        finally:
            upstream.stop()
    finally:
        bff.stop()
    for project in projects.values():
        _no_authorization_errors(project)
    # The BFF's jobs run with the same ACLs: an export (it writes the data topic and deletes the
    # records of earlier exports) and the dead-letter reader.
    exported = run(projects[BFF], BFF, "snapshot", "export", env=envs[BFF])
    assert_ok(exported)
    assert "exported 1 entities" in exported.stdout
    assert_ok(run(projects[BFF], BFF, "dlq", "list", env=envs[BFF]))


def test_a_command_whose_reply_the_broker_refuses_is_dead_lettered_and_the_next_is_handled(
    deployment: Deployment, kafka: AuthorizingKafka
) -> None:
    """A sender may name any `replyto`; one the handling service may not write must not stop its
    `.commands` partition: the command is dead-lettered with the reason, the next one answered."""
    projects, envs = deployment.projects, deployment.envs
    unwritable = deployment.topic(BFF, "events")  # the BFF's to publish, not the persona service's
    command = orjson.dumps(
        {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": BFF,
            "type": "persona.rename.v1",
            "subject": "p1",
            "datacontenttype": "application/json",
            "replyto": unwritable,
            "data": {"persona_id": "p1", "name": "Nowhere"},
        }
    )
    upstream = Served(projects[UPSTREAM], UPSTREAM, envs[UPSTREAM])
    bff = Served(projects[BFF], BFF, envs[BFF])
    try:
        # The BFF's principal may write the persona service's commands; the same key (p1), so the
        # same partition, as the rename after it.
        asyncio.run(_produce(kafka, BFF, deployment.topic(UPSTREAM, "commands"), command))
        accepted = bff.post("/personas/p1/rename", {"name": "Annie"})
        assert accepted.status_code == 202, accepted.text
        status = f"/commands/{accepted.json()['command_id']}"
        until(lambda: bff.get(status).json()["status"] == "succeeded")
    finally:
        bff.stop()
        upstream.stop()
    letters = run(projects[UPSTREAM], UPSTREAM, "dlq", "list", env=envs[UPSTREAM])
    assert_ok(letters)
    assert "ReplyRefusedError" in letters.stdout, letters.stdout
    assert unwritable in letters.stdout


@pytest.mark.parametrize(
    ("user", "owner", "suffix"),
    [
        (UPSTREAM, BFF, "events"),  # the BFF's Fact Events are its own to publish
        (BFF, UPSTREAM, "events"),  # nor may a BFF publish its upstream's
        (UPSTREAM, BFF, "private.data"),  # nor seed another's bootstrap
    ],
)
def test_a_service_cannot_write_a_topic_it_was_not_granted(
    deployment: Deployment, kafka: AuthorizingKafka, user: str, owner: str, suffix: str
) -> None:
    topic = deployment.topic(owner, suffix)
    before = asyncio.run(_records_in(kafka, topic))
    event = personas.cloud_event("persona.deleted.v1", {"persona_id": "p1"})
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_produce(kafka, user, topic, event))
    assert asyncio.run(_records_in(kafka, topic)) == before
