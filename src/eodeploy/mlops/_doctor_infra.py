"""The doctor's checks of the results database (reachable, migrations, backups, disk), the
load-test results and the latest observation's maps. Read-only: no file is created, nothing is
migrated."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

# Imported here, before the checks start in threads: a first import from several threads at once
# can see a half-initialised module.
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from eodeploy._secrets import mask_url
from eodeploy.geo.outputs import CLASSES_TIF
from eodeploy.mlops.doctor import FAIL, OK, WARN, Check
from eodeploy.monitor.db import MIGRATIONS, Observation
from eodeploy.settings import Settings

#: SQLite backups younger than this pass.
BACKUP_MAX_AGE_S = 24 * 3600
#: Free space for observation maps: fail below the first, warn below the second.
DISK_FAIL_BYTES, DISK_WARN_BYTES = 1 * 2**30, 5 * 2**30
GiB = 2**30


@contextmanager
def connect(url: str, timeout_s: float) -> Iterator[Any]:
    """A plain connection that creates nothing (no file, no WAL switch, no migration)."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        args: dict[str, Any] = {"timeout": timeout_s}
    elif backend == "postgresql":
        args = {"connect_timeout": max(1, round(timeout_s))}
    else:
        args = {}
    engine = create_engine(u, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).expanduser()


def reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def database_checks(settings: Settings, url: str, timeout_s: float) -> list[Check]:
    shown = mask_url(url)
    try:
        backend = make_url(url).get_backend_name()
    except Exception:  # noqa: BLE001 - sqlalchemy raises several types for a bad URL
        return [
            Check(
                "database",
                "reachable",
                FAIL,
                f"{shown} is not a database URL",
                "use sqlite:///path.db or postgresql+psycopg://user@host:5432/db",
            )
        ]
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return [
            Check(
                "database",
                "reachable",
                WARN,
                f"no database file at {path} yet",
                "it is created and migrated on first use (eodeploy serve, eodeploy monitor add)",
            )
        ] + [disk_check(settings.monitor_dir)]
    checks: list[Check] = []
    try:
        with connect(url, timeout_s) as conn:
            version = conn.execute(
                text("select sqlite_version()" if backend == "sqlite" else "show server_version")
            ).scalar()
            kind = "SQLite" if backend == "sqlite" else "PostgreSQL" if backend == "postgresql" else backend
            checks.append(Check("database", "reachable", OK, f"{kind} {version} at {shown}"))
            checks.append(migration_check(conn, url))
    except Exception as exc:  # noqa: BLE001 - drivers raise their own types
        return [
            Check(
                "database",
                "reachable",
                FAIL,
                f"cannot open {shown} ({reason(exc)})",
                "check that the database is running and EODEPLOY_DATABASE_URL (or --db) names it",
            )
        ]
    checks.append(backup_check(settings, url, path))
    checks.append(disk_check(settings.monitor_dir))
    return checks


def migration_check(conn: Any, url: str) -> Check:
    """Alembic's current revision of the database against the newest this code knows."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return Check("database", "migrations", OK, f"at head {', '.join(sorted(heads))}")
    at = ", ".join(sorted(current)) or "none (no eodeploy tables)"
    return Check(
        "database",
        "migrations",
        FAIL,
        f"migrations not current: the database is at {at}, this eodeploy at {', '.join(sorted(heads))}",
        "back the database up, then start the server or run any eodeploy monitor command "
        "(e.g. eodeploy monitor runs --db URL): each migrates to head under the migration lock",
    )


def backup_check(settings: Settings, url: str, path: Path | None) -> Check:
    if path is None:
        u = make_url(url)
        if u.get_backend_name() != "postgresql":
            return Check(
                "database",
                "backup",
                WARN,
                f"cannot tell how a {u.get_backend_name()} database is backed up",
                "back it up with its own tools and test a restore",
            )
        cmd = (
            f"pg_dump -Fc -h {u.host or 'localhost'} -p {u.port or 5432} -U {u.username or 'postgres'} "
            f"-d {u.database} -f {u.database}-$(date +%F).dump"
        )
        return Check(
            "database",
            "backup",
            WARN,
            "PostgreSQL: backups are not visible from here",
            f"schedule {cmd} (password from ~/.pgpass), and test a restore with pg_restore",
        )
    folders = [path.parent] + ([settings.backup_dir] if settings.backup_dir else [])
    now = time.time()
    found: list[tuple[float, Path]] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            in_backup_dir = settings.backup_dir is not None and folder == settings.backup_dir
            named = f.name.startswith(path.stem) and ("bak" in f.name.lower() or "backup" in f.name.lower())
            if f.is_file() and f != path and (named or (in_backup_dir and f.name.startswith(path.stem))):
                found.append((f.stat().st_mtime, f))
    fix = (
        f"sqlite3 {path} \".backup '{path}.bak'\" daily (an online, consistent copy), "
        "or set EODEPLOY_BACKUP_DIR to where your backups go"
    )
    if not found:
        return Check(
            "database",
            "backup",
            WARN,
            f"no backup of {path.name} beside it"
            + (f" or in {settings.backup_dir}" if settings.backup_dir else ""),
            fix,
        )
    mtime, newest = max(found)
    age_h = (now - mtime) / 3600
    if now - mtime > BACKUP_MAX_AGE_S:
        return Check(
            "database", "backup", WARN, f"newest backup {newest.name} is {age_h / 24:.1f} days old", fix
        )
    return Check("database", "backup", OK, f"{newest.name}, {age_h:.1f} h old")


def disk_check(folder: Path) -> Check:
    """Free space where observation maps are written (EODEPLOY_MONITOR_DIR, or its nearest parent)."""
    probe = folder.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free = f"{usage.free / GiB:.1f} GiB free of {usage.total / GiB:.0f} GiB for {folder}"
    fix = "free space or point EODEPLOY_MONITOR_DIR at a larger volume"
    if usage.free < DISK_FAIL_BYTES:
        return Check("database", "disk", FAIL, free, fix)
    if usage.free < DISK_WARN_BYTES:
        return Check("database", "disk", WARN, free, fix)
    return Check("database", "disk", OK, free)


# --- load test and outputs -----------------------------------------------------------------------
def load_test_checks(results_dir: Path, max_age_days: float) -> list[Check]:
    files = sorted(results_dir.glob("serving*.json")) + sorted(results_dir.glob("soak.json"))
    fix = "python benchmarks/serving.py (throughput and latency) or python benchmarks/soak.py (hours under load)"
    if not files:
        return [Check("testing", "load test", WARN, f"no serving*.json or soak.json in {results_dir}", fix)]
    mtime, newest = max((f.stat().st_mtime, f) for f in files)
    try:
        json.loads(newest.read_text())
    except (OSError, ValueError) as exc:
        return [Check("testing", "load test", WARN, f"{newest.name} cannot be read ({exc})", fix)]
    age_days = (time.time() - mtime) / 86400
    when = datetime.fromtimestamp(mtime).strftime("%Y-%m-%d")
    if age_days > max_age_days:
        return [
            Check(
                "testing",
                "load test",
                WARN,
                f"{newest.name} is {age_days:.0f} days old (from {when}), older than {max_age_days:.0f}",
                fix,
            )
        ]
    return [Check("testing", "load test", OK, f"{newest.name} from {when} ({age_days:.1f} days old)")]


def cog_checks(url: str, timeout_s: float) -> list[Check]:
    """The latest observation's class map: overviews built with MODE (``geo.outputs.to_cog``)."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return []
    try:
        with connect(url, timeout_s) as conn, Session(conn) as s:
            row = s.execute(
                select(Observation.id, Observation.outputs)
                .where(Observation.outputs.is_not(None))
                .order_by(Observation.scene_datetime.desc(), Observation.id.desc())
                .limit(1)
            ).first()
    except Exception:  # noqa: BLE001 - the database checks report why
        return []
    if row is None:
        return []
    name = f"COG overviews (observation {row[0]})"
    tif = Path(str(row[1])) / CLASSES_TIF
    if not tif.is_file():
        return [
            Check(
                "outputs",
                name,
                WARN,
                f"{tif} is missing",
                "re-run the area (eodeploy monitor run) or restore the monitoring folder",
            )
        ]
    import rasterio

    with rasterio.open(tif) as ds:
        alg, overviews = ds.tags().get("OVR_RESAMPLING_ALG"), ds.overviews(1)
    if alg == "MODE":
        built = (
            f"{len(overviews)} overviews built with MODE"
            if overviews
            else "overviews set to MODE (none needed at this size)"
        )
        return [Check("outputs", name, OK, f"{CLASSES_TIF}: {built}")]
    fix = "re-run the observation with this version (eodeploy monitor run): maps are written by geo.outputs.to_cog"
    if alg is None:
        return [
            Check("outputs", name, WARN, f"{CLASSES_TIF} records no overview resampling (older writer)", fix)
        ]
    return [
        Check(
            "outputs",
            name,
            FAIL,
            f"{CLASSES_TIF} overviews use {alg}: averaged class codes are other classes at coarse zooms",
            fix,
        )
    ]
