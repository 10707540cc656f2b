"""Benchmarks of a generated service against baselines measured in the same run.

    python bench/run.py [--quick]

Renders the template with default answers, then measures, against the real Kafka and Redis at
KAFKA_BOOTSTRAP_SERVERS and REDIS_URL (`make bench` starts both):

    projection  events/s into the read model    vs the peers a user would pick instead, FastStream
                                                and Quix Streams writing to Redis (one projector,
                                                and a projector process per partition; for
                                                reference, a prototype projector and raw getmany)
    query       GET /personas/{id} req/s, p99   vs a minimal FastAPI app doing one Redis GET (wrk)
    bootstrap   snapshot records/s loaded       vs raw consume of the data topic
    saga        command -> reply round trip     p50 and p99, absolute
    memory      Redis bytes per entity          vs the entity's JSON size
    stages      us an event of the projector's  where its CPU goes, without I/O
                in-memory stages

It prints each figure with its ratio and target (machines here are noisy and shared, so only
ratios measured in the same run mean anything, and each ratio is the median of rounds in which
the service and its baseline run back to back), writes bench/results/latest.json, the plot
docs/img/benchmarks.png and the table in docs/benchmarks.md. It deletes the topics, consumer
groups and Redis keys it made.
"""

import argparse
import asyncio
import importlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from copier import run_copy
from redis import Redis as SyncRedis
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench/results/latest.json"
PLOT = ROOT / "docs/img/benchmarks.png"
PAGE = ROOT / "docs/benchmarks.md"
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
REDIS = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


@dataclass
class Figure:
    name: str
    service: float
    baseline: float | None
    unit: str
    ratio: float  # service / baseline, or the absolute value when there is no baseline
    target: float | None  # None: a reference, shown for context, with nothing to meet
    higher_is_better: bool
    note: str

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def median_ratio(measured: list[float], baseline: list[float]) -> float:
    """The median of the rounds' ratios: a slow phase of the machine slows both sides of a round."""
    return statistics.median(m / b for m, b in zip(measured, baseline, strict=True))


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- the service under test
@contextmanager
def generated_service() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "personabff"
        run_copy(str(ROOT), str(project), defaults=True, vcs_ref="HEAD", quiet=True)
        sys.path.insert(0, str(project / "src"))
        yield project


def token_issuer() -> Any:
    """The generated service's local token issuer (`make dev-auth`), which the service under test
    trusts: the benchmarks measure it with authentication on, as it runs."""
    from personabff.runtime.dev_tokens import DevIssuer

    return DevIssuer(Path(tempfile.gettempdir()) / "bff-bench-auth").ensure()


def settings_for(run: str, **overrides: Any) -> Any:
    from personabff.settings import Settings

    issuer = token_issuer()
    values = {
        "kafka_bootstrap_servers": KAFKA,
        "redis_url": REDIS,
        "topic_prefix": f"{run}.arcadia.identity.personabff",
        "redis_key_prefix": f"{run}.personabff",
        "upstream_topics": [f"{run}.arcadia.identity.personaservice.events"],
        # The upstream's commands topic too is the run's own (the service checks it at start).
        "upstream_prefixes": {"personaservice": f"{run}.arcadia.identity.personaservice"},
        "auth_issuer": issuer.issuer,
        "auth_jwks_file": issuer.jwks_file,
    }
    return Settings(_env_file=None, **{**values, **overrides})


def persona_events(count: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, CloudEvent): personas created, then renamed, about 250 bytes each."""
    personas = count // 2
    for n in range(count):
        persona_id = f"p{n % personas}"
        if n < personas:
            event_type = "persona.created.v1"
            data = {
                "persona_id": persona_id,
                "name": f"Persona {n}",
                "email": f"{persona_id}@example.com",
            }
        else:
            event_type = "persona.renamed.v2"
            data = {"persona_id": persona_id, "display_name": f"Renamed {n}"}
        envelope = {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": "/bench/personaservice",
            "type": event_type,
            "time": "2026-11-27T10:00:00Z",
            "datacontenttype": "application/json",
            "data": data,
        }
        yield persona_id.encode(), orjson.dumps(envelope)


async def produce(topic: str, records: Iterator[tuple[bytes, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, linger_ms=20, max_batch_size=262144)
    await producer.start()
    sent = 0
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def assigned_consumer(
    topic: str, partitions: list[int] | None = None, **options: Any
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A consumer of `partitions` of `topic` (None: all), at their beginning."""
    from personabff.runtime.kafka import partitions_of

    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, **options)
    await consumer.start()
    await asyncio.sleep(0)
    tps = await partitions_of(settings_for("probe"), topic)
    tps = [tp for tp in tps if partitions is None or tp.partition in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer, tps


async def create_service_topics(settings: Any, partitions: int = 3) -> None:
    """The service's own topics and its upstream's, as `create-topics --with-upstream` makes them."""
    from personabff.cli import upstream_topics
    from personabff.runtime.kafka import create_topics, own_topics

    topics = [*upstream_topics(settings), *own_topics(settings)]
    await create_topics(settings, topics, partitions=partitions)


async def topic_records(topic: str) -> int:
    """How many records `topic` holds (offsets from its start to its end)."""
    consumer, tps = await assigned_consumer(topic)
    try:
        start = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        return sum(end[tp] - start[tp] for tp in tps)
    finally:
        await consumer.stop()


async def raw_consume(topic: str, count: int) -> float:
    """Records/s of a bare getmany loop that does nothing with them."""
    consumer, _ = await assigned_consumer(topic)
    try:
        seen, start = 0, time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(records) for records in batches.values())
        return count / (time.perf_counter() - start)
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------------------- the peers
# What a user would pick instead of the generated service to keep personas in Redis: FastStream
# (aiokafka underneath) and Quix Streams (confluent-kafka underneath), each run as its user would
# run it: in a process of its own, in a consumer group of its own from the earliest offset, with
# the library's defaults. Each folds the same persona events into the same entity JSON as the
# service's `personas` projection. Neither validates a contract, commits its positions with the
# state it writes, fences a stale instance, keeps lookups, or parks or de-duplicates events.
# They run from bench/peers.py, in a venv of their own (PEERS_PYTHON).
PEERS_SCRIPT = Path(__file__).with_name("peers.py")
PEERS_PYTHON = os.environ.get("PEERS_PYTHON", ".cache/peers-venv/bin/python")
PEERS = ["FastStream", "Quix Streams"]


def expected_personas(count: int) -> dict[str, dict[str, Any]]:
    """Every persona of `persona_events(count)` as the service's projection leaves it."""
    personas = count // 2
    return {
        f"p{n}": {
            "persona_id": f"p{n}",
            "name": f"Renamed {personas + n}",
            "email": f"p{n}@example.com",
            "renames": 1,
            "pinned": False,
        }
        for n in range(personas)
    }


@dataclass
class PeerRun:
    """Where a peer writes (`prefix` + persona id), in which consumer group, and what it did."""

    name: str
    group: str
    prefix: str
    first: float = 0.0  # time.time() of its first record
    last: float = 0.0  # time.time() of its last write to Redis
    events: int = 0

    @property
    def rate(self) -> float:
        return self.events / (self.last - self.first)


def run_peer(peer: PeerRun, topic: str, count: int) -> PeerRun:
    """Run a peer (bench/peers.py) in a venv of its own (`make bench` makes it: the peers' pins
    must not reach the service's), as its user runs it, and read back when it saw its first
    record, when it last wrote, and how many events it saw."""
    slug = peer.name.split()[0].lower()
    command = [PEERS_PYTHON, str(PEERS_SCRIPT), slug, topic, str(count), peer.group, peer.prefix]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": KAFKA, "REDIS_URL": REDIS}
    result = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise SystemExit(f"error: {peer.name} failed:\n{result.stderr[-3000:]}")
    peer.first, peer.last, peer.events = json.loads(result.stdout.splitlines()[-1])
    if peer.events != count:
        raise SystemExit(f"error: {peer.name} saw {peer.events:,} events of {count:,}")
    return peer


async def verify_peer(peer: PeerRun, expected: dict[str, dict[str, Any]]) -> None:
    """Every persona in Redis under the peer's prefix, as the service's projection leaves it;
    then the peer's keys are deleted."""
    ids = list(expected)
    async with Redis.from_url(REDIS) as redis:
        wrong: list[str] = []
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            stored = await redis.mget([peer.prefix + key for key in chunk])
            wrong += [
                key
                for key, raw in zip(chunk, stored, strict=True)
                if raw is None or orjson.loads(raw) != expected[key]
            ]
        keys = [key async for key in redis.scan_iter(match=f"{peer.prefix}*", count=5000)]
        for start in range(0, len(keys), 5000):
            await redis.unlink(*keys[start : start + 5000])
    if wrong:
        raise SystemExit(
            f"error: {peer.name} left {len(wrong):,} of {len(ids):,} personas missing or wrong"
            f" in Redis (first: {wrong[:3]})"
        )


# ------------------------------------------------------------------------------ the benchmarks
async def prototype_consume(run: str, topic: str, count: int) -> float:
    """Events/s of the prototype projector: orjson, a dict fold over state held in memory,
    one MULTI with an MSET of the batch's entities and the checkpoint HSET. No validation, no
    lookups, no read or check of the stored state: what is left of a projector without them."""
    from personabff.runtime.redis import redis_client

    redis = redis_client(REDIS)
    consumer, _ = await assigned_consumer(topic)
    personas: dict[str, dict[str, Any]] = {}
    try:
        seen, start = 0, time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            changed: dict[str, bytes] = {}
            checkpoint: dict[str, int] = {}
            for tp, records in batches.items():
                for record in records:
                    event = orjson.loads(record.value)
                    data = event["data"]
                    persona_id = data["persona_id"]
                    if event["type"] == "persona.created.v1":
                        state = {**data, "renames": 0, "pinned": False}
                    elif persona_id in personas:
                        old = personas[persona_id]
                        state = {**old, "name": data["display_name"], "renames": old["renames"] + 1}
                    else:
                        continue
                    personas[persona_id] = state
                    changed[f"{run}:prototype:{persona_id}"] = orjson.dumps(state)
                checkpoint[f"{tp.topic}:{tp.partition}"] = records[-1].offset + 1
                seen += len(records)
            if changed:
                async with redis.pipeline(transaction=True) as multi:
                    multi.mset(changed)
                    multi.hset(f"{run}:prototype:positions", mapping=checkpoint)
                    await multi.execute()
        return count / (time.perf_counter() - start)
    finally:
        await consumer.stop()
        await redis.aclose()


@asynccontextmanager
async def projector_over(
    settings: Any, prefix: str, topic: str, partitions: list[int] | None = None
) -> AsyncIterator[tuple[Any, dict[TopicPartition, int]]]:
    """The service's projector over `partitions` of `topic` (None: all) from their beginning,
    into the read model at `prefix`, and the end offsets it is to reach; as in `serve`, the read
    model grows its buckets meanwhile."""
    from personabff.projections import REGISTRY
    from personabff.runtime import growth
    from personabff.runtime.deadletter import DeadLetters
    from personabff.runtime.projector import Projector
    from personabff.runtime.readmodel import ReadModel
    from personabff.runtime.redis import redis_client

    redis = redis_client(REDIS)  # the service's client
    readmodel = ReadModel(redis, prefix)
    await readmodel.versions.initialise()
    await readmodel.versions.bootstrapped()  # no snapshot to load: project from the start
    consumer, tps = await assigned_consumer(topic, partitions, isolation_level="read_committed")
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
    await producer.start()
    stopping = asyncio.Event()
    growing = asyncio.create_task(growth.watch(readmodel, REGISTRY.collections, stopping))
    try:
        end = await consumer.end_offsets(tps)
        dead_letters = DeadLetters(producer, settings.dlq_topic)
        projector = Projector(settings, consumer, readmodel, REGISTRY, dead_letters)
        await projector.on_partitions_assigned(tps)
        yield projector, end
    finally:
        stopping.set()
        await growing
        await consumer.stop()
        await producer.stop()
        await redis.aclose()


async def project(settings: Any, prefix: str, topic: str, count: int) -> float:
    """Events/s of the service's projector, from the start of `topic` into an empty read model."""
    async with projector_over(settings, prefix, topic) as (projector, end):
        start = time.perf_counter()
        await projector.run(until=end)
        return count / (time.perf_counter() - start)


@dataclass
class Projected:
    rate: float  # events/s
    cpu: float  # CPU seconds of the projector processes, together
    wall: float  # seconds


def project_in_processes(
    run: str, src: Path, prefix: str, groups: list[list[int] | None], count: int
) -> Projected:
    """A projector process per group of partitions (None: all of them) into one read model, each
    a fresh interpreter as `serve` starts one: one group is the service's projector, one per
    partition the instances of a consumer group sharing them, what cores beyond the first buy."""
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of this loop
    ready, go, done = spawn.Queue(), spawn.Event(), spawn.Queue()
    processes = [
        spawn.Process(target=_projector_process, args=(run, src, prefix, group, ready, go, done))
        for group in groups
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:  # every projector assigned and seeked, its fetcher running
            ready.get(timeout=120)
        start = time.time()
        go.set()
        finished = [done.get(timeout=600) for _ in processes]
        wall = max(end for end, _ in finished) - start
        return Projected(count / wall, sum(cpu for _, cpu in finished), wall)
    finally:
        for process in processes:
            process.join(timeout=30)
            process.kill()


def _projector_process(
    run: str, src: Path, prefix: str, partitions: list[int] | None, ready: Any, go: Any, done: Any
) -> None:
    sys.path.insert(0, str(src))
    from personabff.runtime.service import tune_gc

    async def main() -> None:
        tune_gc()  # as `serve` does
        settings = settings_for(run)
        [topic] = settings.upstream_topics
        async with projector_over(settings, prefix, topic, partitions) as (projector, end):
            ready.put(partitions)
            await asyncio.to_thread(go.wait)  # the loop runs meanwhile, as it fetches
            cpu = time.process_time()
            await projector.run(until=end)
            done.put((time.time(), time.process_time() - cpu))

    asyncio.run(main())


async def projection(run: str, src: Path, count: int, rounds: int) -> tuple[list[Figure], Any]:
    """Rounds of: raw getmany, the prototype, the service's projector, a projector process per
    partition, then each peer, one after the other on the same topic, so each round's see the
    same phase of a shared machine; ratios are medians of the rounds'. Each peer's personas are
    checked in Redis after its run. The first round projects into the read model that the memory
    and bootstrap figures use."""
    settings = settings_for(run)
    [topic] = settings.upstream_topics
    partitions = 3
    await create_service_topics(settings, partitions)
    say(f"projection: producing {count:,} events")
    await produce(topic, persona_events(count))
    expected = expected_personas(count)

    raw: list[float] = []
    prototype: list[float] = []
    service: list[float] = []
    cpu: list[float] = []  # the projector's CPU microseconds an event
    busy: list[float] = []  # its share of the run on a core
    scaled: list[float] = []
    peers: dict[str, list[float]] = {name: [] for name in PEERS}
    for n in range(rounds):
        say(
            f"projection: round {n + 1} of {rounds}: raw getmany, prototype, service's projector,"
            f" {partitions} projector processes, {', '.join(PEERS)}"
        )
        raw.append(await raw_consume(topic, count))
        prototype.append(await prototype_consume(f"{run}r{n}", topic, count))
        prefix = settings.redis_key_prefix if n == 0 else f"{settings.redis_key_prefix}.r{n}"
        one = await asyncio.to_thread(project_in_processes, run, src, prefix, [None], count)
        service.append(one.rate)
        cpu.append(one.cpu / count * 1e6)
        busy.append(one.cpu / one.wall)
        processes = f"{settings.redis_key_prefix}.p{n}"
        groups: list[list[int] | None] = [[p] for p in range(partitions)]
        scaled.append(
            (await asyncio.to_thread(project_in_processes, run, src, processes, groups, count)).rate
        )
        for name in PEERS:
            slug = name.split()[0].lower()
            peer = PeerRun(name, f"{run}.{slug}.r{n}", f"{run}:{slug}:r{n}:")
            await asyncio.to_thread(run_peer, peer, topic, count)
            await verify_peer(peer, expected)
            peers[name].append(peer.rate)
    stored = orjson.loads(await _persona(settings, "p0"))
    if stored != expected["p0"]:  # the peers fold into what the service's projection keeps
        raise SystemExit(f"error: the service keeps {stored}, the peers {expected['p0']}")

    best = [max(rates) for rates in zip(*peers.values(), strict=True)]
    leaders = [max(peers, key=lambda name: peers[name][n]) for n in range(rounds)]
    leader = max(PEERS, key=leaders.count)
    rate = statistics.median(service)
    note = f"median of {rounds} rounds"
    timed = "each peer timed from its first record to its last write"
    figures = [
        Figure(
            "projection vs the best peer",
            rate,
            statistics.median(best),
            "events/s",
            median_ratio(service, best),
            1.2,
            True,
            f"the faster peer of each round ({leader} in {leaders.count(leader)} of {rounds});"
            f" {timed}; the projector took {statistics.median(cpu):.1f} us of CPU an event, busy"
            f" {statistics.median(busy):.0%} of its run; {note}",
        ),
        Figure(
            f"projection, {partitions} processes, vs the best peer",
            statistics.median(scaled),
            statistics.median(best),
            "events/s",
            median_ratio(scaled, best),
            1.5,
            True,
            f"a projector process per partition, {median_ratio(scaled, service):.2f}x one"
            f" projector on {os.cpu_count()} cores; {note}",
        ),
    ]
    figures += [
        Figure(
            f"projection vs {name}",
            rate,
            statistics.median(rates),
            "events/s",
            median_ratio(service, rates),
            None,
            True,
            f"reference: {name} {median_ratio(rates, raw):.2f}x raw getmany; {note}",
        )
        for name, rates in peers.items()
    ]
    figures += [
        Figure(
            "projection vs prototype",
            rate,
            statistics.median(prototype),
            "events/s",
            median_ratio(service, prototype),
            None,
            True,
            f"reference: the prototype is {median_ratio(prototype, raw):.2f}x raw getmany; {note}",
        ),
        Figure(
            "projection vs raw getmany",
            rate,
            statistics.median(raw),
            "events/s",
            median_ratio(service, raw),
            None,
            True,
            f"reference: a getmany loop that does nothing; {note}",
        ),
    ]
    return figures, settings


@dataclass
class StageRecord:
    """A consumed record as the projector reads it (kafka/records.py)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


STAGE_PASSES = 3  # the best of them is shown: a pass slowed by the machine is not

STAGES = {  # the projector's work on a batch in memory, in its order, and what each is
    "validate": "validating events: one pydantic pass over each CloudEvent and its data",
    "cache": "finding the batch's entities in the projector's entity cache",
    "decode": "decoding the stored entities (pydantic)",
    "histories": "decoding the entities' histories",
    "fold": "folding: the de-duplication, ordering and parking rules",
    "projections": "the projection functions (user code: pydantic models built or copied)",
    "writes": "building the writes: encoding entities (pydantic) and histories, lookup changes",
    "arguments": "building the commit script's keys and arguments",
    "packing": "packing the commit into a Redis command (hiredis)",
    "keeping": "keeping what the batch committed in the entity cache",
}


def stages(settings: Any, count: int) -> dict[str, float]:
    """Microseconds an event of each in-memory stage of the projector (STAGES), the best of
    STAGE_PASSES over `count` events as the projection figures' (creates, then renames), in batches
    of the service's size, through the projector's own functions. What it leaves out is I/O:
    Redis reads and the commit's round trip, and aiokafka fetching and unpacking records."""
    from personabff.projections import REGISTRY
    from personabff.runtime.commit import Batches, states
    from personabff.runtime.fold import Fold, History, stored_writes
    from personabff.runtime.keyspace import Keyspace
    from personabff.runtime.projector import EntityCache, _Batch
    from personabff.runtime.redis import HiredisConnection

    records = [
        StageRecord("events", zlib.crc32(key) % 3, n, key, value, [])
        for n, (key, value) in enumerate(persona_events(count))
    ]
    size = settings.consumer_max_batch
    keys = Keyspace(settings.redis_key_prefix)
    batches = Batches(cast(Any, None), keys)  # builds arguments only: no Redis
    pack = HiredisConnection().pack_command
    timed = [0.0]  # seconds in the projection functions, this batch

    def timing(apply: Any) -> Any:
        def timed_apply(state: Any, event: Any) -> Any:
            begun = time.perf_counter()
            try:
                return apply(state, event)
            finally:
                timed[0] += time.perf_counter() - begun

        return timed_apply

    best = dict.fromkeys(STAGES, float("inf"))
    for _ in range(STAGE_PASSES):
        cache = EntityCache(settings.projector_cached_entities)
        spent = dict.fromkeys(STAGES, 0.0)
        for start in range(0, count, size):
            clock = [time.perf_counter()]
            work = [
                (r, REGISTRY.read(r.value, r.headers)[1]) for r in records[start : start + size]
            ]
            for _, changes in work:  # the projection functions, timed apart
                for change in changes:
                    change.apply = timing(change.apply)
            clock.append(time.perf_counter())
            refs = _Batch({}, {}, work, []).refs()
            cached = cache.get(refs)
            read = {ref: cached[ref][0] if ref in cached else None for ref in refs}
            stored = {ref: cached[ref][1] if ref in cached else None for ref in refs}
            clock.append(time.perf_counter())
            before = states(REGISTRY.collections, read)
            clock.append(time.perf_counter())
            histories = {ref: History.loads(raw) for ref, raw in stored.items()}
            clock.append(time.perf_counter())
            folded = Fold(
                before,
                histories,
                {},
                window=settings.idempotence_window,
                park_max=settings.park_max_events,
            ).run(work)
            folding = time.perf_counter() - clock[-1]
            clock.append(clock[-1] + folding - timed[0])  # the rules: without the projections
            clock.append(clock[-1] + timed[0])
            timed[0] = 0.0
            writes = stored_writes(folded, keys, REGISTRY.collections, before, stored)
            clock.append(time.perf_counter())
            names, args = batches._arguments({}, {}, read, stored, writes, False)
            clock.append(time.perf_counter())
            pack("EVALSHA", "0" * 40, len(names), *names, *args)
            clock.append(time.perf_counter())
            cache.commit(read, stored, writes)
            clock.append(time.perf_counter())
            for stage, begun, ended in zip(STAGES, clock[:-1], clock[1:], strict=True):
                spent[stage] += ended - begun
        best = {stage: min(best[stage], spent[stage] / count * 1e6) for stage in STAGES}
    return best


@dataclass
class Footprint:
    """What a read model of personas holds in Redis, in bytes per entity."""

    entities: int
    total: float  # every key of the read model
    fields: float  # the entity hashes: each entity's JSON with its history
    lookups: float  # the lookup hashes
    json: float  # an entity's JSON

    @property
    def ratio(self) -> float:
        return self.total / self.json

    def parts(self) -> str:
        """Where the bytes go, for a figure's note."""
        return (
            f"entity fields (JSON and history: the last 8 events applied, to skip redeliveries)"
            f" {self.fields:.0f} B ({self.fields / self.json:.2f}x), lookups {self.lookups:.0f} B"
        )


async def footprint(prefix: str) -> Footprint:
    """Every key the read model at `prefix` holds for its personas (entities, their histories
    and lookups), per entity."""
    from personabff.runtime.readmodel import ReadModel

    redis = Redis.from_url(REDIS)
    try:
        readmodel = ReadModel(redis, prefix)
        await readmodel.versions.refresh()
        keyspace = readmodel.keys
        keys = [key async for key in redis.scan_iter(match=keyspace.everything, count=1000)]
        usages: list[int | None] = []
        for start in range(0, len(keys), 10_000):
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 10_000]:
                    pipe.memory_usage(key, samples=0)
                usages += await pipe.execute()
        used = dict(zip(keys, usages, strict=True))

        async def bytes_of(pattern: str) -> int:
            return sum(
                [used.get(key) or 0 async for key in redis.scan_iter(match=pattern, count=1000)]
            )

        entities = await readmodel.queries.count("personas")
        page, _ = await readmodel.queries.page("personas", after=None, limit=5000)
        return Footprint(
            entities,
            sum(usage or 0 for usage in usages) / entities,
            await bytes_of(keyspace.buckets()) / entities,
            await bytes_of(keyspace.lookup_buckets()) / entities,
            statistics.mean(len(value) for value in page),
        )
    finally:
        await redis.aclose()


async def memory(settings: Any) -> Figure:
    used = await footprint(settings.redis_key_prefix)
    note = f"{used.entities:,} entities, JSON {used.json:.0f} B each; {used.parts()}"
    return Figure(
        "Redis memory per entity", used.total, used.json, "bytes", used.ratio, 1.5, False, note
    )


async def growth(run: str, sizes: tuple[int, int]) -> list[Figure]:
    """The projector's rate and the memory per entity with few and with many entities, with the
    same event mix (each persona created, then renamed once): how they grow with the read
    model. Each size is projected once, on a topic of its own, from the start."""
    from personabff.runtime.kafka import create_topics

    rates: dict[int, float] = {}
    used: dict[int, Footprint] = {}
    for size in sizes:
        settings = settings_for(f"{run}g{size}")
        [topic] = settings.upstream_topics
        await create_topics(settings, [topic, settings.dlq_topic], partitions=3)
        say(f"growth: producing {2 * size:,} events for {size:,} personas")
        await produce(topic, persona_events(2 * size))
        say(f"growth: projecting {size:,} personas")
        rates[size] = await project(settings, settings.redis_key_prefix, topic, 2 * size)
        used[size] = await footprint(settings.redis_key_prefix)
        say(
            f"growth: {size:,} personas: {rates[size]:,.0f} events/s, {used[size].total:.0f} B each"
        )
    few, many = sizes
    return [
        Figure(
            f"projection with {many:,} entities vs {few:,}",
            rates[many],
            rates[few],
            "events/s",
            rates[many] / rates[few],
            0.5,
            True,
            f"{2 * many:,} and {2 * few:,} events (each persona created, then renamed); one run"
            " each",
        ),
        Figure(
            f"Redis memory per entity with {many:,} entities",
            used[many].total,
            used[many].json,
            "bytes",
            used[many].ratio,
            1.5,
            False,
            f"{used[few].ratio:.2f}x with {few:,} ({used[few].total:.0f} B); {used[many].parts()}",
        ),
    ]


async def bootstrap(settings: Any, rounds: int) -> Figure:
    """Rounds of: raw consume of the data topic, then the service's load of it into an empty read
    model; the ratio is the median of the rounds'."""
    from personabff.projections import REGISTRY
    from personabff.runtime import jobs, snapshot
    from personabff.runtime.kafka import new_consumer
    from personabff.runtime.readmodel import ReadModel
    from personabff.runtime.redis import redis_client

    say("bootstrap: exporting the projected read model as a snapshot")
    await jobs.export.export_snapshot(settings, settings.data_topic)
    # Every record of the export: entities, lookup entries, histories, positions and its end.
    records = await topic_records(settings.data_topic)
    raw: list[float] = []
    load: list[float] = []
    for n in range(rounds):
        say(f"bootstrap: round {n + 1} of {rounds}: raw consume, then loading {records:,} records")
        raw.append(await raw_consume(settings.data_topic, records))
        redis = redis_client(REDIS)  # the service's client
        target = ReadModel(redis, f"{settings.redis_key_prefix}.copy{n}")
        await target.versions.initialise()
        consumer = new_consumer(settings, group_id=None)  # the service's bootstrap consumer
        await consumer.start()
        await asyncio.sleep(0)
        try:
            start = time.perf_counter()
            await snapshot.load(
                target, consumer, settings, REGISTRY.collections, settings.data_topic
            )
            load.append(records / (time.perf_counter() - start))
        finally:
            await consumer.stop()
            await redis.aclose()
    return Figure(
        "bootstrap vs raw consume",
        statistics.median(load),
        statistics.median(raw),
        "records/s",
        median_ratio(load, raw),
        0.5,
        True,
        f"{records:,} records; median of {rounds} rounds",
    )


async def saga(run: str, count: int) -> list[Figure]:
    from asgi_lifespan import LifespanManager
    from personabff.app import create_app
    from personabff.runtime import CommandHandler, Handlers, Outcome
    from pydantic import BaseModel

    class Ping(BaseModel):
        n: int

    async def pong(command: Any, context: Any) -> Outcome:
        return Outcome(result={"n": command.data.n})

    settings = settings_for(run, upstream_topics=[])
    await create_service_topics(settings)
    app = create_app(settings, handlers=Handlers([CommandHandler("ping.v1", Ping, pong)]))
    say(f"saga: {count} commands to the service's own .commands topic, each awaited")
    latencies = []
    async with LifespanManager(app, startup_timeout=60):
        bus = app.state.service.commands
        for n in range(count + 20):
            start = time.perf_counter()
            sent = await bus.send(settings.commands_topic, "ping.v1", f"k{n}", Ping(n=n))
            status = await bus.wait(sent.command_id, 10)
            assert status is not None and status.status == "succeeded", status
            if n >= 20:  # the first ones warm up connections and group assignments
                latencies.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(latencies, n=100)
    return [
        Figure("saga round trip p50", cuts[49], None, "ms", cuts[49], 50, False, "loopback"),
        Figure("saga round trip p99", cuts[98], None, "ms", cuts[98], 50, False, "loopback"),
    ]


MINIMAL_APP = """
import os
from fastapi import FastAPI, Response
from redis.asyncio import Redis

app = FastAPI()
redis = Redis.from_url(os.environ["REDIS_URL"])
KEY = os.environ["BENCH_KEY"]


@app.get("/personas/{persona_id}")
async def persona(persona_id: str) -> Response:
    return Response(await redis.get(KEY + persona_id), media_type="application/json")
"""


def wrk(url: str, seconds: int) -> tuple[float, float]:
    """Requests/s and p99 in ms of `url`, 1 thread, 16 connections."""
    output = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99


def query(project: Path, settings: Any, seconds: int, rounds: int) -> list[Figure]:
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk is needed for the query benchmark: apt-get install wrk")
    env = {
        **os.environ,
        "PYTHONPATH": str(project / "src"),
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA,
        "REDIS_URL": REDIS,
        "TOPIC_PREFIX": settings.topic_prefix,
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "UPSTREAM_TOPICS": ",".join(settings.upstream_topics),
        "UPSTREAM_PREFIXES": ",".join(f"{k}={v}" for k, v in settings.upstream_prefixes.items()),
        "LOG_LEVEL": "WARNING",
        "BENCH_KEY": f"{settings.redis_key_prefix}:bench:",
        "AUTH_ISSUER": settings.auth_issuer,
        "AUTH_JWKS_FILE": str(settings.auth_jwks_file),
    }
    (project / "minimal_app.py").write_text(MINIMAL_APP)
    # The baseline GETs a plain key holding the same JSON the service serves.
    with SyncRedis.from_url(REDIS) as redis:
        persona = asyncio.run(_persona(settings, "p42"))
        redis.set(f"{env['BENCH_KEY']}p42", persona)
    service_port, minimal_port = free_port(), free_port()
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "personabff", "serve", "--port", str(service_port)],
            env=env,
            cwd=project,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "minimal_app:app",
                "--port",
                str(minimal_port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=project,
        ),
    ]
    try:
        for port in (service_port, minimal_port):
            wait_http(f"http://127.0.0.1:{port}/personas/p42")
        ports = {"service": service_port, "minimal": minimal_port}
        results: dict[str, list[tuple[float, float]]] = {"service": [], "minimal": []}
        # Rounds in pairs, each pair's order swapped from the last: both sides of a pair see the
        # same few seconds of a shared machine, and neither always goes first.
        for n in range(rounds):
            say(f"query: round {n + 1} of {rounds}, {seconds}s each")
            for side in ("service", "minimal") if n % 2 == 0 else ("minimal", "service"):
                results[side].append(wrk(f"http://127.0.0.1:{ports[side]}/personas/p42", seconds))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    service_rps = statistics.median(r for r, _ in results["service"])
    minimal_rps = statistics.median(r for r, _ in results["minimal"])
    service_p99 = statistics.median(p for _, p in results["service"])
    minimal_p99 = statistics.median(p for _, p in results["minimal"])
    # Ratios are medians of the pairs' ratios: a slow phase of the machine slows both of a pair.
    pairs = list(zip(results["service"], results["minimal"], strict=True))
    rps_ratio = statistics.median(s / m for (s, _), (m, _) in pairs)
    p99_ratio = statistics.median(s / m for (_, s), (_, m) in pairs)
    note = f"wrk -c16; ratio: median of {rounds} paired rounds"
    return [
        Figure(
            "query throughput",
            service_rps,
            minimal_rps,
            "req/s",
            rps_ratio,
            0.9,
            True,
            note,
        ),
        Figure(
            "query p99",
            service_p99,
            minimal_p99,
            "ms",
            p99_ratio,
            1.5,
            False,
            note,
        ),
    ]


async def _persona(settings: Any, persona_id: str) -> bytes:
    from personabff.runtime.readmodel import ReadModel

    async with Redis.from_url(REDIS) as redis:
        readmodel = ReadModel(redis, settings.redis_key_prefix)
        await readmodel.versions.refresh()  # the live version: the read model may have grown
        raw = await readmodel.queries.get("personas", persona_id)
    assert raw is not None, persona_id
    return raw


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, within: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: {url} never answered 200")


# ------------------------------------------------------------------------------------ reporting
def report(figures: list[Figure], mode: str) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} in {mode} mode on {os.cpu_count()} cores, real Kafka and Redis on loopback.",
        "",
        "| figure | service | baseline | ratio | target | met | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        baseline = "-" if f.baseline is None else f"{f.baseline:,.1f} {f.unit}"
        ratio = f"{f.ratio:.2f}" if f.baseline is not None else f"{f.ratio:.1f} {f.unit}"
        if f.target is None:
            target = met = "-"
        else:
            target = ("≥ " if f.higher_is_better else "≤ ") + (
                f"{f.target:g}x" if f.baseline is not None else f"{f.target:g} {f.unit}"
            )
            met = "yes" if f.met else "**no**"
        lines.append(
            f"| {f.name} | {f.service:,.1f} {f.unit} | {baseline} | {ratio} | {target} | {met} | {f.note} |"
        )
    return "\n".join(lines)


def stage_table(spent: dict[str, float]) -> str:
    total = sum(spent.values())
    title = (
        f"Where one projector's CPU goes in memory: {total:.1f} us an event in all (`stages`:"
        f" the best of {STAGE_PASSES} passes over the projection figures' events, without I/O)."
    )
    lines = [
        title,
        "",
        "| stage | us an event | share |",
        "|---|---|---|",
    ]
    lines += [f"| {STAGES[stage]} | {us:.2f} | {us / total:.0%} |" for stage, us in spent.items()]
    return "\n".join(lines)


def plot(figures: list[Figure]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    targeted = [(f, f.target) for f in figures if f.target is not None]
    names = [f.name for f, _ in targeted]
    # How far each figure is from its target, as a multiple of it: > 1 means met.
    scores = [
        f.ratio / target if f.higher_is_better else target / f.ratio for f, target in targeted
    ]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(targeted) + 1.2))
    colours = ["#2e7d32" if s >= 1 else "#c62828" for s in scores]
    ax.barh(names, scores, color=colours)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ticks = [
        t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if min(scores) / 2 <= t <= max(scores) * 2
    ]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(min(scores) / 2, max(scores) * 2)
    ax.set_xlabel("share of target reached (log scale; ≥ 1 is met)")
    ax.invert_yaxis()
    for y, score in enumerate(scores):
        ax.text(score, y, f" {score:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def write_page(table: str) -> None:
    text = PAGE.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    PAGE.write_text(f"{before}{start}\n{table}\n\n![Benchmarks](img/benchmarks.png)\n{end}{after}")


async def measure(project: Path, quick: bool) -> tuple[list[Figure], dict[str, float]]:
    from personabff.runtime.service import tune_gc

    tune_gc()  # as `serve` does at start: what the service measured here runs with
    run = f"bench{uuid.uuid4().hex[:8]}"
    count = 100_000 if quick else 200_000
    try:
        figures, settings = await projection(run, project / "src", count, rounds=3)
        figures.append(await memory(settings))
        figures.append(await bootstrap(settings, rounds=3))
        figures += await saga(f"{run}saga", 300 if quick else 1000)
        figures += await asyncio.to_thread(query, project, settings, 3 if quick else 10, 7)
        figures += await growth(run, (10_000, 100_000) if quick else (10_000, 1_000_000))
        say(f"stages: the projector's in-memory stages over {count:,} events")
        return figures, stages(settings, count)
    finally:
        async with Redis.from_url(REDIS) as redis:
            keys = [key async for key in redis.scan_iter(match=f"*{run}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await redis.unlink(*keys[start : start + 1000])
        await delete_topics(run)


async def delete_topics(run: str) -> None:
    """The topics this run created (the service's, the saga's and Quix Streams' changelogs all
    carry its name), and the peers' consumer groups."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        topics = [topic for topic in await admin.list_topics() if run in topic]
        if topics:
            await admin.delete_topics(topics)
        groups = [group for group, *_ in await admin.list_consumer_groups() if run in group]
    finally:
        await admin.close()
    if groups:  # aiokafka's admin client deletes no groups; confluent-kafka's (Quix') does
        command = [PEERS_PYTHON, str(PEERS_SCRIPT), "delete-groups", *groups]
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": KAFKA}
        await asyncio.to_thread(subprocess.run, command, env=env, check=True, timeout=120)
    say(f"deleted {len(topics)} topics and {len(groups)} consumer groups of {run}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs: a few minutes")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    with generated_service() as project:
        importlib.invalidate_caches()
        figures, spent = asyncio.run(measure(project, args.quick))
    table = report(figures, mode) + "\n\n" + stage_table(spent)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "mode": mode,
                "figures": [asdict(f) | {"met": f.met} for f in figures],
                "stages_us_per_event": spent,
            },
            indent=2,
        )
    )
    plot(figures)
    write_page(table)
    say(f"wrote {RESULTS.relative_to(ROOT)}, {PLOT.relative_to(ROOT)} and {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
