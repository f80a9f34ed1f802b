"""Monitoring: areas of interest watched scene after scene, change against history, alerts.

``eodeploy monitor add/run/schedule/series/alerts``; results in SQLAlchemy (SQLite by default,
PostgreSQL by URL) with Alembic migrations; REST endpoints under ``/monitor`` in the server.
"""
