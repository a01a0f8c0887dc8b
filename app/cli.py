"""The `selfinstruct` command: the same services as the HTTP API, from a shell."""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from sqlmodel import Session

from app.cli_errors import fail
from app.db import NotMigratedError, check_migrated, make_engine, migrate
from app.errors import ServiceError
from app.models import Dataset
from app.schemas.datasets import HUB_LICENSE_PATTERN, BundleFileFormat, ExportFormat, ExportSplit
from app.schemas.versions import VersionCreate
from app.services import versions
from app.services.bundle import bundle_options, write_bundle
from app.services.bundle import push_to_hub as hub_upload
from app.services.datasets import get_dataset
from app.services.export import Selection, export_chunks
from app.services.seeds import import_seeds, parse_json_array, parse_jsonl
from app.settings import Settings, get_settings
from app.strategies import DEFAULT_STRATEGY, StrategyName

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from app.finetune.supervisor import FinetuneSupervisor

cli = typer.Typer(help="Grow instruction-tuning data with Self-Instruct.", no_args_is_help=True)
seeds_cli = typer.Typer(help="Manage seed tasks.", no_args_is_help=True)
cli.add_typer(seeds_cli, name="seeds")
version_cli = typer.Typer(
    help="Freeze and list dataset versions (the same data, byte for byte, later).",
    no_args_is_help=True,
)
cli.add_typer(version_cli, name="version")


def _add_recipe_cli() -> None:
    from app.recipe_cli import recipe_cli

    cli.add_typer(recipe_cli, name="recipe")


_add_recipe_cli()


def _add_ablation_cli() -> None:
    from app.ablation_cli import ablate

    cli.command("ablate")(ablate)


_add_ablation_cli()


MAX_API_PROCESSES = 64  # `serve --workers`: more is a mistake, not a bigger machine


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_API_PROCESSES,
            help="API processes sharing the port. Whatever the number, the service runs one "
            "generation worker and one supervised fine-tune worker.",
        ),
    ] = 1,
) -> None:
    """Start the HTTP API (the docs are at /docs) and a fine-tune worker it supervises.

    Beyond loopback it needs SELFINSTRUCT_API_TOKEN, and refuses to start without one."""
    import uvicorn

    from app.finetune.supervisor import FinetuneSupervisor
    from app.main import create_app

    settings = get_settings()
    bind_host = host or settings.host
    # before the database is touched: an open API must not start, not even half way
    unguarded = settings.unguarded_bind(bind_host)
    if unguarded:
        typer.echo(f"error: {unguarded}", err=True)
        raise typer.Exit(code=2)
    engine = make_engine(settings)
    try:
        check_migrated(settings, engine)
    except NotMigratedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    supervisor = FinetuneSupervisor(engine=engine, settings=settings)
    serving = {
        "host": bind_host,
        "port": port or settings.port,
        "timeout_keep_alive": 75,  # above common proxy idle timeouts, so proxies close first
    }
    if workers > 1:
        _serve_processes(engine, settings, supervisor, workers, serving)
        return
    # uvicorn shuts down gracefully on SIGINT or SIGTERM, then raises the signal again with the
    # handler it found; this one lets the worker be stopped before the process ends on it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_stopped)
    stopped_by: int | None = None
    supervisor.start()
    try:
        uvicorn.run(create_app(settings), **serving)  # type: ignore[arg-type]
    except _Stopped as exc:
        stopped_by = exc.signum
    finally:
        supervisor.stop()
        engine.dispose()
    if stopped_by is not None:  # end as the signal would have ended it
        signal.signal(stopped_by, signal.SIG_DFL)
        signal.raise_signal(stopped_by)


def _serve_processes(
    engine: Engine,
    settings: Settings,
    supervisor: FinetuneSupervisor,
    processes: int,
    serving: dict[str, object],
) -> None:
    """`serve --workers N`: uvicorn starts N API processes on the one port (and restarts one
    that dies); this process, their parent, runs the one generation worker and supervises the
    one fine-tune worker, so N never multiplies background work and an API process that dies
    takes no run with it. The API processes read the same settings from the environment, with
    their own worker turned off."""
    import uvicorn

    from app.worker import Worker

    os.environ["SELFINSTRUCT_EMBEDDED_WORKER"] = "false"  # for the API processes only
    worker = Worker(engine=engine, settings=settings) if settings.embedded_worker else None
    thread = worker.start_thread() if worker else None
    supervisor.start()
    try:
        # uvicorn's parent handles SIGINT and SIGTERM itself: it stops the API processes and
        # returns, and the workers here stop after them.
        uvicorn.run("app.main:create_app", factory=True, workers=processes, **serving)  # type: ignore[arg-type]
    finally:
        if worker is not None and thread is not None:
            worker.stop()
            thread.join(timeout=30)
        supervisor.stop()
        engine.dispose()


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


@cli.command("migrate")
def migrate_cmd() -> None:
    """Apply database migrations up to the current schema."""
    settings = get_settings()
    migrate(settings)
    typer.echo(f"database is at the current schema ({settings.db_url.split('@')[-1]})")


@seeds_cli.command("import")
def seeds_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL or JSON file.")],
    dataset: Annotated[str, typer.Option(help="Target dataset.")] = "default",
) -> None:
    """Import a Self-Instruct seed file; nothing is stored if any line is invalid."""
    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    raw = file.read_bytes()
    parse = parse_json_array if raw.lstrip()[:1] == b"[" else parse_jsonl
    try:
        seeds = parse(raw, max_tasks=settings.seed_import_max_tasks)
        with Session(engine, expire_on_commit=False) as session:
            target = get_dataset(session=session, name=dataset)
            result = import_seeds(session=session, dataset=target, seeds=seeds)
    except ServiceError as exc:
        fail(exc)
    typer.echo(f"{result.created} created, {result.updated} updated in '{result.dataset}'")


@version_cli.command("create")
def version_create(
    dataset: Annotated[str, typer.Option(help="Dataset to freeze.")] = "default",
    tag: Annotated[str | None, typer.Option(help="A name of your choosing.")] = None,
    include_seeds: Annotated[bool, typer.Option(help="Add the seed tasks.")] = False,
    split: Annotated[
        ExportSplit, typer.Option(help="train, held_out or all, as for export.")
    ] = ExportSplit.train,
    min_rating: Annotated[
        str | None, typer.Option(help="Only tasks rated this or better (A-D).")
    ] = None,
    include_contaminated: Annotated[
        bool, typer.Option(help="Also tasks marked contaminated.")
    ] = False,
) -> None:
    """Freeze the selected tasks as a version; prints its id and content hash."""
    try:
        body = VersionCreate(
            tag=tag,
            include_seeds=include_seeds,
            split=split,
            min_rating=min_rating,  # type: ignore[arg-type]
            include_contaminated=include_contaminated,
        )
    except ValidationError as exc:
        typer.echo(f"error: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(code=2) from None
    engine = _migrated_engine()
    try:
        with Session(engine, expire_on_commit=False) as session:
            target = get_dataset(session=session, name=dataset)
            version = versions.create_version(
                session=session,
                dataset=target,
                selection=Selection(**body.model_dump(exclude={"tag"})),
                tag=body.tag,
            )
    except ServiceError as exc:
        fail(exc)
    typer.echo(f"version {version.id}: {version.tasks:,} tasks, sha256 {version.content_sha256}")


@version_cli.command("list")
def version_list(
    dataset: Annotated[str, typer.Option(help="Dataset whose versions to list.")] = "default",
) -> None:
    """List a dataset's versions, newest first: id, tag, tasks, split, hash, when made."""
    engine = _migrated_engine()
    try:
        with Session(engine) as session:
            target = get_dataset(session=session, name=dataset)
            rows = versions.list_versions(session=session, dataset=target)
    except ServiceError as exc:
        fail(exc)
    typer.echo("id\ttag\ttasks\tsplit\tsha256\tcreated")
    for v in rows:
        typer.echo(
            f"{v.id}\t{v.tag or '-'}\t{v.tasks}\t{v.selection.get('split')}\t"
            f"{v.content_sha256[:16]}\t{v.created_at:%Y-%m-%d %H:%M}"
        )


def _migrated_engine() -> Engine:
    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    return engine


def _hub_token() -> str:
    """The Hugging Face token `huggingface_hub` finds (HF_TOKEN, else `hf auth login`'s file)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        typer.echo(
            "error: --push-to-hub needs a Hugging Face token with write access: set HF_TOKEN "
            "or run `hf auth login`; nothing was exported.",
            err=True,
        )
        raise typer.Exit(code=2)
    return token


def _write_stream(chunks: Iterator[bytes], output: Path | None) -> None:
    if output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    with output.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
    typer.echo(f"wrote {output}", err=True)


@cli.command()
def export(
    dataset: Annotated[str, typer.Option(help="Dataset to export.")] = "default",
    format: Annotated[
        ExportFormat, typer.Option(help="A JSONL record shape, or parquet (flat rows).")
    ] = ExportFormat.self_instruct,
    include_seeds: Annotated[bool, typer.Option(help="Add the seed tasks.")] = False,
    split: Annotated[
        ExportSplit | None,
        typer.Option(
            help="train: outside the dataset's held-out share (the default); held_out: only "
            "that share; all: both. With --version, the side each task had when it was frozen "
            "(default all). Not used by --bundle, which splits itself."
        ),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(help="Export this version's frozen tasks (`selfinstruct version list`)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File; stdout if absent.")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Write a Hub-ready bundle (splits and dataset card) into this new or empty "
            "directory instead of one file; --format is not used."
        ),
    ] = None,
    bundle_format: Annotated[
        BundleFileFormat, typer.Option(help="The bundle's split files.")
    ] = BundleFileFormat.parquet,
    license: Annotated[
        str, typer.Option(help="The card's Hub license id (apache-2.0, cc-by-4.0, mit, ...).")
    ] = "other",
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            help="Upload the bundle to this Hub dataset repository (user/name); needs HF_TOKEN."
        ),
    ] = None,
    private: Annotated[
        bool, typer.Option(help="Create the Hub repository private (if it is new).")
    ] = True,
) -> None:
    """Write accepted tasks as JSONL or Parquet, or a Hub-ready bundle (--bundle, --push-to-hub)."""
    if not re.fullmatch(HUB_LICENSE_PATTERN, license):
        typer.echo(
            f"error: --license '{license}' is not a Hub license id (e.g. apache-2.0).", err=True
        )
        raise typer.Exit(code=2)
    if bundle is not None and bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir())):
        typer.echo(f"error: --bundle {bundle} must be a new or empty directory.", err=True)
        raise typer.Exit(code=2)
    token = _hub_token() if push_to_hub else None  # before any work, so a missing one costs nothing
    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    try:
        with Session(engine, expire_on_commit=False) as session:
            target = get_dataset(session=session, name=dataset)
            source = versions.export_source(
                session=session,
                dataset=target,
                version_id=version,
                selection=Selection(include_seeds=include_seeds),
                split=split,
            )
            options = bundle_options(
                session=session,
                dataset=target,
                version_id=version,
                file_format=bundle_format,
                license=license,
                include_seeds=include_seeds,
            )
    except ServiceError as exc:
        fail(exc)
    assert target.id is not None
    if bundle is None and push_to_hub is None:
        chunks = export_chunks(engine=engine, dataset_id=target.id, fmt=format, selection=source)
        _write_stream(chunks, output)
        return
    with tempfile.TemporaryDirectory(prefix="selfinstruct-bundle-") as tmp:
        directory = bundle or Path(tmp)
        summary = write_bundle(engine=engine, dataset=target, directory=directory, options=options)
        # The second split is `test` (the held-out share) or `validation`.
        rows = ", ".join(f"{split} {n:,} rows" for split, n in summary.counts.rows.items())
        typer.echo(f"wrote {', '.join(summary.files)} to {directory} ({rows})", err=True)
        if push_to_hub and token:
            url = hub_upload(directory=directory, repo_id=push_to_hub, token=token, private=private)
            typer.echo(f"uploaded to {url}", err=True)


def _serve_metrics(settings: Settings, port: int) -> None:
    """A worker's model calls happen in its own process: it serves them itself."""
    from prometheus_client import start_http_server

    from app.llm import price_table
    from app.metrics import REGISTRY, use_prices

    use_prices(price_table(settings))
    start_http_server(port, addr=settings.host, registry=REGISTRY)


@cli.command()
def worker(
    kind: Annotated[
        str,
        typer.Option(help="generate (runs, judgement jobs, evaluations) or finetune (fine-tunes)."),
    ] = "generate",
    device: Annotated[str | None, typer.Option(help="finetune: auto, cpu or cuda.")] = None,
    once: Annotated[bool, typer.Option(help="Exit when nothing is waiting.")] = False,
    api_url: Annotated[
        str | None, typer.Option(help="finetune: work for this API over HTTP, not the database.")
    ] = None,
    worker_token: Annotated[
        str | None, typer.Option(envvar="SELFINSTRUCT_WORKER_TOKEN", help="With --api-url.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve this process's model-call metrics for Prometheus on this port."),
    ] = None,
    parent_pid: Annotated[
        int | None,
        typer.Option(hidden=True, help="`selfinstruct serve` supervises this worker: end with it."),
    ] = None,
) -> None:
    """Claim and execute queued jobs of one kind of worker (as many workers as you like)."""
    if kind not in {"generate", "finetune"}:
        typer.echo("error: --kind must be 'generate' or 'finetune'", err=True)
        raise typer.Exit(code=2)
    if api_url is not None:
        from app.finetune.remote import RemoteFinetuneWorker

        if kind != "finetune" or not worker_token:
            typer.echo("error: --api-url runs a finetune worker and needs --worker-token", err=True)
            raise typer.Exit(code=2)
        remote = RemoteFinetuneWorker(
            api_url=api_url,
            token=worker_token,
            device=device or "auto",
            work_dir=get_settings().data_dir / "remote-worker",
        )
        typer.echo(f"remote finetune worker {remote.worker_id} polling {api_url}", err=True)
        remote.run_forever(once=once)
        return
    import asyncio

    from app.worker import Worker

    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    if metrics_port is not None:
        _serve_metrics(settings, metrics_port)
    runner = Worker(engine=engine, settings=settings, kind=kind, device=device)
    # SIGTERM (docker stop, a supervisor) stops the worker at the next optimizer step; it hands
    # its job back, to be resumed from the last checkpoint by the next worker.
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    if parent_pid is not None:
        from app.finetune.supervisor import follow_parent

        follow_parent(parent_pid, runner.stop)
    typer.echo(f"{kind} worker {runner.worker_id} waiting", err=True)
    try:
        asyncio.run(runner.run_forever(once=once))
    except KeyboardInterrupt:
        runner.stop()


def _add_documents(
    session: Session, settings: Settings, dataset: Dataset, paths: list[Path]
) -> None:
    from app.services.documents import DEFAULT_PASSAGE_CHARS, add_documents, parse_document

    parsed = [
        parse_document(
            path.name,
            path.read_bytes(),
            declared=None,
            max_bytes=settings.document_max_bytes,
            max_chars=DEFAULT_PASSAGE_CHARS,
        )
        for path in paths
    ]
    for doc in add_documents(session=session, dataset=dataset, parsed=parsed):
        typer.echo(f"document {doc.id} '{doc.name}': {doc.passages} passages")


@cli.command()
def generate(
    target: Annotated[int, typer.Option(help="Accepted instructions to reach.")],
    dataset: Annotated[str, typer.Option(help="Dataset to grow.")] = "default",
    model: Annotated[str | None, typer.Option(help="A model id from GET /v1/models.")] = None,
    strategy: Annotated[
        StrategyName,
        typer.Option(
            help="How prompts construct candidates (GET /v1/strategies describes each); one "
            "that needs documents takes them from --document or the dataset.",
        ),
    ] = DEFAULT_STRATEGY,
    params: Annotated[
        str | None, typer.Option(help="More run parameters as JSON, as POST /v1/.../runs takes.")
    ] = None,
    document: Annotated[
        list[Path] | None,
        typer.Option(
            help="A text, Markdown or JSONL file to add to the dataset's documents first "
            "(repeat for several), for a strategy that writes instructions for documents."
        ),
    ] = None,
) -> None:
    """Run a generation here, with a live progress bar, through the same code as the API."""
    import asyncio
    import json
    import threading

    from pydantic import ValidationError

    from app.leases import claim_run
    from app.pipeline import execute_run
    from app.schemas.runs import RunCreate
    from app.services.runs import create_run
    from app.worker import Worker

    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    body: dict[str, object] = {"target": target, "strategy": strategy, **json.loads(params or "{}")}
    if model:
        body["model"] = model
    try:
        with Session(engine, expire_on_commit=False) as session:
            target_ds = get_dataset(session=session, name=dataset)
            if document:
                _add_documents(session, settings, target_ds, document)
            run = create_run(
                session=session,
                settings=settings,
                dataset=target_ds,
                body=RunCreate.model_validate(body),
            )
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    except ServiceError as exc:
        fail(exc)
    assert run.id is not None
    runner = Worker(engine=engine, settings=settings)
    runner.lease = claim_run(
        engine,
        worker_id=runner.worker_id,
        run_id=run.id,
        lease_seconds=settings.worker_lease_seconds,
        attempts=settings.job_attempts,
    )
    if runner.lease is None:
        typer.echo(f"run {run.id} was taken by another worker; follow it over HTTP", err=True)
        return
    done = threading.Event()
    run_id = run.id

    def execute() -> None:
        try:
            asyncio.run(execute_run(engine=engine, settings=settings, run_id=run_id, worker=runner))
        finally:  # a run that raises must not leave the progress loop waiting for ever
            done.set()

    thread = threading.Thread(target=execute)
    thread.start()
    _progress(engine, run.id, target, done)
    thread.join()
    with Session(engine) as session:
        from app.models import Run

        final = session.get(Run, run.id)
    assert final is not None
    typer.echo(
        f"run {run.id} {final.status}: {final.accepted} accepted, {final.rejected} "
        f"rejected ({final.state.get('stop_reason')}){' - ' + final.error if final.error else ''}"
    )
    if final.status != "succeeded":
        raise typer.Exit(code=1)


def _progress(engine: object, run_id: int, target: int, done: object) -> None:
    from app.models import Run

    shown = 0
    with typer.progressbar(length=target, label=f"run {run_id}") as bar:
        while not done.is_set():  # type: ignore[attr-defined]
            with Session(engine) as session:  # type: ignore[arg-type]
                run = session.get(Run, run_id)
                accepted = run.accepted if run else 0
            bar.update(accepted - shown)
            shown = accepted
            done.wait(0.5)  # type: ignore[attr-defined]


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
