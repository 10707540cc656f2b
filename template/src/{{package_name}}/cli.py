"""Command line: `python -m <package> serve` and friends."""

import asyncio
import re
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TransferSpeedColumn

from . import api
from . import contracts as contracts_package
from .app import contracts_document, create_app
from .handlers import HANDLERS
from .projections import REGISTRY
from .runtime import jobs, publishing, service
from .runtime.contracts import BaselineError, compare, load_baseline, messages, write_baseline
from .runtime.dev_tokens import DEV_ISSUER, DevIssuer
from .runtime.errors import StartupError
from .runtime.kafka import acls as kafka_acls
from .runtime.kafka import create_topics, missing_topics, new_producer, own_topics, start_client
from .runtime.observability import logs, tracing
from .runtime.readmodel import ReadModel
from .settings import Settings

T = TypeVar("T")

cli = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def load_settings() -> Settings:
    """Settings from the environment; a bad one stops the command naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, e['loc'])).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors()
        ]
        typer.echo("error: invalid settings\n" + "\n".join(lines), err=True)
        raise typer.Exit(code=2) from None


async def _preflight(settings: Settings) -> None:
    """Fail fast, with a readable message, when Redis or Kafka cannot be reached, the read model
    is in a layout this release cannot read, or a topic is missing."""
    redis = await service.connect_redis(settings)
    try:
        await service.check_layout(ReadModel(redis, await service.key_prefix(redis, settings)))
    finally:
        await redis.aclose()
    producer = new_producer(settings)
    await start_client(producer, settings)
    await producer.stop()
    if missing := await missing_topics(settings, own_topics(settings)):
        raise StartupError(
            f"missing Kafka topics of this service: {', '.join(missing)}"
            f" (create them with `python -m {__package__} create-topics`)"
        )
    if missing := await missing_topics(settings, upstream_topics(settings)):
        raise StartupError(
            f"missing upstream topics: {', '.join(missing)} (they belong to the upstream services:"
            " check the names and UPSTREAM_PREFIXES, or create them there; locally:"
            f" `python -m {__package__} create-topics --with-upstream`)"
        )


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind; default HTTP_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind; default HTTP_PORT")] = None,
) -> None:
    """Serve the API and run the consumers."""
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    tracing.configure(settings.service_name)
    try:  # first: settings the app refuses (authentication) stop it before Kafka is tried
        app = create_app(settings)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    _run_job(_preflight(settings))
    service.tune_gc()  # what start-up made is frozen, so full collections skip it
    uvicorn.run(
        app,
        host=host or settings.http_host,
        port=port or settings.http_port,
        log_config=None,  # uvicorn's loggers go through the root handler logs.configure set up
        log_level=settings.log_level.lower(),
    )


def upstream_topics(settings: Settings) -> list[str]:
    """The upstream topics this service uses: those it projects, and those its commands go to (its
    own topics aside, where it projects its own Fact Events or commands itself)."""
    sent = (command.topic(settings) for command in api.COMMANDS)
    own = set(own_topics(settings))
    return [t for t in dict.fromkeys([*REGISTRY.topics(settings), *sent]) if t not in own]


@cli.command("create-topics")
def create_topics_command(
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of each new topic")] = 3,
    replication: Annotated[int, typer.Option(min=1, help="Replication factor")] = 1,
    with_upstream: Annotated[
        bool,
        typer.Option(
            help="Also the upstream topics (events projected, commands sent): for local set-ups,"
            " where nobody else creates them"
        ),
    ] = False,
) -> None:
    """Create this service's own topics where they are missing (upstream topics are not ours)."""
    settings = load_settings()
    topics = own_topics(settings) + (upstream_topics(settings) if with_upstream else [])
    created = _run_job(
        create_topics(settings, topics, partitions=partitions, replication=replication)
    )
    typer.echo("\n".join(f"created {topic}" for topic in created) or "all topics exist")


class AclFormat(StrEnum):
    table = "table"
    json = "json"
    kafka_acls = "kafka-acls"


@cli.command("acls")
def acls_command(
    principal: Annotated[
        str | None,
        typer.Option(
            metavar="TYPE:NAME", help="This service's principal; default User:<KAFKA_SASL_USERNAME>"
        ),
    ] = None,
    upstream_principal: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=PRINCIPAL",
            help="The principal of an upstream this service commands: it gets WRITE on this"
            " service's reply topic (repeatable)",
        ),
    ] = None,
    sender: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PRINCIPAL",
            help="A principal that commands this service: WRITE on its commands topic (repeatable)",
        ),
    ] = None,
    reader: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PRINCIPAL",
            help="A principal that consumes its Fact Events: READ on its events topic (repeatable)",
        ),
    ] = None,
    output: Annotated[
        AclFormat, typer.Option("--format", help="table, JSON lines, or kafka-acls.sh commands")
    ] = AclFormat.table,
    bootstrap_server: Annotated[
        str | None,
        typer.Option(help="Broker the kafka-acls.sh commands connect to; KAFKA_BOOTSTRAP_SERVERS"),
    ] = None,
    command_config: Annotated[
        str | None,
        typer.Option(help="Client properties of whoever adds the ACLs, for kafka-acls.sh"),
    ] = None,
) -> None:
    """Print the Kafka ACLs this service's principal needs, and nothing more: its own topics and
    consumer groups, the topics it projects, the commands topics it sends to; then what other
    principals need on its topics. Notes on what is not granted go to stderr."""
    settings = load_settings()
    if principal is None:
        if settings.kafka_sasl_username is None:
            raise typer.BadParameter(
                "give it, e.g. User:<name> (KAFKA_SASL_USERNAME is not set)",
                param_hint="--principal",
            )
        principal = f"User:{settings.kafka_sasl_username}"
    elif ":" not in principal:
        raise typer.BadParameter(f"{principal!r}: expected TYPE:NAME", param_hint="--principal")
    upstreams = dict(_pair(pair) for pair in upstream_principal or [])
    try:
        computed = kafka_acls.service_acls(
            settings,
            principal,
            projected=REGISTRY.topics(settings),
            commands=api.COMMANDS,
            handles_commands=any(True for _ in HANDLERS),
            upstream_principals=upstreams,
            senders=sender or [],
            readers=reader or [],
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--upstream-principal") from None
    if output is AclFormat.kafka_acls:
        server = bootstrap_server or settings.bootstrap_servers
        lines = kafka_acls.kafka_acls_commands(computed.bindings, server, command_config)
    elif output is AclFormat.json:
        lines = [orjson.dumps(binding.as_dict()).decode() for binding in computed.bindings]
    else:
        lines = kafka_acls.as_table(computed.bindings)
    typer.echo("\n".join(lines))
    for note in computed.wanting:
        typer.echo(f"not granted: {note}", err=True)


def _pair(text: str) -> tuple[str, str]:
    name, sep, principal = text.partition("=")
    if not sep or not name or ":" not in principal:
        raise typer.BadParameter(
            f"{text!r}: expected NAME=PRINCIPAL, e.g. orders=User:orders",
            param_hint="--upstream-principal",
        )
    return name, principal


dlq = typer.Typer(no_args_is_help=True, help="Inspect and redrive the dead-letter topic.")
cli.add_typer(dlq, name="dlq")


@dlq.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(min=1, help="Most letters to show")] = 100,
) -> None:
    """Print dead letters, oldest first, one JSON object per line."""
    settings = load_settings()
    letters = _run_job(jobs.dlq.dead_letters(settings, limit=limit))
    for letter in letters:
        typer.echo(orjson.dumps(letter).decode())


@dlq.command("redrive")
def dlq_redrive() -> None:
    """Project the dead letters again (after a fix); what fails again is dead-lettered again."""
    settings = load_settings()
    projector = _run_job(jobs.dlq.redrive(settings, REGISTRY))
    typer.echo(f"applied {projector.applied}, dead-lettered again {projector.dead_lettered}")


@dlq.command("parked")
def dlq_parked() -> None:
    """Print the parked entities, longest waiting first, one JSON object per line."""
    for entry in _run_job(jobs.parked.parked(load_settings())):
        typer.echo(orjson.dumps(entry).decode())


Entity = Annotated[str, typer.Argument(help="The parked entity, as COLLECTION/KEY")]


@dlq.command("release")
def dlq_release(entity: Entity) -> None:
    """Replay an entity's parked events in order (after a fix, or once the entity exists)."""
    outcome = _run_job(jobs.parked.release(load_settings(), REGISTRY, _entity(entity)))
    typer.echo(orjson.dumps(outcome).decode())


@dlq.command("skip")
def dlq_skip(entity: Entity) -> None:
    """Set the first parked event of an entity aside (logged, sent to the dead-letter topic),
    then replay the rest in order."""
    ref = _entity(entity)
    outcome = _run_job(jobs.parked.release(load_settings(), REGISTRY, ref, skip_head=True))
    typer.echo(orjson.dumps(outcome).decode())


def _entity(text: str) -> tuple[str, str]:
    collection, slash, key = text.partition("/")
    if not slash or not key or collection not in REGISTRY.collections:
        known = ", ".join(sorted(REGISTRY.collections)) or "none"
        raise typer.BadParameter(
            f"{text!r}: expected COLLECTION/KEY, COLLECTION one of: {known}", param_hint="ENTITY"
        )
    return collection, key


@cli.command("publish")
def publish_command(
    event_type: Annotated[
        str, typer.Argument(metavar="TYPE", help="An event type this service projects or upcasts")
    ],
    data: Annotated[
        str | None, typer.Option(help="The event's data, as JSON; default: a sample")
    ] = None,
    data_file: Annotated[
        Path | None, typer.Option(help="A file holding the data, as JSON", dir_okay=False)
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Kafka key; default: the key of the entity it changes")
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Upstream topic; needed when UPSTREAM_TOPICS has several")
    ] = None,
) -> None:
    """Publish an upstream event, checked against its contract, to try this service locally.

    Without --data or --data-file, the data is a sample built from the contract."""
    settings = load_settings()
    try:
        outgoing = publishing.prepare(
            settings, REGISTRY, event_type, _data(data, data_file), key=key, topic=topic
        )
        sent = _run_job(publishing.send(settings, outgoing))
    except publishing.RefusedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    event = sent.event
    shown = {
        "topic": sent.topic,
        "partition": sent.partition,
        "offset": sent.offset,
        "key": sent.key,
        "id": event.id,
        "type": event.type,
        "data": event.data,
    }
    typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())


def _data(text: str | None, path: Path | None) -> Any:
    """The data given as JSON (None: none given); bad JSON stops the command, saying where."""
    if text is not None and path is not None:
        typer.echo("error: give --data or --data-file, not both", err=True)
        raise typer.Exit(code=2)
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            typer.echo(f"error: cannot read {path}: {exc.strerror or exc}", err=True)
            raise typer.Exit(code=2) from None
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        typer.echo(f"error: the data is not JSON: {exc}", err=True)
        raise typer.Exit(code=2) from None


gaps = typer.Typer(
    no_args_is_help=True,
    help="Partitions stopped on a gap: records deleted before they were applied.",
)
cli.add_typer(gaps, name="gaps")


@gaps.command("list")
def gaps_list(
    accepted: Annotated[
        bool, typer.Option("--accepted", help="The gaps accepted so far instead, newest first")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most accepted gaps to show")] = 100,
) -> None:
    """Print each gap of the read model now, one JSON object per line."""
    settings = load_settings()
    entries: list[dict[str, Any]]
    if accepted:
        entries = _run_job(jobs.gaps.accepted(settings, limit=limit))
    else:
        entries = [gap.as_dict() for gap in _run_job(jobs.gaps.current(settings, REGISTRY))]
    for entry in entries:
        typer.echo(orjson.dumps(entry).decode())


@gaps.command("accept")
def gaps_accept(
    topic: Annotated[str, typer.Argument(help="The topic of the partition stopped")],
    partition: Annotated[int, typer.Argument(min=0, help="The partition stopped")],
) -> None:
    """Accept the loss of the records deleted: the partition resumes from its log start.

    Only when no snapshot can recover them (the service recovers from one by itself)."""
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        gap = _run_job(jobs.gaps.accept(settings, topic, partition))
    except jobs.gaps.RefusedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"accepted: {gap.describe()}; the service resumes {topic}[{partition}] from there")


snapshot = typer.Typer(no_args_is_help=True, help="Snapshots of the read model.")
cli.add_typer(snapshot, name="snapshot")


@snapshot.command("export")
def snapshot_export(
    to: Annotated[str | None, typer.Option(help="Topic to write; default DATA_TOPIC")] = None,
) -> None:
    """Write the read model, with its positions, to a data topic (seeds another's bootstrap)."""
    settings = load_settings()
    with _progress_bar("exporting") as progress:
        summary = _run_job(
            jobs.export.export_snapshot(settings, to or settings.data_topic, progress)
        )
    typer.echo(
        f"exported {summary.entities} entities, {summary.lookup_entries} lookup entries"
        f" and {summary.positions} positions"
    )


@cli.command()
def rebuild(
    grace: Annotated[float, typer.Option(help="Seconds between swap and deleting the old")] = 5.0,
) -> None:
    """Replay into a new read-model version while the current one serves, then swap."""
    settings = load_settings()
    with _progress_bar("replaying") as progress:
        version = _run_job(
            jobs.rebuild.rebuild(settings, REGISTRY, grace_s=grace, progress=progress)
        )
    typer.echo(f"read model rebuilt: now serving version {version}")


auth = typer.Typer(
    no_args_is_help=True,
    help="Bearer tokens for local work, signed by a key of this machine's (never in production).",
)
cli.add_typer(auth, name="auth")
ENV_FILE = Path(".env")
_AUTH_SETTING = re.compile(r"^\s*(AUTH_ISSUER|AUTH_JWKS_URL|AUTH_JWKS_FILE|AUTH_DISABLED)\s*=")


@auth.command("dev-setup")
def auth_dev_setup() -> None:
    """Make a local signing key and its key set (.dev/auth), and point the service at them in .env
    (AUTH_ISSUER, AUTH_JWKS_FILE) unless .env configures authentication already."""
    issuer = DevIssuer().ensure()
    typer.echo(f"signing key {issuer.key_file}, key set {issuer.jwks_file}")
    lines = ENV_FILE.read_text().splitlines() if ENV_FILE.exists() else []
    if given := [match.group(1) for line in lines if (match := _AUTH_SETTING.match(line))]:
        typer.echo(f"{ENV_FILE} sets {', '.join(given)} already: left as it is")
        return
    with _writing(ENV_FILE), ENV_FILE.open("a") as env:
        env.write(
            f"# A local token issuer (`python -m {__package__} auth dev-setup`); production sets"
            " AUTH_ISSUER and AUTH_JWKS_URL\n"
            f"AUTH_ISSUER={issuer.issuer}\nAUTH_JWKS_FILE={issuer.jwks_file}\n"
        )
    typer.echo(f"{ENV_FILE}: AUTH_ISSUER={issuer.issuer}, AUTH_JWKS_FILE={issuer.jwks_file}")


@auth.command("dev-token")
def auth_dev_token(
    subject: Annotated[str, typer.Argument(help="Who the token is for (its `sub`)")],
    lifetime: Annotated[int, typer.Option(min=1, help="Seconds until it expires")] = 3600,
) -> None:
    """Print a bearer token for SUBJECT, signed by the local key of `auth dev-setup`."""
    settings = load_settings()
    issuer = DevIssuer(issuer=settings.auth_issuer or DEV_ISSUER)
    if not issuer.key_file.exists():
        typer.echo(
            f"error: no local signing key: run `python -m {__package__} auth dev-setup`", err=True
        )
        raise typer.Exit(code=2)
    checked_against = settings.auth_jwks_file
    if checked_against is None or checked_against.resolve() != issuer.jwks_file.resolve():
        typer.echo(
            f"warning: AUTH_JWKS_FILE is not {issuer.jwks_file}: the service refuses this token",
            err=True,
        )
    typer.echo(issuer.token(subject, settings.auth_audience, lifetime_s=lifetime))


contracts = typer.Typer(
    no_args_is_help=True, help="This service's Kafka contracts: AsyncAPI, compatibility check."
)
cli.add_typer(contracts, name="contracts")
BASELINE = Path(contracts_package.__file__).parent / "baseline.json"
BaselineOption = Annotated[Path, typer.Option(help="The committed baseline of the contracts")]


def _document() -> dict[str, Any]:
    return contracts_document(load_settings())


@contracts.command("asyncapi")
def contracts_asyncapi(
    output: Annotated[Path | None, typer.Option(help="File to write; default stdout")] = None,
) -> None:
    """Print (or write) the AsyncAPI 3.0 document of this service's topics and messages."""
    text = orjson.dumps(_document(), option=orjson.OPT_INDENT_2).decode() + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        with _writing(output):
            output.write_text(text)


@contracts.command("baseline")
def contracts_baseline(baseline: BaselineOption = BASELINE) -> None:
    """Accept the current contracts: write them as the baseline `check` compares with."""
    with _writing(baseline):
        write_baseline(baseline, messages(_document()))
    typer.echo(f"wrote {baseline}")


@contracts.command("check")
def contracts_check(baseline: BaselineOption = BASELINE) -> None:
    """Fail on backwards-incompatible changes of the contracts since the baseline."""
    try:
        accepted = load_baseline(baseline)
    except BaselineError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    report = compare(accepted, messages(_document()))
    for change in report.compatible:
        typer.echo(f"compatible: {change}")
    for change in report.breaking:
        typer.echo(f"BREAKING: {change}", err=True)
    if report.breaking:
        typer.echo(
            f"{len(report.breaking)} breaking change(s): publish a new version (a new type)"
            " instead, or accept them with `contracts baseline` once every consumer is ready",
            err=True,
        )
        raise typer.Exit(code=1)
    typer.echo("contracts are compatible with the baseline")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A file that cannot be written stops the command naming it, without a traceback."""
    try:
        yield
    except OSError as exc:
        typer.echo(f"error: cannot write {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=2) from None


@contextmanager
def _progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, fed with (done, total) records."""
    columns = [*Progress.get_default_columns(), MofNCompleteColumn(), TransferSpeedColumn()]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _run_job(job: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(job)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


@cli.callback()
def _root() -> None:
    """Event-driven read-model service."""


def main() -> None:
    cli()
