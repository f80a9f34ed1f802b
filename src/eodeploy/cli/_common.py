"""Shared CLI plumbing: settings, console, and turning domain errors into clear messages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from eodeploy.errors import EodeployError
from eodeploy.settings import Settings

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


RepoOpt = Annotated[
    Path | None, typer.Option("--repo", help="Model repository (default: EODEPLOY_MODEL_REPO or ./models).")
]


def settings() -> Settings:
    return Settings()


def repo_path(repo: Path | None) -> Path:
    """The --repo option, else the configured model repository."""
    return repo if repo is not None else settings().model_repo


def handle_errors(fn: F) -> F:
    """Print an EodeployError as one red line and exit 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EodeployError as exc:
            # escape: "pip install 'eodeploy[plot]'" is not Rich markup
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
