"""The inference server: one app speaking TF Serving REST, OIP v2 (REST + gRPC) and uploads."""

from eodeploy.serve.app import create_app

__all__ = ["create_app"]
