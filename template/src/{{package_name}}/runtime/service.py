"""The running service: every client and background task it owns, started and stopped in order."""

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..settings import Settings
from .commands import CommandBus
from .errors import StartupError
from .handling import CommandWorker, Handlers
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
    commands: CommandBus
    projector: Projector | None = None
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
async def running(
    settings: Settings, registry: Registry, handlers: Handlers | None = None
) -> AsyncIterator[Service]:
    """Start Redis, the Kafka clients and the consumers; on exit stop them in reverse order.

    Consumers stop gracefully: each finishes the batch or record in hand.
    """
    async with AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        readmodel = ReadModel(redis, settings.redis_key_prefix)

        producer = new_producer(settings)
        await start_client(producer, settings)
        stack.push_async_callback(producer.stop)

        bus = CommandBus(
            readmodel,
            producer,
            source=settings.service_name,
            reply_topic=settings.reply_topic,
            timeout_s=settings.command_timeout_s,
            retention_s=settings.command_retention_s,
        )
        service = Service(settings, readmodel, producer, bus)
        stopping = asyncio.Event()

        async def subscribed(
            consumer: AIOKafkaConsumer, topics: list[str], listener: Projector | None = None
        ) -> AIOKafkaConsumer:
            consumer.subscribe(topics, listener=listener)
            await start_client(consumer, settings)
            stack.push_async_callback(consumer.stop)
            return consumer

        def group(suffix: str) -> AIOKafkaConsumer:
            return new_consumer(settings, group_id=settings.consumer_group + suffix)

        projector = None
        if settings.upstream_topics:
            consumer = group("")
            projector = Projector(
                consumer,
                producer,
                readmodel,
                registry,
                dlq_topic=settings.dlq_topic,
                max_batch=settings.consumer_max_batch,
                poll_timeout_ms=settings.consumer_poll_timeout_ms,
            )
            await subscribed(consumer, settings.upstream_topics, projector)
        worker = CommandWorker(
            await subscribed(group(".commands"), [settings.commands_topic]),
            producer,
            readmodel,
            handlers or Handlers([]),
            source=settings.service_name,
            events_topic=settings.events_topic,
            results_topic=settings.results_topic if settings.pipeline_results else None,
            dlq_topic=settings.dlq_topic,
            handled_retention_s=settings.command_retention_s,
        )
        replies = await subscribed(group(".replies"), [settings.reply_topic])

        # Exit runs these first: ask every loop to stop, then wait for them, then close clients.
        stack.push_async_callback(_finish, service.tasks)
        stack.callback(stopping.set)

        def keep(name: str, work: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(work, name=name)
            task.add_done_callback(_report_crash)
            service.tasks.append(task)

        if projector is not None:
            stack.callback(projector.stop)
            service.projector = projector
            keep("projector", projector.run())
        keep("commands", worker.run(stopping))
        keep("replies", bus.consume_replies(replies, settings.dlq_topic, stopping))
        keep("completions", bus.listen(stopping))
        log.info("%s started", settings.service_name)
        yield service


def _report_crash(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())


async def _finish(tasks: list["asyncio.Task[None]"]) -> None:
    """Give the tasks 30s to finish what they hold, then cancel what is left."""
    _, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
