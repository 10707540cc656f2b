"""What the service reads of a consumed record: a type of its own, so every module that handles
records can name it without importing the consumers."""

from collections.abc import Sequence
from typing import Protocol


class Record(Protocol):
    """What this service reads of a consumed record (aiokafka's ConsumerRecord is untyped)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]  # a header's value may be null
