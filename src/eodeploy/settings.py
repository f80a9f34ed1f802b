"""One typed settings object, read once at the edge (CLI, server) and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EODEPLOY_", env_file=".env", extra="ignore")

    #: Model repository: <repo>/<name>/<version>/. The bundled model lives in ./models.
    model_repo: Path = Path("models")
    #: Default model (name or name:version) when a command is given none.
    default_model: str = "eurosat-cnn"
    #: Labelled EuroSAT-layout patches used by the default evaluation.
    data_dir: Path = Path("../shared/data/eurosat")
    #: ONNX Runtime threads (0: let ONNX Runtime decide).
    intra_op_threads: int = 0
    inter_op_threads: int = 0
