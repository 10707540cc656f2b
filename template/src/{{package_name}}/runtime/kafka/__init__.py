"""Kafka, the service's bus: its clients, its topics, and where consumers read.

The rest of `runtime/` builds no client and asks the cluster nothing itself: it uses these names,
then the consumers and producers they give (`getmany`, `send`, `commit`, `end_offsets`, rebalance
callbacks). A later bus (NATS, RabbitMQ) is a sibling package offering the same names.

- `clients`: clients built from settings (TLS, SASL), started within a bounded wait.
- `topics`: the topics this service owns, which exist, their partitions; creating them, deleting
  records before an offset.
- `positions`: assigning every partition, seeking to offsets, end offsets, whether a consumer has
  reached them, where it reads next; gaps (positions before a partition's log start).
- `consuming`: `Record`, what the machinery reads of a consumed record, and the at-least-once
  loop for consumers whose handling is idempotent.
- `acls`: the ACL bindings this service's principal needs, and those others need on its topics
  (computed from the settings; it asks the cluster nothing).
"""

from .clients import (
    client_options,
    new_admin,
    new_consumer,
    new_job_consumer,
    new_producer,
    start_client,
)
from .consuming import consume_each
from .positions import (
    Gap,
    GapError,
    assign_all,
    end_offsets,
    gaps,
    known_positions,
    reached,
    seek,
)
from .records import Record
from .topics import (
    create_topics,
    delete_records_before,
    missing_topics,
    own_topics,
    partitions_of,
)

__all__ = [
    "Gap",
    "GapError",
    "Record",
    "assign_all",
    "client_options",
    "consume_each",
    "create_topics",
    "delete_records_before",
    "end_offsets",
    "gaps",
    "known_positions",
    "missing_topics",
    "new_admin",
    "new_consumer",
    "new_job_consumer",
    "new_producer",
    "own_topics",
    "partitions_of",
    "reached",
    "seek",
    "start_client",
]
