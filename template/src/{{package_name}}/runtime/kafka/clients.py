"""Kafka clients built from settings, and a bounded wait for the broker at start-up."""

import asyncio
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ..errors import StartupError
from ..settings import ServiceSettings


def client_options(settings: ServiceSettings) -> dict[str, Any]:
    """Where the brokers are and how to reach them: every Kafka client is built with these, so
    TLS and SASL apply to all of them."""
    password = settings.kafka_sasl_password
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "ssl_context": settings.kafka_ssl_context(),
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": password.get_secret_value() if password else None,
    }


def new_admin(settings: ServiceSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings))


def new_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """An idempotent producer: a retried send never writes a record twice."""
    return AIOKafkaProducer(
        **client_options(settings),
        client_id=f"{settings.service_name}-producer",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
    )


def new_consumer(
    settings: ServiceSettings, *, group_id: str | None, offset_reset: str = "earliest"
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: positions live in Redis beside the state they made.

    `offset_reset="none"` (the projector's): a fetch from an offset the log no longer holds raises
    OffsetOutOfRangeError from `getmany` instead of moving to the earliest offset, past the records
    deleted; its caller seeks every partition itself.

    Without a group it is a job's (bootstrap, rebuild, export): it reads to the end, then seeks
    back, and a seek waits for the fetch in flight, which the broker holds for up to
    `fetch_max_wait_ms` at the end of a partition: so it holds it briefly.
    """
    return AIOKafkaConsumer(
        **client_options(settings),
        client_id=f"{settings.service_name}-consumer",
        group_id=group_id,
        group_instance_id=settings.consumer_instance_id,
        enable_auto_commit=False,
        auto_offset_reset=offset_reset,
        isolation_level="read_committed",
        fetch_max_wait_ms=500 if group_id else 20,
    )


def new_job_consumer(settings: ServiceSettings) -> AIOKafkaConsumer:
    """A job's consumer (bootstrap, rebuild, redrive, `dlq`, gaps): it seeks each partition
    itself, and never past records deleted while it reads them (by retention, or a newer snapshot
    export): `getmany` raises OffsetOutOfRangeError, and a job's projector GapError, instead."""
    return new_consumer(settings, group_id=None, offset_reset="none")


async def start_client(
    client: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient, settings: ServiceSettings
) -> None:
    """Start a client, retrying while the broker is unreachable, KAFKA_STARTUP_TIMEOUT_S at most."""
    retrying = AsyncRetrying(
        stop=stop_after_delay(settings.kafka_startup_timeout_s),
        wait=wait_exponential(multiplier=0.2, max=2.0),
        retry=retry_if_exception_type(KafkaConnectionError),
        reraise=True,
    )
    hint = ""
    try:
        async for attempt in retrying:
            with attempt:
                try:
                    await client.start()
                except KafkaConnectionError:
                    hint = await _diagnose(settings)
                    raise
        # Let the client's background tasks begin: aiokafka raises CancelledError when a consumer
        # is stopped before they ever ran.
        await asyncio.sleep(0)
    except (KafkaError, StartupError) as exc:
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
        if isinstance(exc, StartupError):
            raise
        raise StartupError(
            f"Kafka is unreachable at KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
            f"(gave up after KAFKA_STARTUP_TIMEOUT_S={settings.kafka_startup_timeout_s:g}s): {exc}"
            + hint
        ) from exc


async def _diagnose(settings: ServiceSettings) -> str:
    """Why a secured client could not connect, found with one connection of our own: aiokafka
    only logs the cause and retries. A refused certificate or password raises StartupError at
    once (retrying cannot help); a hint is returned for the message given when start-up gives up.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return ""
    host, port = settings.kafka_bootstrap_servers[0].rsplit(":", 1)
    options = client_options(settings)
    del options["bootstrap_servers"]
    try:
        async with asyncio.timeout(10):
            conn = await create_conn(
                host.strip("[]"), int(port), request_timeout_ms=5000, **options
            )
        conn.close()
    except ssl.SSLCertVerificationError as exc:
        raise StartupError(
            f"the certificate of Kafka broker {host}:{port} is not trusted: {exc.verify_message}"
            " (check KAFKA_SSL_CA_FILE, and that KAFKA_BOOTSTRAP_SERVERS names the host the"
            " certificate is for)"
        ) from None
    except ssl.SSLError as exc:
        raise StartupError(
            f"TLS handshake with Kafka broker {host}:{port} failed: {exc.reason or exc} (check"
            " KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE, and KAFKA_SECURITY_PROTOCOL)"
        ) from None
    except SaslAuthenticationFailed as exc:
        raise StartupError(
            f"Kafka refused the SASL login (KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}):"
            f" {exc} (check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
        ) from None
    except UnsupportedSaslMechanismError:
        raise StartupError(
            f"Kafka does not offer KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}"
            " on this listener"
        ) from None
    except (KafkaConnectionError, ConnectionResetError, BrokenPipeError):
        # Closed as soon as it opened: what a broker does with a client certificate it does not
        # accept (TLS 1.3 reports it only after the handshake), or with the wrong protocol. A
        # broker going down does the same, so keep retrying, and say so only when giving up.
        return (
            f" (a secured connection to {host}:{port} was closed at once: check"
            f" KAFKA_SECURITY_PROTOCOL={protocol} matches that listener, and KAFKA_SSL_CERT_FILE"
            " and KAFKA_SSL_KEY_FILE if it requires a client certificate)"
        )
    except (OSError, TimeoutError, KafkaError):  # not reachable at all: the usual retrying
        pass
    return ""
