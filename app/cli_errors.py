"""How the command line reports a refusal: the service's message, then each problem, and exit
status 2 (the shell's "wrong usage"), for every command alike."""

from __future__ import annotations

from typing import NoReturn

import typer

from app.errors import ServiceError


def fail(exc: ServiceError) -> NoReturn:
    typer.echo(f"error: {exc.detail}", err=True)
    for item in exc.errors:
        where = f"line {item.line}" if item.line is not None else "body"
        typer.echo(f"  {where}: {item.field + ': ' if item.field else ''}{item.reason}", err=True)
    raise typer.Exit(code=2)
