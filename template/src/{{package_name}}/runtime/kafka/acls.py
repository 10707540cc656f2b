"""Kafka ACLs: what this service's principal may do on the cluster, and who else needs what on its
topics. Computed from the settings and the upstreams the contracts name; nothing is asked of the
cluster (`acls` on the command line prints them, as bindings or as `kafka-acls.sh` commands).

Its own principal gets, each an ALLOW binding on a literal name, from any host:

- its `.commands` topic: READ (its command worker); WRITE too when it commands itself;
- its `.private.reply` topic: READ (its reply consumer); WRITE too when it commands itself (its
  command worker then answers there);
- its `.events` topic (and `.results` with pipeline results): WRITE when it has command handlers
  (they publish there), else DESCRIBE alone (start-up checks the topic exists);
- its `.private.dlq` topic: WRITE (dead letters) and READ (`dlq list`, `dlq redrive`);
- its `.private.data` topic: READ (bootstrap, rebuild), WRITE (`snapshot export`), DELETE (an
  export deletes the records of earlier ones);
- each topic it projects (an upstream's `.events`, or its own): READ;
- each `.commands` topic it sends commands to: WRITE;
- its consumer groups: READ on `CONSUMER_GROUP` (the projector, when it projects anything),
  `CONSUMER_GROUP.commands` and `CONSUMER_GROUP.replies`. Jobs (bootstrap, rebuild, export, dlq,
  gaps) consume without a group.

READ, WRITE and DELETE imply DESCRIBE, so no DESCRIBE binding is added beside them. Its producer is
idempotent but not transactional: brokers since Kafka 3.0 let a principal that may WRITE to a topic
start one, so neither IDEMPOTENT_WRITE on the cluster nor a transactional id is needed. Creating
topics (`create-topics`) and publishing upstream events by hand (`publish`) are for local work and
operators, not granted here.

Other principals need, on this service's topics:

- each upstream it commands: WRITE on its `.private.reply` (the upstream's command worker answers
  there); given here for the principals named in `upstream_principals`;
- each service that commands it: WRITE on its `.commands` (`senders`), and this service needs
  WRITE on that service's `.private.reply`, which that service's own `acls` grants;
- each consumer of its Fact Events: READ on its `.events` and `.results` (`readers`).
"""

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..settings import ServiceSettings
from ..upstreams import Upstream

Operation = Literal["READ", "WRITE", "DELETE", "DESCRIBE"]
ResourceType = Literal["TOPIC", "GROUP"]

# kafka-acls.sh spells operations in camel case; listed in the order commands show them.
_TOOL_OPERATION: dict[Operation, str] = {
    "READ": "Read",
    "WRITE": "Write",
    "DELETE": "Delete",
    "DESCRIBE": "Describe",
}


@dataclass(frozen=True)
class Binding:
    """ALLOW `principal` to do `operation` on the resource of that type and literal name, from any
    host; `why` says what of the service needs it."""

    principal: str
    operation: Operation
    resource_type: ResourceType
    name: str
    why: str = field(default="", compare=False)

    def as_dict(self) -> dict[str, str]:
        return {
            "principal": self.principal,
            "permission": "ALLOW",
            "operation": self.operation,
            "resource_type": self.resource_type,
            "pattern_type": "LITERAL",
            "name": self.name,
            "host": "*",
            "why": self.why,
        }


class SendsCommands(Protocol):
    """A command the service sends (runtime.OutgoingCommand): where it goes, and to whom."""

    @property
    def upstream(self) -> Upstream | None: ...

    def topic(self, settings: ServiceSettings) -> str: ...


@dataclass(frozen=True)
class Acls:
    """The bindings, and what other principals need that no principal was given for."""

    bindings: list[Binding]
    wanting: list[str]


def service_acls(
    settings: ServiceSettings,
    principal: str,
    *,
    projected: Sequence[str],
    commands: Iterable[SendsCommands],
    handles_commands: bool,
    upstream_principals: Mapping[str, str] | None = None,
    senders: Sequence[str] = (),
    readers: Sequence[str] = (),
) -> Acls:
    """The bindings this service's `principal` needs, then those of other principals on its topics.

    `projected`: the topics its projector consumes (Registry.topics); `commands`: what its routes
    send (api.COMMANDS); `handles_commands`: whether it has command handlers. `upstream_principals`
    maps an upstream's name (or, for a command sent to a topic setting, that topic) to its
    principal (ValueError for one it does not command); `senders` and `readers` are principals
    commanding it and reading its Fact Events.
    """
    own: list[Binding] = []

    def allow(operation: Operation, kind: ResourceType, name: str, why: str) -> None:
        own.append(Binding(principal, operation, kind, name, why))

    targets = _command_targets(settings, commands)
    allow("READ", "TOPIC", settings.commands_topic, "its command worker")
    allow("READ", "TOPIC", settings.reply_topic, "its reply consumer")
    if settings.commands_topic in targets:
        allow("WRITE", "TOPIC", settings.commands_topic, "commands it sends itself")
        allow("WRITE", "TOPIC", settings.reply_topic, "it answers the commands it sends itself")
    published = [settings.events_topic]
    if settings.pipeline_results:
        published.append(settings.results_topic)
    for topic in published:
        if handles_commands:
            allow("WRITE", "TOPIC", topic, "its command handlers publish")
        else:
            allow("DESCRIBE", "TOPIC", topic, "start-up checks it exists (no command handler)")
    allow("WRITE", "TOPIC", settings.dlq_topic, "dead letters")
    allow("READ", "TOPIC", settings.dlq_topic, "dlq list, dlq redrive")
    allow("READ", "TOPIC", settings.data_topic, "snapshots: bootstrap, rebuild")
    allow("WRITE", "TOPIC", settings.data_topic, "snapshot export")
    allow("DELETE", "TOPIC", settings.data_topic, "snapshot export drops earlier exports")
    for topic in projected:
        allow("READ", "TOPIC", topic, "its projector")
    for topic, owner in targets.items():
        if topic != settings.commands_topic:
            allow("WRITE", "TOPIC", topic, f"commands it sends to {owner}")
    groups = {
        **({settings.consumer_group: "its projector"} if projected else {}),
        f"{settings.consumer_group}.commands": "its command worker",
        f"{settings.consumer_group}.replies": "its reply consumer",
    }
    for group, why in groups.items():
        allow("READ", "GROUP", group, why)

    others: list[Binding] = []
    wanting: list[str] = []
    given = upstream_principals or {}
    commanded = {
        owner: topic for topic, owner in targets.items() if topic != settings.commands_topic
    }
    if unknown := sorted(set(given) - set(commanded) - set(commanded.values())):
        raise ValueError(
            f"{', '.join(unknown)}: not an upstream this service commands"
            f" (it commands: {', '.join(sorted(commanded)) or 'none'})"
        )
    for topic, owner in targets.items():
        if topic == settings.commands_topic:
            continue
        why = f"{owner} answers the commands this service sends it"
        if other := given.get(owner) or given.get(topic):
            others.append(Binding(other, "WRITE", "TOPIC", settings.reply_topic, why))
        else:
            wanting.append(
                f"{owner} needs WRITE on {settings.reply_topic} to answer the commands sent to"
                f" {topic}: name its principal with --upstream-principal {owner}=User:..."
            )
    for sender in senders:
        why = "commands it sends to this service"
        others.append(Binding(sender, "WRITE", "TOPIC", settings.commands_topic, why))
    for reader in readers:
        others.append(Binding(reader, "READ", "TOPIC", settings.events_topic, "Fact Events"))
        if settings.pipeline_results:
            others.append(Binding(reader, "READ", "TOPIC", settings.results_topic, "results"))
    if not senders:
        wanting.append(
            f"a service that commands this one needs WRITE on {settings.commands_topic}"
            " (--sender), and must let this one WRITE its .private.reply, where it is answered"
            " (that service's own `acls --upstream-principal`)"
        )
    if not readers:
        wanting.append(
            f"a service that consumes its Fact Events needs READ on {settings.events_topic}"
            " (--reader)"
        )
    return Acls(_merged([*own, *others]), wanting)


def _command_targets(
    settings: ServiceSettings, commands: Iterable[SendsCommands]
) -> dict[str, str]:
    """Each commands topic the service sends to, and who owns it: the upstream's name, or the
    topic itself for a command sent to a topic setting."""
    targets: dict[str, str] = {}
    for command in commands:
        topic = command.topic(settings)
        upstream = command.upstream
        targets.setdefault(topic, upstream.name if upstream is not None else topic)
    return dict(sorted(targets.items()))


def _merged(bindings: Iterable[Binding]) -> list[Binding]:
    """Each binding once (the reasons of its duplicates joined), in a stable order."""
    merged: dict[Binding, list[str]] = {}
    for binding in bindings:
        reasons = merged.setdefault(binding, [])
        if binding.why and binding.why not in reasons:
            reasons.append(binding.why)
    order = list(_TOOL_OPERATION)
    return sorted(
        (
            Binding(b.principal, b.operation, b.resource_type, b.name, "; ".join(why))
            for b, why in merged.items()
        ),
        key=lambda b: (b.principal, b.resource_type, b.name, order.index(b.operation)),
    )


def as_table(bindings: Sequence[Binding]) -> list[str]:
    """One binding a line, in columns: principal, operation, resource type, name, then why."""
    rows = [(b.principal, b.operation, b.resource_type, b.name) for b in bindings]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        + f"  # {b.why}"
        for row, b in zip(rows, bindings, strict=True)
    ]


def kafka_acls_commands(
    bindings: Sequence[Binding], bootstrap_server: str, command_config: str | None = None
) -> list[str]:
    """`kafka-acls.sh --add` command lines adding `bindings`: one per principal and set of
    operations, naming every resource that principal gets exactly those operations on."""
    operations: dict[tuple[str, ResourceType, str], list[Operation]] = {}
    for b in bindings:
        operations.setdefault((b.principal, b.resource_type, b.name), []).append(b.operation)
    resources: dict[tuple[str, tuple[Operation, ...]], list[tuple[ResourceType, str]]] = {}
    for (principal, kind, name), listed in operations.items():
        resources.setdefault((principal, tuple(listed)), []).append((kind, name))
    connect = ["--bootstrap-server", bootstrap_server]
    if command_config is not None:
        connect += ["--command-config", command_config]
    lines = []
    for (principal, ops), named in resources.items():
        words = ["kafka-acls.sh", *connect, "--add", "--allow-principal", principal]
        words += [word for op in ops for word in ("--operation", _TOOL_OPERATION[op])]
        words += [word for kind, name in named for word in (f"--{kind.lower()}", name)]
        lines.append(shlex.join(words))
    return lines
