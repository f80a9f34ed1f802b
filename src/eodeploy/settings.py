"""One typed settings object, read once at the edge (CLI, server) and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EODEPLOY_", env_file=".env", extra="ignore")

    #: Model repository: <repo>/<name>/<version>/. The bundled model lives in ./models.
    model_repo: Path = Path("models")
    #: Default model (name or name:version) when a command is given none.
    default_model: str = "eurosat-cnn"
    #: Labelled EuroSAT-layout patches used by the default evaluation.
    data_dir: Path = Path("../shared/data/eurosat")
    #: Prebuilt browser models (``eodeploy models fuse``): the dashboard hands these out, and a server
    #: without the ``convert`` extra (the server image) can only hand out these. Built ones are kept here.
    fused_dir: Path | None = None
    #: ONNX Runtime threads (0: let ONNX Runtime decide).
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    # --- Serving (eodeploy serve) ---
    #: Let ONNX Runtime's idle threads spin. On: the bundled model is compute-bound and spinning gave
    #: +15-20 % throughput here; turn it off when several workers or replicas share the cores.
    ort_spinning: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    #: Server processes sharing the HTTP and gRPC ports (SO_REUSEPORT; see eodeploy.serve.workers).
    #: Each gets cores // workers ONNX Runtime threads unless intra_op_threads is set.
    workers: int = Field(1, ge=1)
    #: Open Inference Protocol gRPC port (0: no gRPC server).
    grpc_port: int = 8001
    #: Default version policy for models without serving.json: "latest:N", "all" or "specific:1,3".
    version_policy: str = "latest:1"
    #: Dynamic batcher (Triton-style): largest batch, longest wait for more requests, queue bound.
    max_batch_size: int = 32
    #: 0 (Triton's and TF Serving's CPU advice): requests that arrive while a batch runs form the next one.
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 512
    #: A request that has waited this long in the queue is refused (504 / DEADLINE_EXCEEDED).
    request_timeout_s: float = 30.0
    #: Seconds between model-repository scans for new or removed versions (0: no hot reload).
    poll_interval_s: float = 2.0
    #: On SIGTERM/SIGINT: keep answering while readiness reports "draining" for this long (so load
    #: balancers and Kubernetes endpoints stop sending), then stop accepting and give in-flight
    #: HTTP and gRPC requests up to ``drain_timeout_s`` to finish before exiting.
    drain_delay_s: float = Field(0.0, ge=0)
    drain_timeout_s: float = Field(10.0, ge=0)
    #: Response cache: in-process LRU bound in MiB (0: off), or Redis shared by replicas.
    cache_mib: float = 64.0
    redis_url: str | None = None
    #: Prefix of the response cache's Redis keys (servers of different repositories: different ones).
    redis_prefix: str = "eodeploy:resp:"
    cache_ttl_s: int = 3600
    #: API keys accepted in the X-API-Key header (or "Authorization: Bearer"); empty: no auth.
    api_keys: list[SecretStr] = []
    #: Also require a key for inference (admin/repository endpoints always need one when keys are set).
    auth_inference: bool = False
    #: Serve without API keys on a non-loopback address (every admin route is then open to the network).
    insecure: bool = False
    #: Largest request body and largest number of patches in one request.
    max_body_mib: float = 64.0
    max_request_patches: int = 1024
    #: While a model has a canary, the share (0-1) of answers also run on the other side of the
    #: split to compare top-1 classes (off the request path; see eodeploy.mlops.mirror).
    canary_mirror_share: float = Field(0.1, ge=0.0, le=1.0)
    #: JSON access logs (one line per request, with its request id).
    log_json: bool = True

    # --- Outbound URLs (webhooks, STAC APIs and asset hrefs; see eodeploy.netguard) ---
    #: Let URLs reach private, loopback and link-local addresses (only on a closed network).
    allow_private_urls: bool = False
    #: Host names or networks (CIDR) let through even when private, e.g. ["127.0.0.1"] or ["10.1.0.0/16"].
    allowed_url_hosts: list[str] = []
    #: Largest response read from any such URL, in MiB.
    max_fetch_mib: float = 16.0

    # --- Monitoring (eodeploy monitor) ---
    #: Results database: a SQLite file by default, PostgreSQL in production
    #: (postgresql+psycopg://user@host:5432/db).
    database_url: str = "sqlite:///eodeploy.db"
    #: Serve the monitoring REST endpoints (/monitor/...) from the inference server.
    monitor_api: bool = True
    #: Serve the web dashboard (/dashboard): maps, series, alerts, models, in-browser inference.
    dashboard: bool = True
    #: Where each observation's maps (COGs, polygons, preview) are kept.
    monitor_dir: Path = Path("monitoring")
    #: Where SQLite database backups are kept (``eodeploy doctor`` looks there and beside the file).
    backup_dir: Path | None = None
    #: One run per area at a time across processes and hosts: a lease this long, renewed every third
    #: of it while the area runs; a lease its holder stopped renewing (it died) is taken over.
    monitor_lease_s: float = 120.0
    #: Connecting to the database: attempts and the first back-off (doubled each time).
    db_connect_attempts: int = 3
    db_retry_backoff_s: float = 1.0
    #: SQLite: how long a writer waits for another's lock before the database is reported busy.
    db_busy_timeout_s: float = 30.0
    #: Alert webhooks: per-request timeout, attempts per run and first back-off (doubled each time).
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 3
    webhook_backoff_s: float = 0.5
    #: A delivery claimed for sending this long ago by a sender that never recorded the outcome
    #: (it died) is claimed again and re-sent (receivers drop the duplicate by its idempotency key).
    delivery_claim_s: float = 600.0
    #: Alert e-mail (SMTP). No host: e-mail deliveries wait, recorded as failed, until one is set.
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "eodeploy@localhost"
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0

    # --- Drift (eodeploy.mlops.drift / mlops.sketch) ---
    #: Serving: sample one request in this many into the drift sketch (0: no serving drift).
    drift_sample_every: int = 10
    #: From a sampled request, this many patches and this many random pixels of each.
    drift_patches_per_request: int = 4
    drift_pixels_per_patch: int = 16
    #: Pixels kept per model version and window (a reservoir: memory bound, whatever the traffic).
    drift_sketch_pixels: int = 4096
    #: Length of a serving drift window (gauges and a stored row per window and model version).
    drift_window_s: float = 300.0
    #: A window with fewer sampled pixels than this reports class shares but no band shift.
    drift_min_pixels: int = 500

    # --- Feedback (POST /feedback, live accuracy, retraining triggers; eodeploy.mlops.feedback) ---
    #: Remember recent predictions by request id so feedback can name them: at most this many
    #: requests and MiB (inputs included), each for at most this long; the oldest go first.
    feedback: bool = True
    feedback_recent_requests: int = 10_000
    feedback_recent_mib: float = 256.0
    feedback_recent_hours: float = 24.0
    #: Labelled feedback patches kept for retraining (in the database): at most this many and MiB,
    #: none older than this many days (the labels themselves are kept for accuracy).
    feedback_max_patches: int = 20_000
    feedback_max_patch_mib: float = 2048.0
    feedback_retention_days: float = 365.0
    #: Share of feedback patches held back from retraining to evaluate the new candidate on.
    feedback_holdout: float = 0.2
    #: No accuracy-based decision (trigger, canary) on fewer labels than this per model version:
    #: at 82.7 % the Wilson 95 % interval is +-10 points at 50 labels, +-5 at 200.
    feedback_min_labels: int = 200
    #: Retraining triggers: scheduled (days since the latest version, per model name, "*" for
    #: all; e.g. {"*": 30}), accuracy (live lower bound below test accuracy minus this margin),
    #: drift (flagged on at least N of the last M clear observations of an area), feedback volume
    #: (this many new labels since the latest version was trained).
    retrain_every_days: dict[str, float] = {}
    retrain_accuracy_margin: float = 0.05
    retrain_drift_flagged: int = 3
    retrain_drift_last: int = 5
    retrain_feedback_labels: int = 500
    #: Where trigger alerts go (areas' own webhook/e-mails get their drift triggers too).
    trigger_webhook_url: str | None = None
    trigger_emails: list[str] = []

    @field_validator("fused_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """EODEPLOY_FUSED_DIR= (empty) means no folder, not the current one."""
        return None if value == "" else value


def cache_dir() -> Path:
    """Where decoded training patches are cached: ``EODEPLOY_CACHE_DIR``, else the user cache."""
    import os

    env = os.environ.get("EODEPLOY_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eodeploy"
