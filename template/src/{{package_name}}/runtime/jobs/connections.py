"""What every job connects to: Redis, a producer and a group-less consumer."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ..errors import StartupError
from ..kafka import new_job_consumer, new_producer, start_client
from ..readmodel import ReadModel
from ..service import connect_redis, key_prefix
from ..settings import ServiceSettings
from ..versions import NewerLayoutError, ReadModelLostError


@dataclass
class Clients:
    readmodel: ReadModel
    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer


@asynccontextmanager
async def clients(settings: ServiceSettings) -> AsyncIterator[Clients]:
    """Redis, a producer and a group-less consumer, closed on exit."""
    async with AsyncExitStack() as stack:
        redis = await connect_redis(settings)
        stack.push_async_callback(redis.aclose)
        producer = new_producer(settings)
        await start_client(producer, settings)
        stack.push_async_callback(producer.stop)
        consumer = new_job_consumer(settings)
        await start_client(consumer, settings)
        stack.push_async_callback(consumer.stop)
        # Where the service keeps its read model, also when an older release chose the prefix.
        readmodel = ReadModel(redis, await key_prefix(redis, settings))
        yield Clients(readmodel, producer, consumer)


async def existing(readmodel: ReadModel) -> ReadModel:
    """The live read model, which jobs that write to it need the service to have created."""
    try:
        await readmodel.versions.refresh()
    except ReadModelLostError:
        raise StartupError(
            f"no read model under REDIS_KEY_PREFIX={readmodel.keys.prefix} in this Redis:"
            " start the service first"
        ) from None
    except NewerLayoutError as exc:
        raise StartupError(str(exc)) from None
    return readmodel
