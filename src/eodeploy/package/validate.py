"""Offline validation of item.json against the published STAC MLM JSON schema (vendored)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from eodeploy.errors import PackageSpecError

MLM_SCHEMA_URL = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION_SCHEMA_URL = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
_SCHEMA_FILES = {
    MLM_SCHEMA_URL: "mlm-v1.5.2.json",
    CLASSIFICATION_SCHEMA_URL: "classification-v1.1.0.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json": "processing-v1.1.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "raster-v1.1.0.json",
}


@lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft7Validator
    from referencing import Registry, Resource

    files = resources.files("eodeploy.package") / "schemas"
    docs = {url: json.loads((files / name).read_text()) for url, name in _SCHEMA_FILES.items()}
    registry = Registry().with_resources((url, Resource.from_contents(doc)) for url, doc in docs.items())
    # The processing schema's own $id still names v1.0.0; register that spelling too.
    proc = docs["https://stac-extensions.github.io/processing/v1.1.0/schema.json"]
    if proc.get("$id"):
        registry = registry.with_resource(proc["$id"], Resource.from_contents(proc))
    return Draft7Validator(docs[MLM_SCHEMA_URL], registry=registry)


def mlm_errors(item: dict[str, Any]) -> list[str]:
    """Messages for every MLM schema violation in ``item`` (empty when valid)."""
    errors = sorted(_validator().iter_errors(item), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<item>'}: {e.message}" for e in errors]


def validate_item(item: dict[str, Any]) -> None:
    """Raise PackageSpecError unless ``item`` is a valid STAC Item with valid MLM fields."""
    import pystac

    errors = mlm_errors(item)
    if errors:
        raise PackageSpecError("item.json fails the STAC MLM schema: " + "; ".join(errors[:5]))
    try:
        pystac.Item.from_dict(item, preserve_dict=True)
    except Exception as exc:  # pystac raises several types for a malformed Item
        raise PackageSpecError(f"item.json is not a valid STAC Item: {exc}") from exc
