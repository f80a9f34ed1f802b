"""The web layer: the composed server app, the monitoring API and the dashboard."""
