"""eodeploy: take a trained Earth-observation model from training to production."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("eodeploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
