"""``eodeploy doctor``: the deployment-readiness checklist, evaluated (``eodeploy.mlops.doctor``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eodeploy.cli._common import RepoOpt, console, handle_errors, settings

_TITLES = {
    "model": "Model",
    "server": "Server",
    "database": "Database",
    "alerts": "Alerts",
    "testing": "Testing",
    "outputs": "Outputs",
}
_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@handle_errors
def doctor(
    repo: RepoOpt = None,
    server: Annotated[
        str | None, typer.Option(help="Base URL of a running server to check, e.g. http://127.0.0.1:8000.")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Results database URL (default: EODEPLOY_DATABASE_URL or sqlite:///eodeploy.db)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    results: Annotated[
        Path, typer.Option(help="Where benchmark results (serving*.json, soak.json) are written.")
    ] = Path("benchmarks/results"),
    max_age_days: Annotated[
        float, typer.Option(help="A load-test result older than this is a warning.")
    ] = 30.0,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for each network call.")] = 2.0,
) -> None:
    """Evaluate the guide's deployment-readiness checklist: models, server, database, alerts, tests.

    One line per check (✓ ok, ! warning, ✗ failure) with the fix; secrets are masked. Exit code 0 when
    all pass, 1 with warnings only, 2 with any failure. Nothing is changed and no alert is sent."""
    from eodeploy.mlops.doctor import run_doctor

    report = run_doctor(
        settings(),
        repo=repo,
        server=server,
        database_url=db,
        results_dir=results,
        max_result_age_days=max_age_days,
        timeout_s=timeout,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        raise typer.Exit(report.exit_code)
    targets = report.targets
    console.print(
        f"[bold]eodeploy doctor[/] — repository {targets['repository']}, database {targets['database']}"
        + (f", server {targets['server']}" if targets.get("server") else ""),
        highlight=False,
        soft_wrap=True,
    )
    group = None
    for check in report.checks:
        if check.group != group:
            group = check.group
            console.print(f"[bold]{_TITLES.get(group, group)}[/]")
        fix = f" [dim]→ fix:[/] {_escape(check.fix)}" if check.fix and check.status != "ok" else ""
        console.print(
            f"  [{_STYLE[check.status]}]{check.symbol}[/] {_escape(check.name)}: {_escape(check.finding)}{fix}",
            highlight=False,
            soft_wrap=True,
        )
    c = report.counts
    console.print(
        f"{c['ok']} ✓  {c['warn']} !  {c['fail']} ✗  in {report.seconds:.2f} s (exit {report.exit_code})",
        highlight=False,
    )
    raise typer.Exit(report.exit_code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
