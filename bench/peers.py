"""The peers the benchmark measures the service's projector against (bench/run.py runs this in a
venv of its own, which `make bench` makes: their pins, such as Quix Streams' cap on pydantic,
must not reach the generated service's environment).

    python bench/peers.py faststream|quix TOPIC COUNT GROUP PREFIX
    python bench/peers.py delete-groups GROUP...

Each peer consumes TOPIC from its earliest offset in consumer group GROUP, folds the persona
events into the same entity JSON as the service's `personas` projection, writes it to Redis under
PREFIX + persona id, and prints `[first, last, events]` as JSON: when it saw its first record,
when it last wrote (time.time()), and how many events it saw. Neither validates a contract,
commits its positions with the state it writes, fences a stale instance, keeps lookups, or parks
or de-duplicates events.
"""

import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

import orjson
from redis.asyncio import Redis

KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
REDIS = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
CREATED, RENAMED = "persona.created.v1", "persona.renamed.v2"


def created_persona(data: dict[str, Any]) -> dict[str, Any]:
    """The entity the service's `created` projection makes, as its model encodes it."""
    return {
        "persona_id": data["persona_id"],
        "name": data["name"],
        "email": data["email"],
        "renames": 0,
        "pinned": False,
    }


def renamed_persona(persona: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The entity the service's `renamed` projection makes of `persona`."""
    return {**persona, "name": data["display_name"], "renames": persona["renames"] + 1}


def faststream(topic: str, count: int, group: str, prefix: str) -> tuple[float, float, int]:
    """A FastStream subscriber receiving batches: each batch's personas folded (reading the
    stored ones that a rename needs with one MGET) and written with one MSET."""
    from faststream.kafka import KafkaBroker

    async def main() -> tuple[float, float, int]:
        broker = KafkaBroker(KAFKA, logger=None)  # no line per batch in the bench's output
        redis = Redis.from_url(REDIS)
        finished = asyncio.Event()
        seen, first, last = 0, 0.0, 0.0

        @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest", batch=True)
        async def on_events(events: list[dict[str, Any]]) -> None:
            nonlocal seen, first, last
            first = first or time.time()
            wanted = list({e["data"]["persona_id"] for e in events if e["type"] == RENAMED})
            stored = await redis.mget([prefix + key for key in wanted]) if wanted else []
            known = {key: orjson.loads(raw) for key, raw in zip(wanted, stored) if raw}
            changed: dict[str, dict[str, Any]] = {}
            for event in events:
                data = event["data"]
                key = data["persona_id"]
                if event["type"] == CREATED:
                    changed[key] = created_persona(data)
                elif event["type"] == RENAMED:
                    persona = changed.get(key) or known.get(key)
                    if persona is not None:  # a rename before its create is dropped
                        changed[key] = renamed_persona(persona, data)
            if changed:
                await redis.mset({prefix + k: orjson.dumps(p) for k, p in changed.items()})
                last = time.time()
            seen += len(events)
            if seen >= count:
                finished.set()

        async with broker:
            await broker.start()
            await asyncio.wait_for(finished.wait(), timeout=600)
        await redis.aclose()
        return first, last, seen

    return asyncio.run(main())


def quix(topic: str, count: int, group: str, prefix: str) -> tuple[float, float, int]:
    """A Quix Streams Application: a stateful apply folds each persona in its state store
    (RocksDB, with its changelog topic, the defaults), and its Redis sink writes the results."""
    import warnings
    from urllib.parse import urlparse

    with warnings.catch_warnings(record=True):  # not authlib's deprecation of httpx, at import
        from quixstreams import Application
        from quixstreams.sinks.community.redis import RedisSink

    seen, first, last = 0, 0.0, 0.0

    class TimedRedisSink(RedisSink):
        def write(self, batch: Any) -> None:
            nonlocal last
            super().write(batch)
            last = time.time()

    def fold(event: dict[str, Any], state: Any) -> dict[str, Any] | None:
        nonlocal seen, first
        first = first or time.time()
        seen += 1
        data = event["data"]
        if event["type"] == CREATED:
            persona = created_persona(data)
        elif event["type"] == RENAMED and (stored := state.get("persona")) is not None:
            persona = renamed_persona(stored, data)
        else:
            return None  # a rename before its create is dropped
        state.set("persona", persona)
        return persona

    url = urlparse(REDIS)
    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(
            broker_address=KAFKA,
            consumer_group=group,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
        )
        sdf = app.dataframe(app.topic(topic, value_deserializer="json"))
        sdf = sdf.apply(fold, stateful=True).filter(lambda persona: persona is not None)
        sdf.sink(
            TimedRedisSink(
                host=url.hostname or "localhost",
                port=url.port or 6379,
                db=int(url.path.lstrip("/") or 0),
                key_serializer=lambda key, value: prefix + key.decode(),
                value_serializer=orjson.dumps,
            )
        )
        # Stops once it has put out `count` personas (one per event); or, should any be
        # dropped, 30 s after its last record, and the check below finds what is missing.
        app.run(count=count, timeout=30, collect=False)
    return first, last, seen


def delete_groups(groups: list[str]) -> None:
    """aiokafka's admin client deletes no consumer groups; confluent-kafka's (Quix') does."""
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": KAFKA})
    for future in client.delete_consumer_groups(groups).values():
        future.result(30)


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "delete-groups":
        delete_groups(args)
        return
    topic, count, group, prefix = args
    peer = {"faststream": faststream, "quix": quix}[command]
    print(json.dumps(peer(topic, int(count), group, prefix)))


if __name__ == "__main__":
    main()
