"""`selfinstruct recipe run FILE`: the document POST /v1/recipes takes (YAML or JSON), checked
and queued by the same service, then followed to its end with the round table printed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.cli_errors import fail
from app.errors import ServiceError
from app.leases import FINAL
from app.schemas.recipes import RecipePublic
from app.settings import Settings

recipe_cli = typer.Typer(help="Run recipes: rounds of generate, judge, version, tune, evaluate.")

COLUMNS = (
    "round",
    "new_tasks",
    "version",
    "tuned_model",
    "win_rate",
    "mean_rouge_l_to_pool",
    "distinct_leading_words",
    "requests",
    "tokens",
    "stop",
)


def round_table(recipe: RecipePublic) -> list[str]:
    """The round table as tab-separated lines, a header first."""
    lines = ["\t".join(COLUMNS)]
    for row in recipe.table:
        values = row.model_dump()
        lines.append(
            "\t".join(
                f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)
                for v in (values[c] for c in COLUMNS)
            )
        )
    return lines


def execute_here(engine: Engine, settings: Settings, recipe_id: int) -> None:
    """Claim the recipe (or ablation) just queued and execute it in this process, as a worker
    would; a worker that took it first executes it instead."""
    from app.leases import claim
    from app.models import Recipe
    from app.pipeline.recipe_job import ChildHolder, execute_recipe
    from app.worker_ids import new_worker_id

    lease = claim(
        engine,
        Recipe,
        worker_id=new_worker_id(),
        lease_seconds=settings.worker_lease_seconds,
        attempts=settings.job_attempts,
        row_id=recipe_id,
    )
    if lease is not None:
        holder = ChildHolder(None, lease, lease.owner)
        asyncio.run(
            execute_recipe(engine=engine, settings=settings, recipe_id=recipe_id, worker=holder)
        )


@recipe_cli.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="The recipe, YAML or JSON.", exists=True)],
    execute: Annotated[
        bool,
        typer.Option(
            help="Execute the recipe here (its runs, judgements and evaluations too) rather "
            "than leave it to the service's workers. Fine-tunes always go to a fine-tune worker."
        ),
    ] = True,
) -> None:
    """Queue a recipe and follow it to the end, printing each step and the round table."""
    from app.db import check_migrated, make_engine
    from app.services import recipes
    from app.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    kind = "yaml" if file.suffix in (".yaml", ".yml") else "json"
    try:
        body = recipes.parse_document(file.read_bytes(), f"application/{kind}")
        with Session(engine, expire_on_commit=False) as session:
            recipe = recipes.create_recipe(session=session, settings=settings, body=body)
    except ServiceError as exc:
        fail(exc)
    assert recipe.id is not None
    typer.echo(f"recipe {recipe.id} queued: {len(body.steps)} steps x {body.rounds} rounds")
    if execute:
        execute_here(engine, settings, recipe.id)
    shown: set[tuple[int, str, str]] = set()
    while True:
        with Session(engine) as session:
            now = recipes.recipe_public(
                session=session, recipe=recipes.get_recipe(session=session, recipe_id=recipe.id)
            )
        for step in now.steps:
            if step.job is not None and (step.round, step.name, step.job.status) not in shown:
                shown.add((step.round, step.name, step.job.status))
                typer.echo(
                    f"round {step.round} {step.name}: {step.job.kind} {step.job.id} "
                    f"{step.job.status}"
                )
        if now.status in FINAL:
            break
        time.sleep(1.0)
    for line in round_table(now):
        typer.echo(line)
    typer.echo(
        f"recipe {now.id} {now.status}"
        + (f" ({now.stop_reason})" if now.stop_reason else "")
        + (f": {now.error}" if now.error else "")
    )
    if now.status != "succeeded":
        raise typer.Exit(code=1)
