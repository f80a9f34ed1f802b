"""``eodeploy data``: get training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eodeploy.cli._common import console, handle_errors, progress

app = typer.Typer(help="Download and inspect training data.", no_args_is_help=True)


@app.command()
@handle_errors
def download(
    dataset: Annotated[str, typer.Argument(help="eurosat")],
    dest: Annotated[Path, typer.Option(help="Folder to download into.")] = Path("data"),
    variant: Annotated[str, typer.Option(help="ms (13-band GeoTIFF) or rgb (JPEG).")] = "ms",
) -> None:
    """Download an official archive, verify its checksum and unpack it."""
    from eodeploy.data.download import download_eurosat
    from eodeploy.errors import DataError

    if dataset != "eurosat":
        raise DataError(f"unknown dataset {dataset!r}; available: eurosat")
    with progress() as bar:
        task = bar.add_task(f"EuroSAT {variant}", total=None, info="")
        root = download_eurosat(
            dest,
            variant,
            lambda done, total: bar.update(
                task, completed=done, total=total or None, info=f"{done / 2**20:.0f} MiB"
            ),
        )
    console.print(f"EuroSAT {variant} ready at {root}")
