"""Monitoring state as Prometheus metrics on the server's ``/metrics``, read from the database at
scrape time: what an operator alerts on (unacknowledged alerts, failed deliveries, stale areas,
the last run's status)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from eodeploy.errors import DatabaseBusyError, DatabaseUnavailableError

log = logging.getLogger("eodeploy.monitor")
RUN_STATES = ("running", "succeeded", "failed", "interrupted")


class MonitorCollector(Collector):
    def __init__(self, database: Any) -> None:
        self._database = database  # a callable returning the Database (created lazily by the app)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from eodeploy.monitor.db import Alert, Area, Delivery, Observation, Run, utcnow

        up = GaugeMetricFamily("eodeploy_monitor_database_up", "1 when the monitoring database answers")
        try:
            db = self._database()
            db.ensure(attempts=1)  # a scrape must not wait out connection retries
            with db.session() as s:
                unacked = s.scalar(select(func.count(Alert.id)).where(Alert.acknowledged_at.is_(None))) or 0
                by_status = dict(
                    s.execute(
                        select(Delivery.status, func.count(Delivery.id)).group_by(Delivery.status)
                    ).all()
                )
                now = utcnow()
                areas = s.execute(select(Area.name, Area.last_checked_at).where(Area.active.is_(True))).all()
                obs = dict(
                    s.execute(
                        select(Area.name, func.count(Observation.id)).join(Observation).group_by(Area.name)
                    ).all()
                )
                last = s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
        except DatabaseBusyError as exc:  # it answers, another writer holds the lock: up, but busy
            log.warning("metrics: %s", exc)
            up.add_metric([], 1)
            yield up
            busy = GaugeMetricFamily("eodeploy_monitor_database_busy", "1 when the database was locked")
            busy.add_metric([], 1)
            yield busy
            return
        except DatabaseUnavailableError as exc:
            log.warning("metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        except Exception:  # noqa: BLE001 - a broken schema or file must not take all of /metrics down
            log.exception("metrics: the monitoring database could not be read")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily("eodeploy_monitor_database_busy", "1 when the database was locked")
        g.add_metric([], 0)
        yield g
        g = GaugeMetricFamily("eodeploy_monitor_alerts_unacknowledged", "Alerts nobody has acknowledged")
        g.add_metric([], unacked)
        yield g
        g = GaugeMetricFamily("eodeploy_monitor_deliveries", "Alert deliveries by status", labels=["status"])
        for status in ("pending", "sending", "sent", "failed"):
            g.add_metric([status], by_status.get(status, 0))
        yield g
        g = GaugeMetricFamily("eodeploy_monitor_area_seconds_since_check",
                              "Seconds since each active area was last checked (-1: never)", labels=["area"])  # fmt: skip
        for name, checked in areas:
            g.add_metric([name], (now - checked).total_seconds() if checked else -1)
        yield g
        g = GaugeMetricFamily(
            "eodeploy_monitor_observations", "Observations stored per area", labels=["area"]
        )
        for name, _ in areas:
            g.add_metric([name], obs.get(name, 0))
        yield g
        g = GaugeMetricFamily(
            "eodeploy_monitor_last_run", "The latest run: 1 for its status", labels=["status"]
        )
        for state in RUN_STATES:
            g.add_metric([state], 1 if last is not None and last.status == state else 0)
        yield g
