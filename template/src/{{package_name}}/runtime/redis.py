"""The Redis client, with hiredis packing commands: redis-py's asyncio client packs them in Python,
which costs more than anything else in a projector's batch of a few thousand arguments. And a read
of many hash fields in one round trip, for queries and batches alike.

Its pool waits for a free connection, up to a bound, where redis-py's default pool fails the
command at once ("Too many connections"): under load a query queues briefly instead of failing.
(redis-py's BlockingConnectionPool waits too, but costs about 10 us more CPU a command even when
connections are free; this one adds a semaphore's fast path.)
"""

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from .settings import ServiceSettings


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # e.g. "CLIENT SETNAME"
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(self.pack_command(*command)[0] for command in commands)]


class HiredisConnection(_HiredisPacking, Connection):
    pass


class HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


class WaitingConnectionPool(ConnectionPool):
    """A pool of `max_connections` whose commands wait up to `wait_s` (None: as long as it takes)
    for a free connection, then fail with a ConnectionError naming the wait."""

    def __init__(self, *, wait_s: float | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._wait_s = wait_s
        self._free = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **options: Any) -> AbstractConnection:
        if not self._free.locked():  # the usual case: a connection is free, no timer needed
            await self._free.acquire()
        else:
            try:
                async with asyncio.timeout(self._wait_s):
                    await self._free.acquire()
            except TimeoutError:
                raise RedisConnectionError(
                    f"no free Redis connection within {self._wait_s}s"
                    f" ({self.max_connections} in use)"
                ) from None
        try:
            connection = await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]
            return cast(AbstractConnection, connection)
        except BaseException:
            self._free.release()
            raise

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        self._free.release()


def redis_client(
    url: str, *, max_connections: int = 50, wait_s: float | None = None, **options: Any
) -> Redis:
    """A client for `url` (redis:// or rediss://) that packs commands with hiredis, from a pool of
    `max_connections` that waits up to `wait_s` (None: as long as it takes) for a free one."""
    secure = url.startswith("rediss://")
    connection_class = HiredisSSLConnection if secure else HiredisConnection
    pool = WaitingConnectionPool.from_url(
        url,
        connection_class=connection_class,
        max_connections=max_connections,
        wait_s=wait_s,
        **options,
    )
    return Redis.from_pool(pool)


# The HGET of each hash KEYS[i] at its field ARGV[i].
_HGET_EACH = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGET', key, ARGV[i])
end
return out
"""


async def hget_each(redis: Redis, slots: Sequence[tuple[str, str]]) -> list[bytes | None]:
    """The value of each (hash, field), in one round trip and one reply (a pipeline of HGETs
    costs a reply each to parse)."""
    hashes, fields = [hash_ for hash_, _ in slots], [field for _, field in slots]
    return cast(list[bytes | None], await redis.eval(_HGET_EACH, len(slots), *hashes, *fields))


def tls_options(settings: ServiceSettings) -> dict[str, Any]:
    """redis-py's TLS options from REDIS_SSL_*: for rediss:// only (a plain connection takes none).
    The server's certificate and host name are always checked."""
    if settings.redis_url.scheme != "rediss":
        return {}
    files = {
        "ssl_ca_certs": settings.redis_ssl_ca_file,
        "ssl_certfile": settings.redis_ssl_cert_file,
        "ssl_keyfile": settings.redis_ssl_key_file,
    }
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        **{option: str(path) for option, path in files.items() if path is not None},
    }
