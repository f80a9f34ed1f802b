"""``eodeploy models accuracy``, ``eodeploy triggers check|list`` and ``eodeploy retrain``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from eodeploy.cli._common import RepoOpt, console, err_console, handle_errors, progress, repo_path
from eodeploy.cli.monitor_cmd import DbOpt, _database, _settings


@contextmanager
def _open(cfg: Any) -> Iterator[Any]:
    """The database, its connections closed when the command ends."""
    database = _database(cfg)
    try:
        yield database
    finally:
        database.dispose()


triggers_app = typer.Typer(
    help="Retraining triggers: scheduled, live accuracy, drift, feedback volume.", no_args_is_help=True
)


@handle_errors
def accuracy(
    name: Annotated[str, typer.Argument(help="Model name.")],
    last: Annotated[int | None, typer.Option(help="Only the latest N labels per version.")] = None,
    days: Annotated[float | None, typer.Option(help="Only the labels of the last N days.")] = None,
    db: DbOpt = None,
) -> None:
    """Live accuracy of each version of a model on its feedback, with the Wilson 95 % interval."""
    from eodeploy.mlops.feedback import accuracy_by_version

    cfg = _settings(db)
    window: int | timedelta | None = last if last else timedelta(days=days) if days else None
    with _open(cfg) as database, database.session() as s:
        by_version = accuracy_by_version(s, name, window, min_labels=cfg.feedback_min_labels)
    if not by_version:
        console.print(f"no feedback for {name} yet (POST /feedback, or label an observation's map)")
        return
    table = Table(title=f"live accuracy of {name} (decisions need {cfg.feedback_min_labels} labels)")
    for col in ("version", "labels", "accuracy", "95 % interval", "decidable"):
        table.add_column(col)
    for v, a in by_version.items():
        table.add_row(str(v), str(a.n), f"{a.rate:.1%}" if a.rate is not None else "-",
                      f"{a.low:.1%} - {a.high:.1%} (±{(a.high - a.low) / 2 * 100:.1f} pt)",
                      "yes" if a.decidable else "no: too few labels")  # fmt: skip
    console.print(table)


@triggers_app.command("check")
@handle_errors
def check(
    send: Annotated[
        bool, typer.Option(help="Deliver new and pending trigger alerts (webhook, e-mail).")
    ] = True,
    db: DbOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Evaluate every retraining trigger; record the new ones (each once) and send their alerts."""
    from eodeploy.mlops.triggers import check_triggers, send_trigger_alerts
    from eodeploy.package import ModelRepository

    cfg = _settings(db, repo)
    with _open(cfg) as database:
        new = check_triggers(database, ModelRepository(repo_path(repo)), cfg)
        for t in new:
            console.print(f"[bold]{t['kind']}[/] {t['message']}", highlight=False)
        console.print(f"{len(new)} new trigger(s)")
        counts = send_trigger_alerts(database, cfg) if send else None
    if counts is not None:
        console.print(
            f"trigger alerts: {counts['sent']} sent, {counts['failed']} failed (retried next check)"
        )


@triggers_app.command("list")
@handle_errors
def list_(
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None, db: DbOpt = None
) -> None:
    """Recorded triggers, newest first."""
    from eodeploy.mlops.triggers import list_triggers

    with _open(_settings(db)) as database, database.session() as s:
        rows = list_triggers(s, model)
    if not rows:
        console.print("no retraining triggers recorded yet (eodeploy triggers check evaluates them)")
        return
    table = Table(title="retraining triggers")
    for col in ("id", "when", "kind", "model", "reason", "retrained as"):
        table.add_column(col)
    for t in rows:
        table.add_row(str(t["id"]), t["created_at"][:16], t["kind"], f"{t['model']} v{t['version']}", t["message"],
                      f"v{t['retrained_version']}" if t["retrained_version"] else "-")  # fmt: skip
    console.print(table)


@handle_errors
def retrain(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    data: Annotated[
        Path | None, typer.Option(help="Its training data (EuroSAT layout; default: EODEPLOY_DATA_DIR).")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Retrain from this version (default: latest).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recorded epoch count.")] = None,
    db: DbOpt = None,
    repo: RepoOpt = None,
) -> None:
    """The package's recorded recipe on its training data plus the labelled feedback: a new
    candidate version, scored on the original test split and on held-back feedback."""
    from eodeploy.mlops.retrain import retrain as run
    from eodeploy.package import ModelRepository

    cfg = _settings(db, repo)
    with _open(cfg) as database, progress() as bar:
        task = bar.add_task("retraining", total=epochs, info="")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            bar.update(task, completed=epoch, info=f"val acc {row['val_acc']:.3f}")
            if not err_console.is_terminal:
                err_console.print(f"epoch {epoch}: val acc {row['val_acc']:.3f}")

        pkg, summary = run(
            database, ModelRepository(repo_path(repo)), cfg, name, data, version, on_epoch, epochs
        )
    t = summary["test"]
    console.print(
        f"wrote [bold]{pkg.name}[/] v{pkg.version} (from v{summary['source_version']}, "
        f"{summary['feedback_train']} feedback patches trained on, {summary['feedback_holdout']} held back): "
        f"test accuracy {t['accuracy']:.2%} (n={t['n']})"
    )
    for key, label in (
        ("source_on_holdout", f"v{summary['source_version']}"),
        ("candidate_on_holdout", f"v{pkg.version}"),
    ):
        h: dict[str, Any] | None = summary.get(key)
        if h:
            console.print(f"held-back feedback, {label}: {h['text']}", highlight=False)
    console.print("candidate only: roll it out with 'eodeploy models route' or a canary rollout")
