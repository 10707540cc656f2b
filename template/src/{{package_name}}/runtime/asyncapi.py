"""This service's Kafka contracts as an AsyncAPI 3.0 document, built from the code that runs them.

Channels are topics; messages are CloudEvent types, one per type and version, whose payload is the
JSON Schema of the event's `data`. The sources are what the service executes: the registry (Fact
Events it projects, upcast or ignores), the handlers (commands it receives, the Fact Events and
results they publish) and `api.COMMANDS` (commands it sends). A contract changes only when the code
does, so the document cannot drift from the service.
"""

import re
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .commands.handling import Handlers
from .commands.sending import REPLY_TYPE, OutgoingCommand, Reply
from .projection import Registry
from .settings import ServiceSettings
from .upstreams import upstream_of

ASYNCAPI_VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/"
# The channel of the replies to commands this service handles: each command names its own topic.
REPLY_TO = "replyto"


class ContractError(ValueError):
    """The declared contracts contradict each other (one event type, two models)."""


def document(
    settings: ServiceSettings,
    registry: Registry,
    handlers: Handlers,
    commands: Sequence[OutgoingCommand[Any]],
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the service as `settings` configure it."""
    doc = _Document()
    consumed: list[tuple[str, type[BaseModel] | None, str]]
    consumed = [(p.event_type, p.data, "") for p in registry.projections()]
    consumed += [
        (u.from_type, u.data, f"Upcast to {u.to_type} before projecting.")
        for u in registry.upcasters()
    ]
    consumed += [(t, None, "Received and skipped.") for t in sorted(registry.ignored)]
    # Every contract is a message whatever the settings say, so `contracts check` does not depend
    # on the environment it runs in: UPSTREAM_TOPICS and PIPELINE_RESULTS only place them.
    declared = [*consumed, *((*fact, "") for h in handlers for fact in h.results.items())]
    for message in declared:
        doc.message(None, *message)
    for topic in registry.topics(settings):
        doc.channel(topic, "Upstream Fact Events this service projects into its read model.")
        ids = [
            doc.message(topic, *message)
            for message in consumed
            if _travels_on(settings, topic, message[1])
        ]
        doc.operation(f"project.{topic}", "receive", topic, ids, "Project into the read model.")

    doc.channel(
        settings.events_topic, "Fact Events about this service's entities (sole publisher)."
    )
    doc.channel(settings.commands_topic, "Commands to this service (sole subscriber).")
    doc.channel(settings.reply_topic, "Replies to the commands this service sent.")
    doc.channel(
        settings.dlq_topic,
        "Dead letters: the original key, value and headers, plus `dlq.*` headers saying where the"
        " record came from and why it failed.",
    )
    doc.channel(
        settings.data_topic,
        "Snapshots of the read model with their positions (`snapshot export`, first-start"
        " bootstrap).",
    )
    doc.operation("deadLetter", "send", settings.dlq_topic, [], "What could not be processed.")
    doc.operation("exportSnapshot", "send", settings.data_topic, [], "`snapshot export`.")
    doc.operation("loadSnapshot", "receive", settings.data_topic, [], "First-start bootstrap.")

    handled = list(handlers)
    if handled:
        doc.channel(None, "The topic each command names in its `replyto` attribute.")
        reply_id = doc.message(REPLY_TO, REPLY_TYPE, Reply, "The outcome of a command.")
    for handler in handled:
        command = doc.message(settings.commands_topic, handler.command_type, handler.data, "")
        doc.operation(
            f"handle.{handler.command_type}",
            "receive",
            settings.commands_topic,
            [command],
            "Handle the command (its `principal` extension attribute names the user it was sent"
            " for), publish its Fact Events, then reply with where they landed (`positions`).",
            reply=(REPLY_TO, reply_id),
        )
    published = [(settings.events_topic, fact) for h in handled for fact in h.events.items()]
    if settings.pipeline_results:
        doc.channel(settings.results_topic, "Pipeline results of the commands it handles.")
        published += [(settings.results_topic, fact) for h in handled for fact in h.results.items()]
    for topic in dict.fromkeys(topic for topic, _ in published):
        ids = [doc.message(topic, *fact, "") for to, fact in published if to == topic]
        doc.operation(f"publish.{topic}", "send", topic, ids, "Published by command handlers.")

    reply = doc.message(settings.reply_topic, REPLY_TYPE, Reply, "The outcome of a command.")
    doc.operation(
        "completeCommands", "receive", settings.reply_topic, [reply], "Complete sent commands."
    )
    for outgoing in commands:
        topic = outgoing.topic(settings)
        to = outgoing.upstream.name if outgoing.upstream else outgoing.topic_setting.upper()
        doc.channel(topic, f"Commands to another service ({to}).")
        sent = doc.message(topic, outgoing.command_type, outgoing.data, "")
        doc.operation(
            f"send.{outgoing.command_type}",
            "send",
            topic,
            [sent],
            "Track the command until its reply completes it; the command carries the sender's"
            " subject in its `principal` extension attribute.",
            reply=(settings.reply_topic, reply),
        )
    return doc.build(settings)


def _travels_on(settings: ServiceSettings, topic: str, contract: type[BaseModel] | None) -> bool:
    """Whether events of `contract` come on `topic`. Unknown for topics that UPSTREAM_TOPICS sets
    and for types without a contract: those are shown on every upstream topic."""
    if settings.upstream_topics or contract is None:
        return True
    return upstream_of(contract).events_topic(settings) == topic


class _Document:
    def __init__(self) -> None:
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, tuple[str, type[BaseModel] | None, str]] = {}

    def channel(self, address: str | None, description: str) -> None:
        """A topic, or with no address the topics that commands name for their replies."""
        channel_id = _id(address or REPLY_TO)
        if channel_id not in self.channels:
            self.channels[channel_id] = {
                "address": address,
                "description": description,
                "messages": {},
            }

    def message(
        self, address: str | None, event_type: str, model: type[BaseModel] | None, note: str
    ) -> str:
        """Add the message to the components and to the channel at `address`; returns its id."""
        message_id = _id(event_type)
        known = self.messages.get(message_id)
        if known is not None and None not in (known[1], model) and known[1] is not model:
            raise ContractError(
                f"event type {event_type} has two contracts: {_name(known[1])} and {_name(model)}"
                " (one type and version means one schema: give the other a new type or version)"
            )
        if known is None or known[1] is None:
            self.messages[message_id] = (event_type, model, note)
        if address is not None:
            channel = self.channels[_id(address)]
            channel["messages"][message_id] = {"$ref": f"#/components/messages/{message_id}"}
        return message_id

    def operation(
        self,
        operation_id: str,
        action: str,
        address: str,
        message_ids: Iterable[str],
        summary: str,
        reply: tuple[str, str] | None = None,
    ) -> None:
        channel_id = _id(address)
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{message_id}"}
                for message_id in message_ids
            ],
        }
        if reply is not None:
            reply_channel = _id(reply[0])
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{reply[1]}"}],
            }
        self.operations[_id(operation_id)] = operation

    def build(self, settings: ServiceSettings) -> dict[str, Any]:
        models = {model for _, model, _ in self.messages.values() if model is not None}
        keys, definitions = models_json_schema(
            [(model, "validation") for model in sorted(models, key=_name)],
            ref_template=SCHEMAS + "{model}",
        )
        messages = {}
        for message_id, (event_type, model, note) in sorted(self.messages.items()):
            message: dict[str, Any] = {"name": event_type, "title": event_type}
            docstring = (model.__doc__ or "") if model else ""
            summary = next(iter(docstring.strip().splitlines()), "")
            if summary:
                message["summary"] = summary
            description = "The `data` of a CloudEvent of this `type`. " + note
            if model is None:
                description += " Its data has no declared contract."
            message["description"] = description.strip()
            message["contentType"] = "application/json"
            if model is not None:
                message["payload"] = keys[(model, "validation")]
            messages[message_id] = message
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {
                "title": settings.service_name,
                "version": _version(),
                "description": "Kafka contracts of this service: the topics it consumes and"
                " produces, and the CloudEvents on them.",
            },
            "defaultContentType": "application/json",
            "channels": self.channels,
            "operations": self.operations,
            "components": {"messages": messages, "schemas": definitions.get("$defs", {})},
        }


def _id(name: str) -> str:
    """A name usable as a component key (AsyncAPI allows letters, digits, `.`, `-` and `_`)."""
    return re.sub(r"[^\w.\-]", "_", name)


def _name(model: type[BaseModel] | None) -> str:
    return "none" if model is None else f"{model.__module__}.{model.__qualname__}"


def _version() -> str:
    """The installed package's version; a source checkout run in place has none."""
    try:
        return version(__package__.split(".")[0])
    except PackageNotFoundError:
        return "0.0.0+source"
