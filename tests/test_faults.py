"""The fault suite: a generated service through broker and Redis crashes, bad input and load.

Each test runs the service (`python -m personabff serve`) against a broker and a Redis of this
module's own (tests/infra.py), which it kills and restarts; the shared ones are never touched. The
suite runs on its own, one test at a time (`make faults`, part of `make test`), and writes what it
measured to docs/reliability.md.
"""

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis import Redis as SyncRedis

from . import personas
from .conftest import Reliability
from .helpers import assert_ok, render, run
from .infra import OwnKafka, OwnRedis
from .served import Served, until

pytestmark = pytest.mark.faults

Env = dict[str, str]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("faults") / "personabff")


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    broker = OwnKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.clean()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def env(project: Path, kafka: OwnKafka, redis_server: OwnRedis) -> Env:
    """A service of this test's own: topics (upstream with 3 partitions) and Redis keys."""
    kafka.start()  # a no-op unless an earlier test left it down
    run_id = f"faults{uuid.uuid4().hex[:8]}"
    upstream = f"{run_id}.arcadia.identity.personaservice"
    environment = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "REDIS_URL": redis_server.url,
        "TOPIC_PREFIX": f"{run_id}.arcadia.identity.personabff",
        "REDIS_KEY_PREFIX": run_id,
        "UPSTREAM_PREFIXES": f"personaservice={upstream}",
        "UPSTREAM_TOPICS": f"{upstream}.events",
        "LOG_LEVEL": "INFO",
    }
    for kind in ("events", "commands"):
        asyncio.run(personas.create_topic(kafka.bootstrap, f"{upstream}.{kind}"))
    assert_ok(run(project, "personabff", "create-topics", env=environment))
    return environment


def _serve(project: Path, env: Env, **overrides: str) -> Served:
    return Served(project, "personabff", {**env, **overrides}, wait_ready=False)


def _converges(server: Served, expected: dict[str, dict[str, Any]], within: float = 180) -> float:
    """Seconds until the read model equals `expected` (a 503 while Redis comes back is not yet)."""

    def equal() -> bool:
        try:
            return personas.read_all(server) == expected
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 503:
                raise
            return False

    start = time.monotonic()
    until(equal, within=within)
    return time.monotonic() - start


def _projecting(
    project: Path, env: Env, kafka: OwnKafka, seed: int
) -> tuple[list[personas.Event], Served]:
    """30,000 events published, and a service (in small batches) part-way through them."""
    history = personas.events(seed=seed, count=30_000)
    personas.publish(kafka.bootstrap, env["UPSTREAM_TOPICS"], history)
    server = _serve(project, env, CONSUMER_MAX_BATCH="100")
    until(lambda: bool(server.get("/personas", {"limit": "1"}).json()["items"]))
    return history, server


def _lag(server: Served) -> int:
    return sum(n or 0 for n in server.get("/health/ready").json()["lag"].values())


def test_broker_killed_while_projecting(
    project: Path, env: Env, kafka: OwnKafka, reliability: Reliability
) -> None:
    history, server = _projecting(project, env, kafka, seed=1)
    try:
        behind = _lag(server)
        kafka.kill()
        statuses = Counter(server.get(f"/personas/p{n % 500}").status_code for n in range(300))
        kafka.start()
        converged = _converges(server, personas.fold(history))
    finally:
        server.stop()
    answered = statuses[200] + statuses[404]
    assert answered == 300, statuses
    reliability.record(
        "Kafka broker SIGKILLed while projecting, then restarted",
        f"killed {behind:,} of {len(history):,} events behind; read model equal to the fold"
        f" {converged:.0f} s after the restart; with the broker down {answered} of 300 queries"
        " answered from Redis",
    )


def test_redis_killed_while_projecting(
    project: Path, env: Env, kafka: OwnKafka, redis_server: OwnRedis, reliability: Reliability
) -> None:
    history, server = _projecting(project, env, kafka, seed=2)
    try:
        redis_server.kill()
        down = server.get("/personas/p1")
        live, ready = server.get("/health/live"), server.get("/health/ready")
        time.sleep(3)
        redis_server.start()  # with its append-only file: the last second may be lost
        converged = _converges(server, personas.fold(history))
    finally:
        server.stop()
    assert down.status_code == 503
    assert down.json()["detail"].startswith("read model unavailable")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"].startswith("unreachable")
    reliability.record(
        "Redis SIGKILLed while projecting, restarted 3 s later from its append-only file",
        f"queries meanwhile: {down.status_code} `{down.json()['detail'][:40]}...`, liveness"
        f" {live.status_code}, readiness {ready.status_code}; read model equal to the fold"
        f" {converged:.0f} s after the restart",
    )


def test_redis_restarted_empty_is_bootstrapped_again(
    project: Path, env: Env, kafka: OwnKafka, redis_server: OwnRedis, reliability: Reliability
) -> None:
    first, second = personas.events(3, 20_000, 5000), personas.events(4, 5000, 5000)
    personas.publish(kafka.bootstrap, env["UPSTREAM_TOPICS"], first)
    server = _serve(project, env, READY_MAX_LAG="0")
    try:
        _converges(server, personas.fold(first))
        assert_ok(run(project, "personabff", "snapshot", "export", env=env))
        personas.publish(kafka.bootstrap, env["UPSTREAM_TOPICS"], second)
        expected = personas.fold(first + second)
        _converges(server, expected)

        redis_server.kill()
        redis_server.wipe()
        redis_server.start(persistent=False)
        start = time.monotonic()
        readiness = []
        while time.monotonic() - start < 120:
            readiness.append(server.get("/health/ready").status_code)
            if readiness[-1] == 200 and 503 in readiness:
                break
            time.sleep(0.05)
        back = time.monotonic() - start
        converged = _converges(server, expected, within=60)
        metrics = server.get("/metrics").text
    finally:
        server.stop()
    assert 503 in readiness and readiness[-1] == 200, Counter(readiness)
    assert "bff_read_model_recoveries_total 1.0" in metrics
    assert "read model lost" in server.log.read_text()
    reliability.record(
        "Redis restarted with nothing persisted (every key lost)",
        f"noticed, not ready, bootstrapped from the snapshot ({len(personas.fold(first)):,}"
        f" personas) and {len(second):,} later events; ready again after {back:.1f} s, equal to"
        f" the fold {back + converged:.1f} s after the restart",
    )


async def _querying(
    http: httpx.AsyncClient, n: int, outcomes: Counter[int | str], done: asyncio.Event
) -> None:
    """Query personas one after another until `done`, counting each answer (or error)."""
    while not done.is_set():
        try:
            response = await http.get(f"/personas/p{(n * 7919 + len(outcomes)) % 5000}")
            outcomes[response.status_code] += 1
        except httpx.HTTPError as exc:
            outcomes[type(exc).__name__] += 1


def test_queries_while_projecting_at_full_speed(
    project: Path, env: Env, kafka: OwnKafka, reliability: Reliability
) -> None:
    history = personas.events(seed=5, count=60_000, personas=5000)
    personas.publish(kafka.bootstrap, env["UPSTREAM_TOPICS"], history)
    expected = personas.fold(history)
    server = _serve(project, env)

    async def load() -> tuple[Counter[int | str], float]:
        outcomes: Counter[int | str] = Counter()
        done = asyncio.Event()

        async def client(n: int) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                await _querying(http, n, outcomes, done)

        start = time.monotonic()
        clients = [asyncio.create_task(client(n)) for n in range(8)]
        await asyncio.to_thread(_converges, server, expected)
        done.set()
        await asyncio.gather(*clients)
        return outcomes, time.monotonic() - start

    try:
        outcomes, seconds = asyncio.run(load())
    finally:
        server.stop()
    errors = {outcome: n for outcome, n in outcomes.items() if outcome not in (200, 404)}
    assert not errors, errors
    queries = sum(outcomes.values())
    reliability.record(
        "Queries from 8 clients while projecting at full speed",
        f"{queries:,} queries in {seconds:.0f} s ({queries / seconds:,.0f}/s) while projecting"
        f" {len(history):,} events: {outcomes[200]:,} found, {outcomes[404]:,} not yet, 0 errors",
    )


def test_redis_out_of_memory_is_reported_as_a_stall_and_recovers_without_loss(
    project: Path, env: Env, kafka: OwnKafka, redis_server: OwnRedis, reliability: Reliability
) -> None:
    history = personas.events(seed=6, count=20_000, personas=5000)
    server = _serve(project, env, STALL_AFTER_S="2", CONSUMER_MAX_BATCH="100")
    redis = SyncRedis.from_url(redis_server.url)
    try:
        until(lambda: server.get("/health/ready").status_code == 200)
        redis.config_set("maxmemory-policy", "noeviction")
        # Below what is used: every write is refused, reads still answered.
        redis.config_set("maxmemory", int(redis.info("memory")["used_memory"]) // 2)
        personas.publish(kafka.bootstrap, env["UPSTREAM_TOPICS"], history)

        def stalled() -> bool:
            return bool(server.get("/health/ready").json()["stale"]["stalled"])

        until(stalled, within=120)
        time.sleep(3)  # a while stalled: still reported once
        ready = server.get("/health/ready")
        age = int(ready.headers["read-model-age"])
        metrics = server.get("/metrics").text
        redis.config_set("maxmemory", 0)
        converged = _converges(server, personas.fold(history))
        moving = server.get("/health/ready").json()["stale"]
    finally:
        server.stop()
        redis.close()
    said = server.log.read_text()
    assert ready.status_code == 200  # by default a stale read model keeps being served
    assert "OutOfMemoryError" in ready.json()["stale"]["reason"]
    assert ready.json()["stale"]["lag"] > 0
    assert "bff_projector_stalled 1.0" in metrics
    assert said.count("projector stalled") == 1, said[-3000:]
    assert said.count("projector moving again") == 1
    assert said.count("batch failed, retrying") == 1  # the first failure of the run, not each
    assert not moving["stalled"]
    reliability.record(
        "Redis out of memory (noeviction) while 20,000 events arrive",
        f"reported once as a stall with the reason (`{ready.json()['stale']['reason'][:60]}...`),"
        f" readiness kept 200 by policy, Read-Model-Age {age} s; equal to the fold"
        f" {converged:.0f} s after memory was raised",
    )


def test_queries_under_load_wait_for_a_connection_instead_of_failing(
    project: Path, env: Env, kafka: OwnKafka, reliability: Reliability
) -> None:
    """128 connections against a pool of 16 while projecting: queued, never refused, and
    readiness does not flap."""
    history = personas.events(seed=7, count=30_000, personas=5000)
    personas.publish(kafka.bootstrap, env["UPSTREAM_TOPICS"], history)
    server = _serve(project, env, REDIS_HTTP_CONNECTIONS="16")
    until(lambda: server.get("/health/ready").status_code == 200, within=180)

    async def load() -> tuple[Counter[int | str], Counter[int], float]:
        outcomes: Counter[int | str] = Counter()
        readiness: Counter[int] = Counter()
        done = asyncio.Event()
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)

        async def probe(http: httpx.AsyncClient) -> None:
            while not done.is_set():
                readiness[(await http.get("/health/ready")).status_code] += 1
                await asyncio.sleep(0.2)

        start = time.monotonic()
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
            tasks = [asyncio.create_task(_querying(http, n, outcomes, done)) for n in range(128)]
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as prober:
                tasks.append(asyncio.create_task(probe(prober)))
                await asyncio.sleep(20)
                done.set()
                await asyncio.gather(*tasks)
        return outcomes, readiness, time.monotonic() - start

    try:
        outcomes, readiness, seconds = asyncio.run(load())
    finally:
        server.stop()
    errors = {outcome: n for outcome, n in outcomes.items() if outcome not in (200, 404)}
    assert not errors, errors
    assert set(readiness) == {200}, readiness
    queries = sum(outcomes.values())
    reliability.record(
        "128 concurrent query connections against 16 Redis connections",
        f"{queries:,} queries in {seconds:.0f} s ({queries / seconds:,.0f}/s): 0 refused (each"
        f" waited for a connection); readiness 200 in all {readiness[200]} probes",
    )


def test_hostile_requests_get_a_4xx_with_a_reason_and_cost_no_memory(
    project: Path, env: Env, redis_server: OwnRedis, reliability: Reliability
) -> None:
    server = _serve(project, env)
    until(lambda: server.get("/health/ready").status_code == 200)
    big = b'{"name": "' + b"x" * (40 * 1024 * 1024) + b'"}'
    rename = f"{server.url}/personas/p1/rename"

    def rss_kib() -> int:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0])

    async def four_big_bodies() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as http:

            async def post() -> int:
                try:
                    headers = {"content-type": "application/json", **server.headers}
                    return (await http.post(rename, content=big, headers=headers)).status_code
                except httpx.HTTPError:  # the server may close before the whole body is sent
                    return 413

            return list(await asyncio.gather(*(post() for _ in range(4))))

    try:
        before = rss_kib()
        big_statuses = asyncio.run(four_big_bodies())
        grown = rss_kib() - before
        json_body = {"content-type": "application/json", **server.headers}
        answers = {
            "NaN": httpx.post(rename, content=b'{"name": NaN}', headers=json_body),
            "surrogate": httpx.post(rename, content=b'{"name": "\\ud800"}', headers=json_body),
            "1 MB invalid": httpx.post(
                rename, json={"name": ["x" * 1_000_000]}, headers=server.headers
            ),
            "no token": httpx.post(rename, json={"name": "x"}),
            "forged token": httpx.post(
                rename, json={"name": "x"}, headers={"authorization": "Bearer e30.e30.x"}
            ),
            "10 kB id": httpx.get(f"{server.url}/personas/{'p' * 10_000}"),
            "bad cursor": httpx.get(f"{server.url}/personas", params={"after": "000001:"}),
        }
        for method in ("BREW", "PROPFIND", "X-FOO"):
            httpx.request(method, f"{server.url}/personas/p1")
        metrics = server.get("/metrics").text
        redis_server.kill()
        start = time.monotonic()
        away = httpx.get(f"{server.url}/personas/p1", timeout=30)
        away_s = time.monotonic() - start
    finally:
        server.stop()
    assert big_statuses == [413] * 4
    statuses = {name: response.status_code for name, response in answers.items()}
    assert statuses == {
        "NaN": 422,
        "surrogate": 422,
        "1 MB invalid": 422,
        "10 kB id": 414,
        "bad cursor": 422,
        "no token": 401,
        "forged token": 401,
    }
    assert all(len(response.content) < 2000 for response in answers.values())
    assert "PROPFIND" not in metrics and 'method="other"' in metrics
    assert away.status_code == 503
    assert redis_server.url.split("//")[1].split("/")[0] not in away.text
    reliability.record(
        "Hostile HTTP requests",
        f"four concurrent 40 MB bodies refused with 413 (the process grew {grown / 1024:.0f} MB);"
        " NaN, an unpaired surrogate, a 1 MB invalid body and a bad cursor got 422, a 10 kB id"
        f" 414, every answer under 2 kB; odd methods folded into one metric label; with Redis"
        f" down a query answered 503 in {away_s:.1f} s without Redis' address",
    )


CE = {"specversion": "1.0", "id": "bad", "source": "/tests", "type": "persona.created.v1"}
GOOD = {"persona_id": "p", "name": "P", "email": "p@x.io"}
BINARY = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/tests")]


def _ce(**changes: Any) -> bytes:
    return orjson.dumps({**CE, "data": GOOD, **changes})


# (kind, value, headers, the error class its dead letter must name)
BAD_EVENTS: list[tuple[str, bytes | None, list[tuple[str, bytes]], str]] = [
    ("tombstone (no value)", None, [], "NotJsonError"),
    ("binary garbage", b"\x80\x81\xfe", [], "NotJsonError"),
    ("truncated JSON", b'{"specversion": "1.0", "id":', [], "NotJsonError"),
    ("JSON array", b"[1, 2]", [], "NotCloudEventError"),
    ("JSON string", b'"persona"', [], "NotCloudEventError"),
    ("JSON number", b"42", [], "NotCloudEventError"),
    ("JSON null", b"null", [], "NotCloudEventError"),
    ("no specversion", _ce(specversion=None), [], "NotCloudEventError"),
    ("specversion 0.3", _ce(specversion="0.3"), [], "NotCloudEventError"),
    ("empty id", _ce(id=""), [], "NotCloudEventError"),
    ("no source", orjson.dumps({k: v for k, v in CE.items() if k != "source"}), [], "NotCloudEventError"),
    ("numeric type", _ce(type=7), [], "NotCloudEventError"),
    ("time not a string", _ce(time=1700000000), [], "NotCloudEventError"),
    ("binary mode without ce_type", orjson.dumps(GOOD), BINARY, "NotCloudEventError"),
    ("binary mode, ce_ header not UTF-8", orjson.dumps(GOOD), [*BINARY, ("ce_type", b"\xff")], "NotCloudEventError"),
    ("binary mode, value not JSON", b"\x00\x01", [*BINARY, ("ce_type", b"persona.created.v1")], "NotJsonError"),
    ("unknown event type", _ce(type="invoice.paid.v1"), [], "UnknownEventTypeError"),
    ("unknown version", _ce(type="persona.created.v9"), [], "UnknownEventTypeError"),
    ("no data", orjson.dumps(CE), [], "InvalidDataError"),
    ("data not an object", _ce(data=[1, 2]), [], "InvalidDataError"),
    ("required field missing", _ce(data={"persona_id": "p", "name": "P"}), [], "InvalidDataError"),
    ("empty persona_id", _ce(data={**GOOD, "persona_id": ""}), [], "InvalidDataError"),
    ("field of the wrong type", _ce(data={**GOOD, "name": {"first": "P"}}), [], "InvalidDataError"),
    ("v1 rename whose data cannot be upcast", _ce(type="persona.renamed.v1", data="Ann"), [], "InvalidDataError"),
]  # fmt: skip


def test_bad_events_are_dead_lettered_and_the_partition_moves_on(
    project: Path, env: Env, kafka: OwnKafka, reliability: Reliability
) -> None:
    records: list[personas.Record] = []
    for n, (_, value, headers, _) in enumerate(BAD_EVENTS):
        good = {"persona_id": f"good{n}", "name": "G", "email": "g@x.io"}
        records += [
            ("k", value, headers),
            ("k", personas.cloud_event("persona.created.v1", good), []),
        ]
    personas.publish_records(kafka.bootstrap, env["UPSTREAM_TOPICS"], records)
    server = _serve(project, env)
    try:
        expected = {f"good{n}" for n in range(len(BAD_EVENTS))}
        until(lambda: set(personas.read_all(server)) == expected)
    finally:
        server.stop()
    listed = run(project, "personabff", "dlq", "list", env=env)
    assert_ok(listed)
    letters = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [letter["reason"]["offset"] for letter in letters] == [
        str(2 * n) for n in range(len(BAD_EVENTS))
    ]
    for letter, (kind, _, _, error) in zip(letters, BAD_EVENTS, strict=True):
        assert letter["reason"]["error.class"] == error, kind
        assert letter["reason"]["error.message"], kind
    reliability.record(
        f"{len(BAD_EVENTS)} kinds of bad event, each followed by a good one on the same partition",
        f"all {len(letters)} dead-lettered with their reason, all {len(BAD_EVENTS)} good ones"
        " applied: " + "; ".join(f"{kind} → {error}" for kind, _, _, error in BAD_EVENTS),
    )


def test_renames_that_overtake_their_creates_wait_and_redeliveries_apply_once(
    project: Path, env: Env, kafka: OwnKafka, reliability: Reliability
) -> None:
    count, again = 300, 100
    topic = env["UPSTREAM_TOPICS"]

    def rename(n: int) -> bytes:
        data = {"persona_id": f"o{n}", "display_name": f"R{n}"}
        envelope = {"specversion": "1.0", "id": f"rename-{n}", "source": "/tests/personaservice"}
        return orjson.dumps({**envelope, "type": "persona.renamed.v2", "data": data})

    # Keyed apart from their personas: on other partitions, read before or after the creates.
    renames: list[personas.Record] = [(f"rename-{n}", rename(n), []) for n in range(count)]
    creates: list[personas.Record] = [
        (
            f"o{n}",
            personas.cloud_event(
                "persona.created.v1", {"persona_id": f"o{n}", "name": "O", "email": f"{n}@x.io"}
            ),
            [],
        )
        for n in range(count)
    ]
    redelivered: list[personas.Record] = [(f"o{n}", rename(n), []) for n in range(again)]
    personas.publish_records(kafka.bootstrap, topic, renames + creates + redelivered)
    expected = {
        f"o{n}": {
            "persona_id": f"o{n}",
            "name": f"R{n}",
            "email": f"{n}@x.io",
            "renames": 1,
            "pinned": False,
        }
        for n in range(count)
    }
    server = _serve(project, env)
    try:
        _converges(server, expected, within=120)
        until(lambda: _lag(server) == 0)  # the redeliveries read too
        metrics = server.get("/metrics").text
    finally:
        server.stop()
    parked = _metric_sum(metrics, "bff_events_parked_total")
    duplicates = _metric_sum(metrics, "bff_events_skipped_total", 'reason="duplicate"')
    conflicts = _metric_sum(metrics, "bff_entity_partition_conflicts_total")
    assert duplicates == again
    reliability.record(
        f"{count} renames published before their personas' creates, keyed apart (other"
        f" partitions), {again} of them delivered again",
        f"all {count} applied exactly once, after their create (the read model equals the"
        f" expected one): {parked:,.0f} parked until their persona existed, {duplicates:,.0f}"
        f" redeliveries skipped by their CloudEvent id, {conflicts:,.0f} events reported as"
        " reaching a persona from another partition than its last",
    )


def _metric_sum(metrics: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples in a /metrics text (those with `label`, if given)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_records_it_cannot_read_are_dead_lettered_by_a_running_service(
    project: Path, env: Env, kafka: OwnKafka, reliability: Reliability
) -> None:
    topic = env["UPSTREAM_TOPICS"]
    big = b"x" * (1_048_576 - 200)  # with the dlq.* headers, over the producer's max_request_size
    bad: list[tuple[str, personas.RawRecord, str]] = [
        ("a binary-mode ce_ header with a null value", (b"k", orjson.dumps(GOOD), [(b"ce_specversion", b"1.0"), (b"ce_id", b"1"), (b"ce_source", b"/t"), (b"ce_type", None)]), "NotCloudEventError"),
        ("a header name that is not UTF-8", (b"k", _ce(), [(b"\xff\xfe", b"v")]), "UnreadableRecordError"),
        ("a record of about 1 MB that is not JSON", (b"k", big, [(b"h", b"v")]), "NotJsonError"),
    ]  # fmt: skip
    batches: list[list[personas.RawRecord]] = []
    for n, (_, record, _) in enumerate(bad):
        good = {"persona_id": f"good{n}", "name": "G", "email": "g@x.io"}
        batches += [[record], [(b"k", personas.cloud_event("persona.created.v1", good), [])]]
    personas.publish_raw(kafka.bootstrap, topic, 0, batches)
    other = {"persona_id": "other", "name": "O", "email": "o@x.io"}
    personas.publish_raw(
        kafka.bootstrap, topic, 1, [[(b"o", personas.cloud_event("persona.created.v1", other), [])]]
    )
    server = _serve(project, env)
    try:
        expected = {*(f"good{n}" for n in range(len(bad))), "other"}
        until(lambda: set(personas.read_all(server)) == expected)
        ready = server.get("/health/ready").status_code
    finally:
        server.stop()
    listed = run(project, "personabff", "dlq", "list", env=env)
    assert_ok(listed)
    letters = [orjson.loads(line) for line in listed.stdout.splitlines()]
    reasons = [letter["reason"] for letter in letters]
    assert [(r["partition"], r["offset"], r["error.class"]) for r in reasons] == [
        ("0", str(2 * n), error) for n, (_, _, error) in enumerate(bad)
    ]
    unreadable, large = letters[1], letters[2]
    assert (unreadable["key"], unreadable["value"]) == (None, "")  # position and reason only
    assert "UnicodeDecodeError" in unreadable["reason"]["error.message"]
    assert large["reason"]["original.sha256"] == hashlib.sha256(big).hexdigest()
    assert len(large["value"]) < len(big)
    assert ready == 200
    reliability.record(
        "Records the client or the envelope cannot read, each followed by a good one",
        "all dead-lettered with their reason and the partition moved on: "
        + "; ".join(f"{kind} → {error}" for kind, _, error in bad)
        + f" (its letter keeps the first {len(large['value']):,} of {len(big):,} bytes, with the"
        " original size and SHA-256 in headers)",
    )


def test_bad_settings_stop_start_up_with_a_clear_error(
    project: Path, env: Env, tmp_path: Path, reliability: Reliability
) -> None:
    guarded = OwnRedis(tmp_path / "guarded")
    guarded.start(password="s3cret")
    try:
        messages = _start_up_errors(project, env, guarded)
    finally:
        guarded.kill()
    reliability.record(
        "Start-up with bad settings (exit status 2, no traceback, secrets hidden)",
        "; ".join(f"{case}: `{message[:110]}`" for case, message in messages.items()),
    )


def _start_up_errors(project: Path, env: Env, guarded: OwnRedis) -> dict[str, str]:
    fresh = f"faults{uuid.uuid4().hex[:8]}.arcadia.identity.personabff"
    cases = {
        "unreachable Kafka": {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KAFKA_STARTUP_TIMEOUT_S": "2"},
        "malformed KAFKA_BOOTSTRAP_SERVERS": {"KAFKA_BOOTSTRAP_SERVERS": "kafka"},
        "malformed REDIS_URL": {"REDIS_URL": "localhost:6379"},
        "unreachable Redis": {"REDIS_URL": "redis://127.0.0.1:1/0"},
        "wrong Redis password": {"REDIS_URL": guarded.url.replace("//", "//:hunter2@")},
        "missing topics": {"TOPIC_PREFIX": fresh},
        "invalid topic name": {"TOPIC_PREFIX": "not a topic"},
    }  # fmt: skip
    messages = {}
    for case, overrides in cases.items():
        result = run(project, "personabff", "serve", env={**env, **overrides}, timeout=120)
        assert result.returncode == 2, (case, result.stderr)
        assert "Traceback" not in result.stderr, case
        assert "hunter2" not in result.stderr, case
        # The message, from `error:` on (log lines of the attempts may come before it).
        message = result.stderr[result.stderr.index("error:") :].strip()
        assert len(message.splitlines()) <= 3, (case, message)
        messages[case] = message.replace("\n", " ")
    for case, setting in [
        ("unreachable Kafka", "KAFKA_BOOTSTRAP_SERVERS"),
        ("malformed KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        ("malformed REDIS_URL", "REDIS_URL"),
        ("unreachable Redis", "REDIS_URL"),
        ("wrong Redis password", "REDIS_URL"),
        ("missing topics", "create-topics"),
        ("invalid topic name", "TOPIC_PREFIX"),
    ]:
        assert setting in messages[case], (case, messages[case])
    return messages
