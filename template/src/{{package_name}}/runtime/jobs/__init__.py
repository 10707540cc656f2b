"""Operational jobs run from the command line (cli.py), each connecting on its own.

- `dlq`: list the dead letters, redrive them.
- `parked`: list parked sequences, release them, skip their first event.
- `export`: export the read model as a snapshot to the private data topic.
- `gaps`: list the partitions stopped on a gap, accept the loss of the records deleted.
- `rebuild`: replay into a new version of the read model, then swap it in.
"""

from . import dlq, export, gaps, parked, rebuild

__all__ = ["dlq", "export", "gaps", "parked", "rebuild"]
