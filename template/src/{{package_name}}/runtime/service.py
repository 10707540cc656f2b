"""The running service: every client and background task it owns, started and stopped in order."""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    RedisError,
)
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from . import gaps, growth, snapshot
from .commands.handling import CommandWorker, Handlers
from .commands.sending import CommandBus
from .deadletter import DeadLetters, Retry
from .errors import StartupError
from .kafka import new_consumer, new_job_consumer, new_producer, start_client
from .keyspace import IN_PLACE, LAYOUT, Keyspace
from .observability.instruments import Instruments
from .progress import Progress
from .projection import Registry
from .projector import Projector
from .readmodel import Queries, ReadModel
from .redis import redis_client, tls_options
from .settings import TOPIC_PREFIX, ServiceSettings
from .supervision import Freshness, Loops
from .versions import NewerLayoutError, ReadModelLostError

log = logging.getLogger(__name__)

REDIS_PING_TIMEOUT_S = 1.0
VERSION_POLL_S = 0.5
YOUNG_GC_THRESHOLD = 10_000  # allocations between young collections (Python's default: 700)


def tune_gc() -> None:
    """Collect, then freeze what the process made so far (modules, models, the app): it lives as
    long as the process, and every full collection would walk all of it again, a pause of tens of
    ms that each request in flight waits out. Young collections run less often too: a projector
    allocates and frees several objects per event. Call once, when the process has started."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


@dataclass
class Service:
    settings: ServiceSettings
    readmodel: ReadModel  # what queries read: follows the version pointer
    commands: CommandBus
    instruments: Instruments
    bootstrap: Progress = field(default_factory=lambda: Progress("bootstrap"))
    projector: Projector | None = None
    tasks: list["asyncio.Task[None]"] = field(default_factory=list)
    caught_up: bool = False  # once true, Kafka lag no longer takes this instance out of service
    recoveries: int = 0  # times the read model was found gone from Redis and bootstrapped again
    unreadable: str | None = None  # why this release cannot read the live version, if it cannot
    rebuild: dict[str, int] = field(default_factory=dict)  # a running rebuild's done/total
    parked: "ParkedSummary" = field(default_factory=lambda: ParkedSummary(0, 0, 0.0))
    queries: Queries = field(init=False)  # the read-only view routes and handlers get
    loops: Loops = field(default_factory=Loops)
    freshness: Freshness = field(init=False)
    subscribed: bool = False  # the projector's consumer, once the bootstrap is done

    def __post_init__(self) -> None:
        self.queries = self.readmodel.queries
        self.freshness = Freshness(self.settings.stall_after_s)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether to send this instance traffic, with the state of each component.

        Not ready until the bootstrap has finished and every partition is within READY_MAX_LAG
        of its end; after that, only Redis (the source of every answer) decides, so the service
        keeps serving through a Kafka outage. Never ready while a partition is stopped on a gap
        (gaps.py): the body names each, with the records missing.
        """
        checks: dict[str, str] = {"redis": "ok", "bootstrap": "ok", "projector": "ok"}
        try:
            async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
                await self.readmodel.redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:  # its class: the text names the address
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        if not self.bootstrap.finished:
            checks["bootstrap"] = f"loading: {self.bootstrap.describe()}"
        lag = {} if self.projector is None else self.projector.lag()
        if not self.caught_up and self.projector is not None:
            if not self.projector.assigned_once.is_set():
                checks["projector"] = "waiting for partition assignment"
            elif any(n is None or n > self.settings.ready_max_lag for n in lag.values()):
                checks["projector"] = f"catching up (READY_MAX_LAG={self.settings.ready_max_lag})"
        if self.unreadable:
            checks["layout"] = self.unreadable
        stopped = [] if self.projector is None else list(self.projector.gaps.values())
        if stopped:
            checks["gaps"] = "stopped on a gap: " + "; ".join(gap.describe() for gap in stopped)
        for name, reason in self.loops.given_up.items():  # liveness fails too
            checks[name] = f"given up: {reason}"
        bound = self.settings.ready_max_staleness_s
        if bound and self.caught_up and self.freshness.age_s() > bound:
            checks["projector"] = (
                f"stale: {self.freshness.age_s():.0f}s behind (READY_MAX_STALENESS_S={bound:g})"
            )
        ready = all(state == "ok" for state in checks.values())
        self.caught_up = self.caught_up or ready
        body: dict[str, Any] = {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "bootstrap": self.bootstrap.as_dict(),
            "lag": lag,
        }
        if self.projector is not None:
            body["stale"] = self.freshness.report(self.projector)
        if stopped:
            body["gaps"] = [gap.as_dict() for gap in stopped]
        if self.loops.failing:
            body["restarted"] = dict(self.loops.failing)  # each loop's last failure
        if self.parked.entities:  # held back, while every other entity is current
            body["parked"] = self.parked._asdict() | {"see": "dlq parked"}
        return ready, body


async def connect_redis(settings: ServiceSettings, *, for_http: bool = False) -> Redis:
    """A checked client. HTTP gets a pool of its own (REDIS_HTTP_CONNECTIONS), so a burst of
    queries never takes the connections the consumers commit with; its commands and its wait for
    a free connection are bounded by REDIS_TIMEOUT_S, so a query answers 503 soon when Redis is
    away. The consumers' commands are not bounded: a batch's commit may take long, and must end."""
    bounded = {"socket_timeout": settings.redis_timeout_s} if for_http else {}
    redis = redis_client(
        str(settings.redis_url),
        max_connections=settings.redis_http_connections if for_http else 20,
        wait_s=settings.redis_timeout_s,
        health_check_interval=30,
        socket_connect_timeout=settings.redis_timeout_s,
        **bounded,
        **tls_options(settings),
    )
    try:
        async with asyncio.timeout(REDIS_PING_TIMEOUT_S * 5):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        await redis.aclose()
        raise StartupError(
            f"Redis is unusable at REDIS_URL={settings.redis_url_shown}:"
            f" {type(exc).__name__}: {exc or 'no answer'}{_redis_hint(settings, exc)}"
        ) from None  # the cause's traceback says no more, and may quote the URL unmasked
    return redis


async def check_layout(readmodel: ReadModel) -> None:
    """Refuse to start (StartupError) where the live read model is in a layout newer than this
    release's; none yet is fine: the service creates it. (`serve` checks before it starts.)"""
    try:
        await readmodel.versions.refresh()
    except ReadModelLostError:
        return
    except NewerLayoutError as exc:
        raise StartupError(str(exc)) from None


async def warn_if_password_unneeded(settings: ServiceSettings) -> bool:
    """A password in REDIS_URL that Redis does not ask for protects nothing: anyone who reaches
    Redis reads and writes the read model. Say so at start-up (True if it was said)."""
    url = settings.redis_url
    if not url.password:
        return False
    credentials = f"{url.username or ''}:{url.password}@"
    anonymous = redis_client(
        str(url).replace(credentials, "", 1),
        max_connections=1,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        **tls_options(settings),
    )
    try:
        await anonymous.ping()
    except (RedisError, OSError):  # refused without credentials (NOAUTH): they are needed
        return False
    finally:
        await anonymous.aclose()
    log.warning(
        "REDIS_URL has a password, but Redis answers without one: anyone who can reach it reads"
        " and writes the read model; set a password (requirepass) or ACL users on it"
    )
    return True


def _redis_hint(settings: ServiceSettings, exc: Exception) -> str:
    """Which setting to check, where the error tells."""
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError):
        return " (check the user and password in REDIS_URL)"
    # A TLS failure shows as an SSL error, or, when Redis's alert loses the race with its closing
    # the socket, as a connection reset or closed right after connecting.
    failed_after_connecting = any(sign in str(exc) for sign in ("SSL", "reset", "closed"))
    if settings.redis_url.scheme == "rediss" and failed_after_connecting:
        return (
            " (check REDIS_SSL_CA_FILE, and REDIS_SSL_CERT_FILE and REDIS_SSL_KEY_FILE if Redis"
            " requires a client certificate)"
        )
    return ""


async def key_prefix(redis: Redis, settings: ServiceSettings) -> str:
    """REDIS_KEY_PREFIX; unset, TOPIC_PREFIX, unless this deployment's read model is still where
    releases before this one kept it when only TOPIC_PREFIX was set: under the generated prefix.
    Then it stays there (a warning says how to keep it so), rather than start again empty."""
    derived = settings.redis_key_prefix
    if not settings._key_prefix_derived or derived == TOPIC_PREFIX:
        return derived
    if await redis.exists(Keyspace(derived).pointer) or not await redis.exists(
        Keyspace(TOPIC_PREFIX).pointer
    ):
        return derived
    log.warning(
        "the read model is under the generated Redis key prefix %r, not under TOPIC_PREFIX %r,"
        " which REDIS_KEY_PREFIX now follows when unset: using %r; set REDIS_KEY_PREFIX=%s to keep"
        " it there (this fallback goes in the next release)",
        TOPIC_PREFIX,
        derived,
        TOPIC_PREFIX,
        TOPIC_PREFIX,
    )
    return TOPIC_PREFIX


@asynccontextmanager
async def running(
    settings: ServiceSettings,
    registry: Registry,
    handlers: Handlers | None = None,
    instruments: Instruments | None = None,
) -> AsyncIterator[Service]:
    """Start Redis, the Kafka clients and the consumers; on exit stop them in reverse order.

    Consumers stop gracefully: each finishes the batch or record in hand.
    """
    async with AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        await warn_if_password_unneeded(settings)
        settings = settings.model_copy(
            update={"redis_key_prefix": await key_prefix(redis, settings)}
        )
        http_redis = await connect_redis(settings, for_http=True)
        stack.push_async_callback(http_redis.aclose)
        readmodel = ReadModel(redis, settings.redis_key_prefix, queries_redis=http_redis)
        try:
            await readmodel.versions.initialise()  # a brand-new one waits for its bootstrap
        except NewerLayoutError as exc:
            raise StartupError(str(exc)) from None

        producer = new_producer(settings)
        await start_client(producer, settings)
        stack.push_async_callback(producer.stop)

        instruments = instruments or Instruments()
        bus = CommandBus(
            readmodel,
            producer,
            source=settings.service_name,
            reply_topic=settings.reply_topic,
            timeout_s=settings.command_timeout_s,
            retention_s=settings.command_retention_s,
            per_minute=settings.commands_per_minute,
            projected=registry.topics(settings),
            max_waiting=settings.consistency_max_waiting,
            instruments=instruments,
        )
        service = Service(settings, readmodel, bus, instruments)
        dead_letters = DeadLetters(producer, settings.dlq_topic, instruments)
        stopping = asyncio.Event()

        async def subscribed(consumer: AIOKafkaConsumer, topics: list[str]) -> AIOKafkaConsumer:
            consumer.subscribe(topics)
            await start_client(consumer, settings)
            stack.push_async_callback(consumer.stop)
            return consumer

        def group(suffix: str) -> AIOKafkaConsumer:
            return new_consumer(settings, group_id=settings.consumer_group + suffix)

        projector = None
        if registry.topics(settings):
            consumer = new_consumer(  # never past records it did not read: gaps.py
                settings, group_id=settings.consumer_group, offset_reset="none"
            )
            projector = Projector(
                settings,
                consumer,
                ReadModel(redis, settings.redis_key_prefix),  # its own view: swaps when fenced
                registry,
                dead_letters,
                instruments,
            )
            stack.push_async_callback(consumer.stop)  # started once the bootstrap is done
        worker = CommandWorker(
            await subscribed(group(".commands"), [settings.commands_topic]),
            producer,
            readmodel,
            handlers or Handlers([]),
            source=settings.service_name,
            events_topic=settings.events_topic,
            results_topic=settings.results_topic if settings.pipeline_results else None,
            dead_letters=dead_letters,
            retry=Retry.of(settings),
            handled_retention_s=settings.command_retention_s,
            instruments=instruments,
        )
        replies = await subscribed(group(".replies"), [settings.reply_topic])

        # Exit runs these first: ask every loop to stop, then wait for them, then close clients.
        stack.push_async_callback(_finish, service.tasks)
        stack.callback(stopping.set)

        def keep(name: str, loop: Callable[[], Awaitable[None]]) -> None:
            """Run `loop` as a task, restarted when it raises (supervision.py)."""
            task = asyncio.create_task(service.loops.run(name, loop, stopping), name=name)
            service.tasks.append(task)

        if projector is not None:
            stack.callback(projector.stop)
            service.projector = projector
            keep("watchdog", lambda: service.freshness.watch(projector, stopping))
            keep("growth", lambda: growth.watch(readmodel, registry.collections, stopping))
            keep(
                "gaps",
                lambda: gaps.watch(
                    settings,
                    registry.topics(settings),
                    readmodel,
                    projector,
                    lambda: service.bootstrap.finished,
                    stopping,
                ),
            )
        keep("projector", lambda: _go_live(settings, registry, service, projector))
        keep("version", lambda: _follow_version(service, stopping))
        if projector is not None and await readmodel.versions.layout() < IN_PLACE:
            keep("upgrade", lambda: _upgrade(settings, registry, readmodel))
        keep("commands", lambda: worker.run(stopping))
        keep("replies", lambda: bus.consume_replies(replies, dead_letters, stopping))
        keep("completions", lambda: bus.listen(stopping))
        log.info("%s started", settings.service_name)
        yield service


async def _upgrade(settings: ServiceSettings, registry: Registry, readmodel: ReadModel) -> None:
    """Rebuild a read model written in an older layout, while it serves: what it stores is read
    alike, only what the new layout adds (entities' histories) is missing until then."""
    from .jobs.rebuild import rebuild  # the jobs build on this module: imported when used

    old = await readmodel.versions.layout()
    log.warning(
        "the read model (version %d) was written in layout %d: rebuilding it in layout %d while"
        " it serves",
        readmodel.keys.version,
        old,
        LAYOUT,
    )
    try:
        version = await rebuild(settings, registry)
    except RuntimeError as exc:  # another instance is rebuilding it: it swaps for everyone
        log.info("layout upgrade left to another instance: %s", exc)
        return
    log.info("read model rebuilt in layout %d as version %d", LAYOUT, version)


async def _go_live(
    settings: ServiceSettings,
    registry: Registry,
    service: Service,
    projector: Projector | None,
) -> None:
    """Bootstrap the read model if it waits for it, then project live. Should Redis lose the read
    model (a restart without persistence), not ready again until it is bootstrapped again."""
    while True:
        async for attempt in _retrying("bootstrap"):  # resumes where it failed
            with attempt:
                await _bootstrap(settings, registry, service)
        if projector is None:
            return
        if not service.subscribed:
            projector.consumer.subscribe(registry.topics(settings), listener=projector)
            await start_client(projector.consumer, settings)
            service.subscribed = True
        try:
            await projector.run()
            return
        except gaps.RecoveringError as exc:
            log.warning("%s: bootstrapping the read model again", exc)
        except ReadModelLostError as exc:
            log.error("read model lost (%s): bootstrapping it again", exc)
        service.recoveries += 1
        service.caught_up = False
        service.bootstrap.restart()
        async for attempt in _retrying("initialising the read model"):
            with attempt:
                await service.readmodel.versions.initialise()


def _retrying(what: str) -> AsyncRetrying:
    """Retry through Redis and Kafka outages, backing off to every 5 s."""
    return AsyncRetrying(
        wait=wait_exponential(multiplier=0.1, max=5.0),
        retry=retry_if_exception_type((RedisError, KafkaError, OSError)),
        before_sleep=lambda state: log.warning("%s: %r; retrying", what, state.outcome),
    )


async def _bootstrap(settings: ServiceSettings, registry: Registry, service: Service) -> None:
    """Load the last snapshot of the data topic if the read model waits for its bootstrap."""
    readmodel = service.readmodel
    if await readmodel.versions.awaits_bootstrap():
        # A newer export that replaces the one being loaded makes the load raise (the job consumer
        # skips no deleted record); tried again, it loads the newer one afresh.
        consumer = new_job_consumer(settings)
        await start_client(consumer, settings)
        try:
            summary = await snapshot.load(
                readmodel,
                consumer,
                settings,
                registry.collections,
                settings.data_topic,
                progress=service.bootstrap,
            )
            log.info("bootstrap: loaded %s", summary)
        except StartupError as exc:  # no data topic: nothing to load
            log.warning("bootstrap skipped: %s", exc)
        finally:
            await consumer.stop()
        await readmodel.versions.bootstrapped()
    service.bootstrap.finished = True


async def _follow_version(service: Service, stopping: asyncio.Event) -> None:
    """Keep queries on the live version: a rebuild swaps it (and deletes the old one soon after).
    Also follows a running rebuild's progress, for /metrics."""
    readmodel = service.readmodel
    while not stopping.is_set():
        try:
            if await readmodel.versions.refresh():
                log.info("queries now read version %d", readmodel.keys.version)
            service.unreadable = None
            rebuild = readmodel.keys.rebuild_progress
            progress = cast(dict[bytes, bytes], await readmodel.redis.hgetall(rebuild))
            service.rebuild = {name.decode(): int(value) for name, value in progress.items()}
            service.parked = await parked_summary(readmodel)
        except NewerLayoutError as exc:  # the projector stops on it too
            if service.unreadable is None:
                log.error("%s; this instance is not ready, and projects nothing", exc)
            service.unreadable = str(exc)
        except (RedisError, OSError, ReadModelLostError) as exc:  # the projector recovers
            log.debug("version check failed: %r", exc)
        with suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), VERSION_POLL_S)


class ParkedSummary(NamedTuple):
    """The parked sequences of the live version, in sum (fold.py)."""

    entities: int
    events: int
    oldest_s: float  # how long the longest waiting one has waited


async def parked_summary(readmodel: ReadModel) -> ParkedSummary:
    index = readmodel.keys.parked
    if not await readmodel.redis.hlen(index):
        return ParkedSummary(0, 0, 0.0)
    summaries = [orjson.loads(raw) for raw in await readmodel.redis.hvals(index)]
    since = min(summary["since"] for summary in summaries)
    events = sum(summary["count"] for summary in summaries)
    return ParkedSummary(len(summaries), events, max(0.0, time.time() - since))


async def _finish(tasks: list["asyncio.Task[None]"]) -> None:
    """Give the tasks 30s to finish what they hold, then cancel what is left."""
    _, pending = await asyncio.wait(tasks, timeout=30) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
