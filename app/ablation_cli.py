"""`selfinstruct ablate`: queue an ablation with the same checks as POST /v1/ablations, run it
(as the recipe it is) and print which group's removal helped, most helpful first."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from sqlmodel import Session

from app.cli_errors import fail
from app.errors import ServiceError
from app.leases import FINAL
from app.schemas.ablations import AblationCreate, AblationPublic

COLUMNS = ("group", "tasks", "change", "ci_low", "ci_high", "samples", "model")


def report_lines(ablation: AblationPublic) -> list[str]:
    """The report as tab-separated lines, a header first, most helpful removal first."""
    lines = ["\t".join(COLUMNS)]
    for row in ablation.groups:
        values = row.model_dump()
        lines.append(
            "\t".join(
                f"{v:+.3f}" if isinstance(v, float) else "-" if v is None else str(v)
                for v in (values[c] for c in COLUMNS)
            )
        )
    return lines


def ablate(
    dataset: Annotated[str, typer.Option(help="The dataset.")],
    version: Annotated[int, typer.Option(help="The version to take apart (made with split=all).")],
    grouping: Annotated[str, typer.Option(help="strategy, origin, run, language or rating.")],
    model: Annotated[str, typer.Option(help="The base model every fine-tune starts from.")],
    judge: Annotated[str, typer.Option(help="The model that compares answers.")],
    finetune: Annotated[
        str, typer.Option(help="Fine-tune settings as JSON (lora, max_steps, seed, ...).")
    ] = "{}",
    limit: Annotated[int, typer.Option(help="Held-out tasks each evaluation uses.")] = 20,
    confirm: Annotated[
        bool, typer.Option(help="Run it even above SELFINSTRUCT_ABLATION_CONFIRM_ABOVE.")
    ] = False,
    execute: Annotated[
        bool,
        typer.Option(help="Execute it here rather than leave it to the service's workers."),
    ] = True,
) -> None:
    """Train a model per group left out and one on everything; report each group's change in
    win rate against the full model (95% interval), most helpful removal first."""
    from app.db import check_migrated, make_engine
    from app.recipe_cli import execute_here
    from app.services import ablations
    from app.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings)
    check_migrated(settings, engine)
    try:
        body = AblationCreate.model_validate(
            {
                "dataset": dataset,
                "version": version,
                "grouping": grouping,
                "model": model,
                "judge": judge,
                "finetune": json.loads(finetune),
                "limit": limit,
                "confirm": confirm,
            }
        )
        with Session(engine, expire_on_commit=False) as session:
            recipe = ablations.create_ablation(session=session, settings=settings, body=body)
            cost = ablations.ablation_public(session=session, recipe=recipe).cost
    except ServiceError as exc:
        fail(exc)
    except ValueError as exc:  # bad JSON or a field out of range
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    assert recipe.id is not None
    typer.echo(
        f"ablation {recipe.id} queued: {cost.fine_tunes} fine-tunes, {cost.judge_requests} judge "
        f"requests, estimated {cost.estimated_seconds or 'unknown'} s on {cost.device}"
    )
    if execute:
        execute_here(engine, settings, recipe.id)
    while True:
        with Session(engine) as session:
            found = ablations.get_ablation(session=session, ablation_id=recipe.id)
            now = ablations.ablation_public(session=session, recipe=found)
        if now.status in FINAL:
            break
        time.sleep(1.0)
    for line in report_lines(now):
        typer.echo(line)
    typer.echo(f"ablation {now.id} {now.status}" + (f": {now.error}" if now.error else ""))
    if now.status != "succeeded":
        raise typer.Exit(code=1)
