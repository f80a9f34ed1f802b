"""The inference server: one app speaking TF Serving REST, OIP v2 (REST + gRPC) and uploads.

``eodeploy.web.create_app`` composes it with the monitoring API and the dashboard."""

from eodeploy.serve.app import create_inference_app

__all__ = ["create_inference_app"]
