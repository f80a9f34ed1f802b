"""Domain errors. They know nothing of HTTP; each message says what went wrong and what to do."""

from __future__ import annotations


class EodeployError(Exception):
    """Base class for every error eodeploy raises on purpose."""


class ModelNotFoundError(EodeployError, LookupError):
    """A model name or version that the repository does not hold."""


class PackageIntegrityError(EodeployError, ValueError):
    """A package whose files do not match what its item.json records."""


class PackageSpecError(EodeployError, ValueError):
    """An item.json that is missing fields or contradicts itself."""


class InvalidInputError(EodeployError, ValueError):
    """Input arrays the model cannot take: wrong bands, shape, dtype or values."""


class DataError(EodeployError, ValueError):
    """A data file or folder that cannot be read as what it claims to be."""


class ImportModelError(EodeployError, ValueError):
    """A model file that cannot be imported or whose conversion does not match its source."""


class MissingExtraError(EodeployError, ImportError):
    """An optional stack (TensorFlow, PyTorch, ...) that is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"this needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'eodeploy[{extra}]'"
        )
        self.module = module
        self.extra = extra


class ServerBusyError(EodeployError, RuntimeError):
    """The inference queue is full; the client should retry after a short wait."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InferenceTimeoutError(EodeployError, TimeoutError):
    """A request waited longer than its timeout before it could be computed."""


class ModelNotReadyError(EodeployError, RuntimeError):
    """A model that exists but is loading, unloading or failed to load."""


class PayloadTooLargeError(EodeployError, ValueError):
    """A request body or tensor above the configured limits."""


class NotFoundError(EodeployError, LookupError):
    """A monitored area, alert or run that does not exist."""


class ConflictError(EodeployError, ValueError):
    """A request that clashes with what is stored (a name taken, history that would be lost)."""


class DatabaseUnavailableError(EodeployError, RuntimeError):
    """The results database cannot be reached; nothing was written."""


class InsecureConfigError(EodeployError, ValueError):
    """A configuration that would expose unauthenticated admin routes to the network."""


class PortInUseError(EodeployError, OSError):
    """A port the server was asked to listen on is taken."""


class DatabaseBusyError(DatabaseUnavailableError):
    """The results database answers but is locked by another writer (SQLite's "database is
    locked"); retried with back-off, then reported as busy, not as unreachable."""


class NotAuthenticatedError(EodeployError, PermissionError):
    """A call that needs an API key came without a valid one."""
