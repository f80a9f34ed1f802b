"""The results database: tables, engine with connection retries, Alembic migrations, sessions.

Times are stored as naive UTC. Geometries are kept as GeoJSON (WGS84) and as WKB, so any
database holds them; nothing here needs PostGIS.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from eodeploy.errors import ConflictError, DatabaseBusyError, DatabaseUnavailableError

log = logging.getLogger("eodeploy.monitor")
T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Area(Base):
    """An area of interest: where, with which model, which class, and when to alert."""

    __tablename__ = "areas"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    geojson: Mapped[dict[str, Any]] = mapped_column(JSON)  # WGS84 geometry
    wkb: Mapped[bytes] = mapped_column(LargeBinary)
    area_ha: Mapped[float] = mapped_column(Float)  # geodesic
    model: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(50), default="latest")  # number, label or latest
    target_class: Mapped[str] = mapped_column(String(100))
    threshold_ha: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    alert_on: Mapped[str] = mapped_column(String(10), default="any")  # loss, gain or any
    min_observed: Mapped[float] = mapped_column(Float, default=0.7)
    mmu_ha: Mapped[float] = mapped_column(Float, default=0.5)
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    baseline_start: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    baseline_end: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    emails: Mapped[list[Any]] = mapped_column(JSON, default=list)
    interval_hours: Mapped[float] = mapped_column(Float, default=24.0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    observations: Mapped[list[Observation]] = relationship(
        back_populates="area", cascade="all, delete-orphan", passive_deletes=True
    )


class Run(Base):
    """One pass of ``monitor run``: when, over what, how it ended."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running/succeeded/failed/interrupted
    trigger: Mapped[str] = mapped_column(String(20), default="cli")
    as_of: Mapped[datetime] = mapped_column(DateTime)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Observation(Base):
    """One area seen in one scene by one model version. Unique per (area, scene, version): reruns
    store nothing twice."""

    __tablename__ = "observations"
    __table_args__ = (UniqueConstraint("area_id", "scene_id", "model_version", name="uq_observation"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)
    scene_id: Mapped[str] = mapped_column(String(500))
    scene_datetime: Mapped[datetime] = mapped_column(DateTime)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))  # ok, cloudy
    target_ha: Mapped[float] = mapped_column(Float)  # target class seen in the observed part
    observed_ha: Mapped[float] = mapped_column(Float)
    observed_share: Mapped[float] = mapped_column(Float)
    #: target_ha / observed_share: the target area over the whole area, clouds filled in proportionally
    estimate_ha: Mapped[float | None] = mapped_column(Float, nullable=True)
    areas_ha: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    baseline_ha: Mapped[float | None] = mapped_column(Float, nullable=True)
    change_baseline_ha: Mapped[float | None] = mapped_column(Float, nullable=True)
    change_baseline_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    previous_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    change_previous_ha: Mapped[float | None] = mapped_column(Float, nullable=True)
    change_previous_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    outputs: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    area: Mapped[Area] = relationship(back_populates="observations")
    alert: Mapped[Alert | None] = relationship(
        back_populates="observation", cascade="all, delete-orphan", passive_deletes=True
    )


class Alert(Base):
    """A change over a threshold. One per observation (deduplicated by the unique key)."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    observation_id: Mapped[int] = mapped_column(
        ForeignKey("observations.id", ondelete="CASCADE"), unique=True
    )
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200), nullable=True)

    observation: Mapped[Observation] = relationship(back_populates="alert")
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="alert", cascade="all, delete-orphan", passive_deletes=True
    )


class DeliveryColumns:
    """The columns of an outbox row (``monitor.alerts.Outbox``): one message to one destination
    (webhook URL or e-mail address) and how sending it went. Alerts and retraining triggers share them."""

    channel: Mapped[str] = mapped_column(String(20))  # webhook, email
    target: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending, sending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: The outbox claim: who is sending it now, since when (a stale claim can be taken over).
    claimed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Delivery(DeliveryColumns, Base):
    """One alert to one destination and how sending it went."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("alert_id", "channel", "target", name="uq_delivery"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)

    alert: Mapped[Alert] = relationship(back_populates="deliveries")


class Lease(Base):
    """Work only one process may do at a time (an area's run), across processes and hosts: taken
    atomically, renewed by a heartbeat while held, taken over once it expires."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    acquired_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


def redact(url: str) -> str:
    """The database URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is shown as given
        return url


def make_engine(url: str, busy_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url``; SQLite files get their folder, foreign keys and WAL."""
    try:
        u = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError, ValueError...
        raise DatabaseUnavailableError(
            f"database URL {url!r} is not valid ({exc}); use sqlite:///path.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from exc
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            # Switching a new file to WAL needs it to itself, and SQLite answers "database is
            # locked" at once instead of waiting (the busy timeout does not apply): wait here,
            # within the busy timeout, while another process creates or migrates the file.
            deadline = time.monotonic() + busy_timeout_s
            while True:
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock when the transaction starts: a transaction that read first and
            # writes later would otherwise fail at once with "database is locked" when another
            # process wrote in between (no waiting), and read-then-update claims would not be atomic.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    connect_args = {"connect_timeout": 5} if u.get_backend_name() == "postgresql" else {}
    try:
        return create_engine(u, pool_pre_ping=True, connect_args=connect_args)
    except ImportError as exc:
        raise DatabaseUnavailableError(
            f"no driver for {redact(url)} ({exc}); install it with: pip install 'eodeploy[postgres]'"
        ) from exc


def connect_checked(engine: Engine, attempts: int = 3, backoff_s: float = 1.0) -> None:
    """Open one connection, retrying with back-off; a clear error when the database stays down."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.connect():
                return
        except DatabaseError as exc:
            if not isinstance(exc, OperationalError):  # it answers, but it is not a usable database
                raise DatabaseUnavailableError(
                    f"the database at {redact(str(engine.url))} cannot be used ({_reason(exc)}); check "
                    "that EODEPLOY_DATABASE_URL names an eodeploy database. Nothing was written."
                ) from exc
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if attempt == attempts:
                raise DatabaseUnavailableError(
                    f"cannot reach the database at {redact(str(engine.url))} after {attempts} attempt(s) "
                    f"({reason}); check that it is running and that EODEPLOY_DATABASE_URL is right. "
                    "Nothing was written."
                ) from exc
            wait = backoff_s * 2 ** (attempt - 1)
            log.warning("database unreachable (%s); retrying in %.1f s", reason, wait)
            time.sleep(wait)


#: The PostgreSQL advisory lock key that serialises migrations (any constant; "eodeploy" in hex).
MIGRATION_LOCK_KEY = 0x656F6465706C6F79


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Any]:
    """A connection holding the cross-process migration lock: PostgreSQL's session advisory lock
    (replicas, cron and CLI on other hosts), a lock file next to a SQLite database."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy import text

        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        with engine.connect() as conn:
            yield conn
        return
    import fcntl

    with open(Path(database).expanduser().with_name(Path(database).name + ".migrate-lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (creates it on an empty database), holding
    the migration lock: two processes starting together migrate one after the other, and the
    second finds nothing left to do."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _migration_lock(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        conn.commit()


def _reason(exc: DatabaseError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def _is_busy(exc: OperationalError) -> bool:
    """SQLite's writer lock (and PostgreSQL's lock timeouts): the database is there, just busy."""
    reason = _reason(exc).lower()
    return (
        "database is locked" in reason or "database table is locked" in reason or ("lock timeout" in reason)
    )


class Database:
    """Engine + sessions for one URL, migrated on first use."""

    def __init__(
        self, url: str, attempts: int = 3, backoff_s: float = 1.0, busy_timeout_s: float = 30.0
    ) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout_s)
        self._attempts, self._backoff = attempts, backoff_s
        self._ready = False
        self._ready_lock = threading.Lock()  # threads of one process; the migration lock does the rest
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        return cls(
            settings.database_url,
            settings.db_connect_attempts,
            settings.db_retry_backoff_s,
            settings.db_busy_timeout_s,
        )

    def ensure(self, attempts: int | None = None) -> None:
        """Connect (with retries) and migrate, once per process (servers call it at start-up)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            connect_checked(self.engine, attempts or self._attempts, self._backoff)
            try:
                migrate(self.engine)
            except OperationalError as exc:
                raise DatabaseUnavailableError(
                    f"the database at {redact(self.url)} failed while migrating ({exc.orig}); "
                    "check it is running and writable"
                ) from exc
            self._ready = True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error.
        Connection failures become ``DatabaseUnavailableError``."""
        self.ensure()
        s = self._sessions()
        try:
            yield s
            s.commit()
        except OperationalError as exc:
            s.rollback()
            if _is_busy(exc):
                raise DatabaseBusyError(
                    f"the database at {redact(self.url)} is busy ({_reason(exc)}: another process "
                    "holds its write lock); this transaction was rolled back, nothing partial was "
                    "stored; try again in a moment"
                ) from exc
            raise DatabaseUnavailableError(
                f"the database at {redact(self.url)} failed ({_reason(exc)}); "
                "this transaction was rolled back, nothing partial was stored; run again when it is back"
            ) from exc
        except IntegrityError as exc:
            s.rollback()
            raise ConflictError(
                f"a concurrent change stored the same thing first ({_reason(exc)}); nothing of this "
                "request was stored; read the current state and try again"
            ) from exc
        except DatabaseError as exc:  # e.g. "file is not a database", a schema that is not ours
            s.rollback()
            raise DatabaseUnavailableError(
                f"the database at {redact(self.url)} cannot be used ({_reason(exc)}); check that "
                "EODEPLOY_DATABASE_URL names an eodeploy database. Nothing was written."
            ) from exc
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def retrying(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (which opens its own session) again with back-off while the database is
        unreachable: a connection lost mid-run is waited for instead of failing the run at once.
        Each attempt is its own transaction, so a failed one leaves nothing behind."""
        for attempt in range(1, self._attempts + 1):
            try:
                return fn()
            except DatabaseUnavailableError as exc:
                if attempt == self._attempts:
                    raise
                wait = self._backoff * 2 ** (attempt - 1)
                log.warning(
                    "database %s; retrying in %.1f s (attempt %d of %d)",
                    "busy" if isinstance(exc, DatabaseBusyError) else "unavailable",
                    wait,
                    attempt + 1,
                    self._attempts,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


from eodeploy.mlops import drift as _drift  # noqa: E402,F401  tables
from eodeploy.mlops import feedback as _feedback  # noqa: E402,F401,I001  tables
from eodeploy.mlops import history as _history  # noqa: E402,F401  tables
from eodeploy.mlops import triggers as _triggers  # noqa: E402,F401,I001  tables
