"""Persona Fact Events for a generated service's example projection, and their independent fold.

Renames count (`renames`), so an event applied twice shows in the read model, as does one lost.
"""

import asyncio
import random
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c, encode_varint

from .helpers import render
from .served import Served

Event = tuple[str, str, dict[str, Any]]  # (key, type, data)


def events(seed: int, count: int, personas: int = 500) -> list[Event]:
    """Creations, renames (v1, upcast, and v2) and deletions of `personas` personas."""
    rng = random.Random(seed)
    out: list[Event] = []
    for n in range(count):
        persona_id = f"p{rng.randrange(personas)}"
        roll = rng.random()
        if roll < 0.15:
            data = {"persona_id": persona_id, "name": f"n{n}", "email": f"{persona_id}.{n}@x.io"}
            out.append((persona_id, "persona.created.v1", data))
        elif roll < 0.55:
            out.append(
                (persona_id, "persona.renamed.v1", {"persona_id": persona_id, "name": f"r{n}"})
            )
        elif roll < 0.95:
            data = {"persona_id": persona_id, "display_name": f"r{n}"}
            out.append((persona_id, "persona.renamed.v2", data))
        else:
            out.append((persona_id, "persona.deleted.v1", {"persona_id": persona_id}))
    return out


def fold(history: list[Event]) -> dict[str, dict[str, Any]]:
    """What the read model must hold after `history`, computed without the service. A rename of
    a persona that does not exist waits (the example parks it) until one is created."""
    personas: dict[str, dict[str, Any]] = {}
    waiting: dict[str, list[str]] = {}  # renames parked, in order
    for persona_id, event_type, data in history:
        if event_type == "persona.created.v1":
            personas[persona_id] = {**data, "renames": 0, "pinned": False}
            for name in waiting.pop(persona_id, []):
                _rename(personas, persona_id, name)
        elif event_type.startswith("persona.renamed."):
            name = data.get("display_name", data.get("name"))
            if persona_id in personas:
                _rename(personas, persona_id, name)
            else:
                waiting.setdefault(persona_id, []).append(name)
        elif event_type == "persona.deleted.v1":
            personas.pop(persona_id, None)
    return personas


def _rename(personas: dict[str, dict[str, Any]], persona_id: str, name: str) -> None:
    persona = personas[persona_id]
    personas[persona_id] = {**persona, "name": name, "renames": persona["renames"] + 1}


def cloud_event(event_type: str, data: Any) -> bytes:
    envelope = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "/tests/personaservice"}
    return orjson.dumps({**envelope, "type": event_type, "data": data})


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()


Record = tuple[str, bytes | None, list[tuple[str, bytes]]]  # (key, value, headers)


def publish_records(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Publish in order (per partition, the producer keeps the order it was given)."""

    async def publishing() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
        await producer.start()
        try:
            sent = [
                await producer.send(topic, value, key=key.encode(), headers=headers)
                for key, value, headers in records
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(publishing())


# (key, value, headers), header names as bytes
RawRecord = tuple[bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]


def record_batch(records: list[RawRecord]) -> bytes:
    """`records` as one Kafka record batch (format v2, uncompressed), header names as given: what a
    client that does not check them writes, and aiokafka's producer will not."""

    def varint(value: int) -> bytearray:
        out = bytearray()
        encode_varint(value, out.append)
        return out

    def sized(part: bytes | None) -> bytes:
        return bytes(varint(-1) if part is None else varint(len(part)) + part)

    body = bytearray()
    for delta, (key, value, headers) in enumerate(records):
        record = bytearray(b"\x00") + varint(0) + varint(delta) + sized(key) + sized(value)
        record += varint(len(headers))
        for name, header in headers:
            record += sized(name) + sized(header)
        body += varint(len(record)) + record
    now = int(time.time() * 1000)
    # attributes, last offset delta, timestamps, producer id, epoch, base sequence, record count
    after_crc = struct.pack(">hiqqqhii", 0, len(records) - 1, now, now, -1, -1, -1, len(records))
    after_crc += body
    # base offset, length (from the leader epoch on), leader epoch, magic, crc
    head = struct.pack(">qiibI", 0, 9 + len(after_crc), -1, 2, calc_crc32c(after_crc))
    return head + after_crc


def publish_raw(bootstrap: str, topic: str, partition: int, batches: list[list[RawRecord]]) -> None:
    """Publish each of `batches` to one partition as one record batch, built by `record_batch`."""

    async def publishing() -> None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            for records in batches:
                batch = record_batch(records)
                request = ProduceRequest(None, -1, 30_000, [(topic, [(partition, batch)])])
                for _ in range(50):  # a topic just created may have no leader yet
                    await client._wait_on_metadata(topic)
                    leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                    response = await client.send(leader, request)
                    [(_, [(_, error_code, *_)])] = response.topics
                    if error_code != 6:  # NOT_LEADER_OR_FOLLOWER
                        break
                    await asyncio.sleep(0.2)
                    await client.force_metadata_update()
                assert error_code == 0, response
        finally:
            await client.close()

    asyncio.run(publishing())


def publish(bootstrap: str, topic: str, history: list[Event]) -> None:
    records = [(key, cloud_event(event_type, data), []) for key, event_type, data in history]
    publish_records(bootstrap, topic, records)


def read_all(server: Served) -> dict[str, dict[str, Any]]:
    """Every persona the service answers with, page by page."""
    personas: dict[str, dict[str, Any]] = {}
    after: str | None = None
    while True:
        params = {"limit": "500", **({"after": after} if after else {})}
        page = server.get("/personas", params=params)
        page.raise_for_status()
        body = page.json()
        personas.update((item["persona_id"], item) for item in body["items"])
        after = body["next_cursor"]
        if after is None:
            return personas


# What the persona service's team adds to its service: the handler of the renames it owns.
RENAME_HANDLER = '''"""Renames: this service owns personas, so it handles their renames."""

from ..contracts.personas import PersonaRenamed, RenamePersona
from ..projections.personas import PERSONAS
from ..runtime import Command, CommandRejected, HandlerContext, Outcome, fact, handle


async def rename(command: Command[RenamePersona], context: HandlerContext) -> Outcome:
    persona_id = command.data.persona_id
    if await context.readmodel.get(PERSONAS, persona_id) is None:
        raise CommandRejected(f"persona {persona_id!r} does not exist")
    renamed = PersonaRenamed(persona_id=persona_id, display_name=command.data.name)
    return Outcome(
        result={"persona_id": persona_id, "name": command.data.name},
        events=[fact(persona_id, renamed)],
    )


HANDLERS = [handle(rename, events=[PersonaRenamed])]
'''


def render_persona_service(project: Path) -> Path:
    """The persona service, the upstream of `personabff`: the same template, another name, with the
    rename handler its team added."""
    render(project, service_name="personaservice", upstream_service="personabff")
    handlers = project / "src/personaservice/handlers"
    (handlers / "renames.py").write_text(RENAME_HANDLER)
    init = handlers / "__init__.py"
    init.write_text(
        init.read_text()
        .replace("from . import personas", "from . import personas, renames")
        .replace("Handlers(personas.HANDLERS)", "Handlers([*personas.HANDLERS, *renames.HANDLERS])")
    )
    return project
