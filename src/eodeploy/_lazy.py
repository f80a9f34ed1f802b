"""Import optional stacks on first use, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from eodeploy.errors import MissingExtraError


def lazy_import(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # only a missing package, not an error inside it
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise
        raise MissingExtraError(module, extra) from exc
