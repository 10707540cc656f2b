"""The running service: every client and background task it owns, started and stopped in order."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..settings import Settings
from .errors import StartupError
from .kafka import new_consumer, new_producer, start_client
from .projection import Registry
from .projector import Projector
from .readmodel import ReadModel

log = logging.getLogger(__name__)

REDIS_PING_TIMEOUT_S = 1.0


@dataclass
class Service:
    settings: Settings
    readmodel: ReadModel
    producer: AIOKafkaProducer
    projector: Projector | None
    tasks: list["asyncio.Task[None]"] = field(default_factory=list)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to send this instance traffic, with the state of each component."""
        checks: dict[str, str] = {"redis": "ok", "projector": "ok"}
        try:
            async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
                await self.readmodel.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"unreachable: {exc!r}"
        if self.projector is not None and not self.projector.assigned_once.is_set():
            checks["projector"] = "waiting for partition assignment"
        for task in self.tasks:
            if task.done():
                checks[task.get_name()] = "stopped"
        ready = all(state == "ok" for state in checks.values())
        return ready, {"status": "ready" if ready else "not ready", "checks": checks}


async def connect_redis(settings: Settings) -> Redis:
    redis = Redis.from_url(str(settings.redis_url), health_check_interval=30)
    try:
        async with asyncio.timeout(REDIS_PING_TIMEOUT_S * 5):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        await redis.aclose()
        raise StartupError(f"Redis is unusable at REDIS_URL={settings.redis_url}: {exc!r}") from exc
    return redis


@asynccontextmanager
async def running(settings: Settings, registry: Registry) -> AsyncIterator[Service]:
    """Start Redis, Kafka clients and the projector; on exit stop them in reverse order."""
    async with AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        readmodel = ReadModel(redis, settings.redis_key_prefix)

        producer = new_producer(settings)
        await start_client(producer, settings)
        stack.push_async_callback(producer.stop)

        service = Service(settings, readmodel, producer, projector=None)
        if settings.upstream_topics:
            consumer = new_consumer(settings, group_id=settings.consumer_group)
            projector = Projector(
                consumer,
                producer,
                readmodel,
                registry,
                dlq_topic=settings.dlq_topic,
                max_batch=settings.consumer_max_batch,
                poll_timeout_ms=settings.consumer_poll_timeout_ms,
            )
            consumer.subscribe(settings.upstream_topics, listener=projector)
            await start_client(consumer, settings)
            stack.push_async_callback(consumer.stop)
            task = asyncio.create_task(projector.run(), name="projector")
            task.add_done_callback(_report_crash)
            stack.push_async_callback(_finish, projector, task)
            service.projector = projector
            service.tasks.append(task)
        log.info("%s started", settings.service_name)
        yield service


def _report_crash(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())


async def _finish(projector: Projector, task: "asyncio.Task[None]") -> None:
    """Let the projector finish the batch in hand, then collect its outcome."""
    projector.stop()
    try:
        await asyncio.wait_for(task, timeout=30)
    except TimeoutError:
        log.error("projector did not stop within 30s; cancelled")
