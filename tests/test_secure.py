"""Secure connections: a generated service against a Kafka that takes only TLS and SASL and a Redis
that takes only TLS and an ACL user.

One broker (tests/infra.py, SecureKafka) serves mutual TLS on one listener and SASL_SSL (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512) on another; one redis-server asks for a client certificate and a
user. The test's own clients (topics, publishing) use the broker's PLAINTEXT listener.
"""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import personas
from .helpers import assert_ok, render, run
from .infra import Certificates, OwnRedis, SecureKafka
from .served import Served, until

# One worker runs the whole module: one secure broker per run, not one per xdist worker.
pytestmark = [pytest.mark.services, pytest.mark.xdist_group("secure")]

Env = dict[str, str]
REDIS_USER = ("projector", "redis-acl-pass")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[SecureKafka]:
    broker = SecureKafka(tmp_path_factory.mktemp("kafka"), certs)
    broker.start()
    try:
        yield broker
    finally:
        broker.clean()


@pytest.fixture(scope="module")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start(persistent=False, tls=certs, user=REDIS_USER)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("secure") / "personabff")


def _redis_env(redis_server: OwnRedis, certs: Certificates, password: str) -> Env:
    user = REDIS_USER[0]
    return {
        "REDIS_URL": redis_server.url.replace("//", f"//{user}:{password}@", 1),
        "REDIS_SSL_CA_FILE": str(certs.ca),
        "REDIS_SSL_CERT_FILE": str(certs.client_cert),
        "REDIS_SSL_KEY_FILE": str(certs.client_plain_key),
    }


def _kafka_env(kafka: SecureKafka, certs: Certificates, how: str) -> Env:
    """Settings for one way in: "mutual TLS", or a SASL mechanism over SASL_SSL."""
    if how == "mutual TLS":
        return {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.ssl_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_FILE": str(certs.ca),
            "KAFKA_SSL_CERT_FILE": str(certs.client_cert),
            "KAFKA_SSL_KEY_FILE": str(certs.client_key),
            "KAFKA_SSL_KEY_PASSWORD": certs.key_password,
        }
    user = kafka.users[how]
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.sasl_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_FILE": str(certs.ca),
        "KAFKA_SASL_MECHANISM": how,
        "KAFKA_SASL_USERNAME": user,
        "KAFKA_SASL_PASSWORD": kafka.password(user),
    }


def _upstream(run_id: str) -> str:
    """The prefix of this test's upstream topics."""
    return f"{run_id}.arcadia.identity.personaservice"


def _service_env(kafka: SecureKafka, run_id: str) -> Env:
    """Topics and keys of this test's own; the upstream topics are created over PLAINTEXT."""
    for kind in ("events", "commands"):
        asyncio.run(personas.create_topic(kafka.bootstrap, f"{_upstream(run_id)}.{kind}"))
    return {
        "TOPIC_PREFIX": f"{run_id}.arcadia.identity.personabff",
        "REDIS_KEY_PREFIX": run_id,
        "UPSTREAM_PREFIXES": f"personaservice={_upstream(run_id)}",
    }


@pytest.mark.parametrize("how", ["mutual TLS", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_service_projects_over_secure_connections(
    project: Path, kafka: SecureKafka, redis_server: OwnRedis, certs: Certificates, how: str
) -> None:
    run_id = f"secure{uuid.uuid4().hex[:8]}"
    env = {
        **_service_env(kafka, run_id),
        **_kafka_env(kafka, certs, how),
        **_redis_env(redis_server, certs, REDIS_USER[1]),
    }
    assert_ok(run(project, "personabff", "create-topics", env=env))
    created = {"persona_id": "p1", "name": "Ada", "email": "ada@example.com"}
    personas.publish(
        kafka.bootstrap, f"{_upstream(run_id)}.events", [("p1", "persona.created.v1", created)]
    )
    server = Served(project, "personabff", env)
    try:
        until(lambda: server.get("/personas/p1").status_code == 200)
        assert server.get("/personas/p1").json()["name"] == "Ada"
    finally:
        server.stop()
    # The commands' own clients: a snapshot's consumer and admin client, the DLQ reader.
    exported = run(project, "personabff", "snapshot", "export", env=env)
    assert_ok(exported)
    assert "exported 1 entities" in exported.stdout
    assert_ok(run(project, "personabff", "dlq", "list", env=env))


def test_refused_credentials_stop_start_up_naming_the_setting(
    project: Path, kafka: SecureKafka, redis_server: OwnRedis, certs: Certificates
) -> None:
    run_id = f"secure{uuid.uuid4().hex[:8]}"
    redis_env = _redis_env(redis_server, certs, REDIS_USER[1])
    mutual = {**_service_env(kafka, run_id), **_kafka_env(kafka, certs, "mutual TLS"), **redis_env}
    assert_ok(run(project, "personabff", "create-topics", env=mutual))
    scram = {**mutual, **_kafka_env(kafka, certs, "SCRAM-SHA-256")}
    wrong = "wrong-secret-123"
    cases: dict[str, tuple[Env, str]] = {
        "wrong SASL password": ({**scram, "KAFKA_SASL_PASSWORD": wrong}, "KAFKA_SASL_PASSWORD"),
        "wrong SASL user": ({**scram, "KAFKA_SASL_USERNAME": "nobody"}, "KAFKA_SASL_USERNAME"),
        # The broker closes the connection after the handshake (TLS 1.3): retried, then reported.
        "no client certificate against mutual TLS": (
            {
                **mutual,
                "KAFKA_SSL_CERT_FILE": "",
                "KAFKA_SSL_KEY_FILE": "",
                "KAFKA_SSL_KEY_PASSWORD": "",
                "KAFKA_STARTUP_TIMEOUT_S": "2",
            },
            "KAFKA_SSL_CERT_FILE",
        ),
        # Found when the settings are read, before any connection.
        "wrong key password": (
            {**mutual, "KAFKA_SSL_KEY_PASSWORD": wrong},
            "KAFKA_SSL_KEY_PASSWORD",
        ),
        # A certificate that did not sign the broker's: not trusted.
        "broker certificate not trusted": (
            {**mutual, "KAFKA_SSL_CA_FILE": str(certs.client_cert)},
            "KAFKA_SSL_CA_FILE",
        ),
        "wrong Redis ACL password": (
            {**mutual, **_redis_env(redis_server, certs, wrong)},
            "REDIS_URL",
        ),
        "no client certificate for Redis": (
            {**mutual, "REDIS_SSL_CERT_FILE": "", "REDIS_SSL_KEY_FILE": ""},
            "REDIS_SSL_CERT_FILE",
        ),
    }
    for case, (env, setting) in cases.items():
        # Bearer tokens are checked before Kafka and Redis are reached, and tested elsewhere.
        result = run(
            project, "personabff", "serve", env={**env, "AUTH_DISABLED": "true"}, timeout=120
        )
        assert result.returncode == 2, (case, result.stdout, result.stderr)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, (case, output)
        for secret in (
            wrong,
            REDIS_USER[1],
            certs.key_password,
            *map(kafka.password, kafka.users.values()),
        ):
            assert secret not in output, (case, secret)
        message = result.stderr[result.stderr.index("error:") :]
        assert setting in message, (case, message)
