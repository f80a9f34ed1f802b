"""Leases: work only one process may do at a time (one area's run), across processes, cron jobs,
replicas and hosts. A lease is a database row (name, owner, expires_at): taken atomically, renewed
by a heartbeat thread while held, taken over by anyone once it has expired (its holder died), and
checked inside each transaction that stores work done under it (a holder that lost it stores
nothing)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from types import TracebackType

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from eodeploy.errors import ConflictError
from eodeploy.monitor.db import Database, Lease, utcnow

log = logging.getLogger("eodeploy.monitor")


#: Owners (of this process) whose lease could not be released because the database was away:
#: nothing runs under them any more, so this process may take them back at once instead of
#: waiting for them to expire.
_abandoned: set[str] = set()


class LeaseLostError(ConflictError):
    """The lease expired and another process took it over: this one must stop storing."""


def owner_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Held:
    """A lease held by this process, renewed every ``ttl/3`` by a daemon thread until released."""

    def __init__(self, db: Database, name: str, owner: str, ttl_s: float) -> None:
        self.db, self.name, self.owner, self.ttl = db, name, owner, timedelta(seconds=ttl_s)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            try:
                with self.db.session() as s:
                    if not self._extend(s):
                        self.lost = True
                        log.warning("lease %s was taken over; stopping work under it", self.name)
                        return
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; fence() decides
                log.warning("lease %s: heartbeat failed (%s)", self.name, exc)

    def _extend(self, s: Session) -> bool:
        res = s.execute(
            update(Lease)
            .where(Lease.name == self.name, Lease.owner == self.owner)
            .values(expires_at=utcnow() + self.ttl)
        )
        return bool(res.rowcount)  # type: ignore[attr-defined]

    def fence(self, s: Session) -> None:
        """In a transaction that stores work done under the lease: still ours (extended), or
        ``LeaseLostError`` (the transaction rolls back, nothing is stored twice)."""
        if self.lost or not self._extend(s):
            self.lost = True
            raise LeaseLostError(
                f"the lease on {self.name} expired and was taken over by another process; this run "
                "stopped storing its results (the other run stores them)"
            )

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        from sqlalchemy import delete

        try:
            with self.db.session() as s:
                s.execute(delete(Lease).where(Lease.name == self.name, Lease.owner == self.owner))
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            _abandoned.add(self.owner)
            log.warning("lease %s not released (%s); it expires in %s", self.name, exc, self.ttl)

    def __enter__(self) -> Held:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def acquire(db: Database, name: str, ttl_s: float, owner: str | None = None) -> Held | tuple[str, datetime]:
    """Take the lease ``name``: a ``Held`` lease, or (holder, expires_at) when someone else holds
    it and it has not expired."""
    me = owner or owner_id()
    ttl = timedelta(seconds=ttl_s)

    def take() -> bool:
        with db.session() as s:
            now = utcnow()
            res = s.execute(
                update(Lease)
                .where(
                    Lease.name == name,
                    or_(Lease.expires_at < now, Lease.owner == me, Lease.owner.in_(sorted(_abandoned))),
                )
                .values(owner=me, acquired_at=now, expires_at=now + ttl)
            )
            if res.rowcount:  # type: ignore[attr-defined]
                return True
            if s.get(Lease, name) is not None:
                return False
            s.add(Lease(name=name, owner=me, acquired_at=now, expires_at=now + ttl))
        return True

    try:
        taken = db.retrying(take)
    except ConflictError:  # another process inserted it first
        taken = False
    if taken:
        return Held(db, name, me, ttl_s)
    with db.session() as s:
        row = s.get(Lease, name)
        return (row.owner, row.expires_at) if row is not None else ("another process", utcnow())
