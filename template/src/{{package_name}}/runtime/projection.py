"""The vocabulary of projections: collections, typed events, pure projection functions, upcasters.

A projection is a pure function `(state | None, event) -> state | None` (None deletes) that names
the collection and the key it updates. The key comes from the event, not necessarily the Kafka key,
so events of one upstream can update another upstream's entities: joins happen in the cache.
"""

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    overload,
)

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from .deprecation import deprecated
from .events import OPTIONAL, REQUIRED, CloudEvent, InvalidEventError, binary_mode, decode
from .settings import ServiceSettings
from .upstreams import Upstream, events_topics

S = TypeVar("S", bound=BaseModel)
D = TypeVar("D", bound=BaseModel)


class Contract(BaseModel):
    """The data of an event or command as its contract states it. `TYPE` is the versioned type
    string the contract travels under (`persona.created.v1`): declarations take it from here, so a
    type string cannot disagree with its model."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    TYPE: ClassVar[str]
    # Who publishes the event (or accepts the command); None: the upstream the service was
    # generated with (runtime.upstreams).
    UPSTREAM: ClassVar[Upstream | None] = None
    # What orders the events of one entity, where the upstream guarantees it: the name of an
    # integer field of the data (a per-entity sequence or version), or "time" (the CloudEvent's
    # `time`). An event older than what its entity has seen is then skipped, never applied over
    # it. None: the upstream promises no order beyond its partitions'.
    ORDERED_BY: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("TYPE")
        if declared is not None and not _VERSIONED_TYPE.match(declared):
            raise TypeError(
                f"{cls.__name__}.TYPE = {declared!r}: expected a versioned type such as"
                " 'persona.created.v1' (lowercase words and dots, ending in .v<number>)"
            )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        by = cls.ORDERED_BY
        if by is not None and by != "time" and by not in cls.model_fields:
            raise TypeError(
                f"{cls.__name__}.ORDERED_BY = {by!r}: expected 'time' or the name of one of its"
                f" integer fields ({', '.join(cls.model_fields) or 'it has none'})"
            )


C = TypeVar("C", bound=Contract)
_VERSIONED_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.v[0-9]+$")
# How the projector's validators parse JSON: events and stored entities hold mostly strings seen
# once (ids, names), which a cache of every string would look up and store in vain (about 10% of
# a validation); their keys recur.
_PARSING = ConfigDict(cache_strings="keys")


def type_of(contract: type[BaseModel]) -> str:
    """The type string a contract declares; TypeError naming the class if it declares none."""
    declared = getattr(contract, "TYPE", None)
    if not isinstance(declared, str):
        raise TypeError(
            f"{contract.__name__} declares no TYPE: subclass Contract and set"
            f" TYPE = '<entity>.<event>.v<n>'"
        )
    return declared


class UnknownEventTypeError(InvalidEventError):
    """No projection, upcaster or ignore rule knows this event type (or this version of it)."""


class InvalidDataError(InvalidEventError):
    """The event's data does not validate against its contract."""


# What a projection does with an event whose entity does not exist (yet): hand it the None state
# ("apply": creators, upserts, deletes), park it until the entity exists, skip it on purpose
# (counted), or dead-letter it.
Missing = Literal["apply", "park", "ignore", "dead-letter"]
MISSING_POLICIES: tuple[Missing, ...] = get_args(Missing)


class Event(BaseModel, Generic[D]):
    """An event whose data has been validated against its contract (after upcasting); read-only
    by convention. (A model, so that most events are validated in one pass over their JSON.)"""

    # Extension attributes: projections need none. Strings are cached as _PARSING says.
    model_config = ConfigDict(extra="ignore", cache_strings="keys")

    id: str
    type: str
    source: str
    time: str | None
    subject: str | None
    data: D


@dataclass(frozen=True)
class Collection(Generic[S]):
    """A named set of entities in the read model, each stored as the JSON of `model`.

    `lookups` name secondary indexes: for each, a function giving an entity's value (or None). The
    projector keeps them in step with the entities, in the same atomic write.
    """

    name: str
    model: type[S]
    lookups: Mapping[str, Callable[[S], str | None]] = field(default_factory=dict)

    def dumps(self, state: S) -> bytes:
        # The model's own serializer: model_dump_json() gives the same JSON at twice the cost.
        return self.model.__pydantic_serializer__.to_json(state)

    def loads(self, raw: bytes) -> S:
        return self.model.model_validate_json(raw)

    def loads_all(self, raws: Sequence[bytes]) -> list[S]:
        """Many entities at once: one pass over a JSON array is 40% cheaper than one per entity."""
        return self._all.validate_json(b"[" + b",".join(raws) + b"]")

    @cached_property
    def _all(self) -> TypeAdapter[list[S]]:
        return TypeAdapter(list[self.model], config=_PARSING)  # type: ignore[name-defined]


@dataclass(frozen=True)
class Projection(Generic[D, S]):
    """How one event type changes one collection: made by `project()`."""

    event_type: str
    data: type[D]
    collection: Collection[S]
    key: Callable[[Event[D]], str]
    apply: Callable[[S | None, Event[D]], S | None]
    _checked: bool = field(default=False, repr=False, compare=False)
    missing: Missing = "apply"

    def __post_init__(self) -> None:
        if not self._checked:  # written out by hand, as before project() existed
            deprecated("Projection(type, data, ...)", "project(apply, into=..., key=...)")
        if self.missing not in MISSING_POLICIES:
            raise ValueError(
                f"{self.event_type}: missing={self.missing!r}; expected one of"
                f" {', '.join(MISSING_POLICIES)}"
            )

    @cached_property
    def order(self) -> Callable[[Event[Any]], int] | None:
        """The ordering value of an event, as its contract declares it (None: none declared)."""
        by = getattr(self.data, "ORDERED_BY", None)
        if by is None:
            return None
        if by == "time":
            return _time_order
        return lambda event: _sequence_order(event, by)


@overload
def project(
    apply: Callable[[S, Event[C]], S | None],
    *,
    into: Collection[S],
    key: Callable[[Event[C]], str],
    missing: Literal["park", "ignore", "dead-letter"],
) -> Projection[C, S]: ...


@overload
def project(
    apply: Callable[[S | None, Event[C]], S | None],
    *,
    into: Collection[S],
    key: Callable[[Event[C]], str],
    missing: Literal["apply"] = "apply",
) -> Projection[C, S]: ...


def project(
    apply: Callable[[S | None, Event[C]], S | None] | Callable[[S, Event[C]], S | None],
    *,
    into: Collection[S],
    key: Callable[[Event[C]], str],
    missing: Missing = "apply",
) -> Projection[C, S]:
    """The projection of `apply`, a pure function `(state, event) -> state | None` (None deletes).

    `missing` says what an event means when its entity does not exist (yet): "apply" hands
    `apply` the state None (creators, upserts, deletes); "park" keeps the event, and every later
    one of that entity, until an event that creates it arrives, then applies them in order;
    "ignore" skips it, counted; "dead-letter" sends it to the dead-letter topic. With any but
    "apply", `apply` is only ever called with an existing state, as its annotation may then say.

    The event type and its data's contract come from `apply`'s annotation `event: Event[C]`, so
    they cannot disagree with it; mypy checks that `into` holds what `apply` returns and that `key`
    reads the same event.
    """
    data: type[C] = _event_contract(apply)
    fold = cast(Callable[[S | None, Event[C]], S | None], apply)
    return Projection(type_of(data), data, into, key, fold, _checked=True, missing=missing)


def _time_order(event: Event[Any]) -> int:
    """The event's `time` in microseconds since the epoch, to order by."""
    try:
        moment = datetime.fromisoformat(event.time or "")
    except ValueError:
        raise InvalidDataError(
            f"{event.type}: its contract orders by time, and `time` is {event.time!r},"
            " not an RFC 3339 timestamp with a UTC offset"
        ) from None
    if moment.tzinfo is None:
        raise InvalidDataError(f"{event.type}: `time` {event.time!r} has no UTC offset")
    return int(moment.timestamp() * 1_000_000)


def _sequence_order(event: Event[Any], by: str) -> int:
    value = getattr(event.data, by, None)
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise InvalidDataError(
            f"{event.type}: its contract orders by {by!r}, not a 64-bit integer here"
        )
    return value


def contract_of(hint: Any, generic: Any) -> Any | None:
    """`C` when `hint` is `generic[C]` (a pydantic or a typing generic) and `C` a Contract."""
    metadata = getattr(hint, "__pydantic_generic_metadata__", None)
    args: tuple[Any, ...]
    if metadata:
        args = metadata["args"] if metadata["origin"] is generic else ()
    else:
        args = get_args(hint) if get_origin(hint) is generic else ()
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], Contract):
        return args[0]
    return None


def _event_contract(apply: Callable[..., Any]) -> Any:
    """The contract `C` of `apply`'s second parameter, annotated `Event[C]`."""
    parameters = list(inspect.signature(apply).parameters)
    hints = get_type_hints(apply) if len(parameters) == 2 else {}
    contract = contract_of(hints.get(parameters[-1]), Event)
    if contract is not None:
        return contract
    name = getattr(apply, "__qualname__", repr(apply))
    raise TypeError(
        f"{name}: a projection is `def f(state: S | None, event: Event[SomeContract])"
        " -> S | None`, its event annotated with the Contract it reads"
    )


def upcast(
    old: type[Contract], new: type[Contract], convert: Callable[[Mapping[str, Any]], dict[str, Any]]
) -> "Upcaster":
    """Events of `old`'s type are read as `new`'s, their data turned by `convert`."""
    return Upcaster(type_of(old), type_of(new), convert, old)


@dataclass(frozen=True)
class Upcaster:
    """Turns the data of an older event version into the next version's shape.

    `data` is the older version's contract: /asyncapi.json and `contracts check` show it (the
    projector never validates against it: `convert` reads what it needs).
    """

    from_type: str
    to_type: str
    convert: Callable[[Mapping[str, Any]], dict[str, Any]]
    data: type[BaseModel] | None = None


@dataclass(slots=True)
class Change:
    """One projection's verdict on one event: which entity, the function that moves it, what a
    missing entity means to it, and the event's ordering value (None: its contract has none)."""

    collection: Collection[Any]
    key: str
    event: Event[Any]
    apply: Callable[[Any, Event[Any]], Any]
    missing: Missing = "apply"
    order: int | None = None

    @classmethod
    def of(cls, projection: "Projection[Any, Any]", event: Event[Any]) -> "Change":
        order = projection.order
        return cls(
            projection.collection,
            projection.key(event),
            event,
            projection.apply,
            projection.missing,
            None if order is None else order(event),
        )


class Registry:
    """Routes each event type, after upcasting, to the projections that consume it."""

    def __init__(
        self,
        projections: Iterable[Projection[Any, Any]],
        upcasters: Iterable[Upcaster] = (),
        ignored: Iterable[str] = (),
    ) -> None:
        self._projections: dict[str, list[Projection[Any, Any]]] = {}
        for projection in projections:
            self._projections.setdefault(projection.event_type, []).append(projection)
        self._upcasters = {upcaster.from_type: upcaster for upcaster in upcasters}
        self.ignored = frozenset(ignored)
        self.collections = {p.collection.name: p.collection for p in self.projections()}
        self._fast = _one_pass(self._event_models().values())

    def read(
        self, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> tuple[str, list[Change]]:
        """A Kafka record's event type and what it changes; raises InvalidEventError for what must
        be dead-lettered.

        Most records are structured-mode CloudEvents of a type projected as it is: one pydantic
        pass over their JSON validates envelope and data. Anything else (binary mode, upcasts,
        and every invalid record, for the exact reason) takes the careful path of `changes()`.
        """
        if self._fast is not None and value is not None and not binary_mode(headers):
            try:
                event = self._fast.validate_json(value)
            except ValidationError:
                pass
            else:
                return event.type, self._changes(event)
        envelope = decode(value, headers)
        return envelope.type, self.changes(envelope)

    def _event_models(self) -> dict[str, type[Event[Any]]]:
        """Per event type projected as it arrives (same data model for all its projections, not an
        upcaster's input), the model of its whole CloudEvent, tagged by type."""
        models: dict[str, type[Event[Any]]] = {}
        for event_type, projections in self._projections.items():
            data = {p.data for p in projections}
            if len(data) == 1 and event_type not in self._upcasters:
                models[event_type] = _envelope_model(event_type, data.pop())
        for event_type in self.ignored - self._projections.keys() - self._upcasters.keys():
            models[event_type] = _envelope_model(event_type, Any)
        return models

    def _changes(self, event: Event[Any]) -> list[Change]:
        return [Change.of(p, event) for p in self._projections.get(event.type, ())]

    def reread(self, parked: Any, ref: tuple[str, str]) -> Change:
        """The change a stored record (a parked event's) makes to the entity `ref`; raises
        InvalidEventError when it is no longer valid or changes that entity no more."""
        record = parked.record
        _, changes = self.read(record.value, record.headers)
        for change in changes:
            if (change.collection.name, change.key) == ref:
                return change
        raise InvalidEventError(f"no projection of it changes {ref[0]}/{ref[1]} any more")

    def projections(self) -> list[Projection[Any, Any]]:
        return [p for group in self._projections.values() for p in group]

    def contracts(self) -> dict[str, type[BaseModel] | None]:
        """Every event type read, projected or upcast, with its data's contract (None: an upcast
        type whose older model is not declared), in type order."""
        declared: dict[str, type[BaseModel] | None] = {
            p.event_type: p.data for p in self.projections()
        }
        declared.update((u.from_type, u.data) for u in self.upcasters())
        return dict(sorted(declared.items()))

    def topics(self, settings: ServiceSettings) -> list[str]:
        """The upstream topics the projector consumes (runtime.upstreams)."""
        return events_topics(settings, self.contracts().values())

    def upcasters(self) -> list[Upcaster]:
        return list(self._upcasters.values())

    def changes(self, envelope: CloudEvent) -> list[Change]:
        """What the event changes; raises InvalidEventError for what must be dead-lettered."""
        event_type, data = envelope.type, envelope.data
        if event_type in self._upcasters:
            event_type, data = self._upcast(event_type, data)
        projections = self._projections.get(event_type)
        if projections is None:
            if event_type in self.ignored:
                return []
            raise UnknownEventTypeError(
                f"no projection or upcaster for event type {envelope.type!r}"
            )
        changes = []
        for projection in projections:
            try:
                payload = projection.data.model_validate(data)
            except ValidationError as exc:
                raise InvalidDataError(f"{envelope.type}: {_summary(exc)}") from exc
            event: Event[Any] = Event.model_construct(
                id=envelope.id,
                type=event_type,
                source=envelope.source,
                time=envelope.time,
                subject=envelope.subject,
                data=payload,
            )
            changes.append(Change.of(projection, event))
        return changes

    def _upcast(self, event_type: str, data: Any) -> tuple[str, Any]:
        seen = {event_type}
        while event_type in self._upcasters:
            upcaster = self._upcasters[event_type]
            if not isinstance(data, Mapping):
                raise InvalidDataError(f"{event_type}: data must be a JSON object to upcast")
            event_type, data = upcaster.to_type, upcaster.convert(data)
            if event_type in seen:
                raise UnknownEventTypeError(f"upcasters loop at {event_type}")
            seen.add(event_type)
        return event_type, data


def _envelope_model(event_type: str, data: Any) -> type[Event[Any]]:
    """A structured-mode CloudEvent 1.0 of `event_type` whose data is `data`, as an Event."""
    fields: dict[str, Any] = {
        "specversion": (Literal["1.0"], ...),
        **dict.fromkeys(REQUIRED, (Annotated[str, Field(min_length=1)], ...)),
        **dict.fromkeys(OPTIONAL, (str | None, None)),
        "type": (Literal[event_type], ...),
    }
    model = create_model(f"Event[{event_type}]", __base__=Event[data], **fields)
    return cast(type[Event[Any]], model)


def _one_pass(models: Iterable[type[Event[Any]]]) -> TypeAdapter[Event[Any]] | None:
    """One validator for all `models`, picking by the `type` attribute."""
    members = tuple(models)
    if not members:
        return None
    if len(members) == 1:
        return TypeAdapter(members[0])
    tagged = Annotated[Union[members], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    return TypeAdapter(tagged, config=_PARSING)


def _summary(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}"
        for e in error.errors(include_url=False)
    )
