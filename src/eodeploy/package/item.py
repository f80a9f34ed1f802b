"""Build the STAC Item (with the MLM extension) that describes one model version."""

from __future__ import annotations

import datetime as dt
from typing import Any

from eodeploy.package.spec import ModelSpec
from eodeploy.package.validate import MLM_SCHEMA_URL

# Sentinel-2 band descriptions, so the STAC 'bands' list that MLM inputs refer to says something.
S2_BANDS = {
    "B01": "coastal aerosol, 443 nm", "B02": "blue, 490 nm", "B03": "green, 560 nm",
    "B04": "red, 665 nm", "B05": "red edge 1, 705 nm", "B06": "red edge 2, 740 nm",
    "B07": "red edge 3, 783 nm", "B08": "near infrared, 842 nm", "B8A": "narrow NIR, 865 nm",
    "B09": "water vapour, 945 nm", "B10": "cirrus, 1375 nm", "B11": "SWIR 1, 1610 nm",
    "B12": "SWIR 2, 2190 nm",
}  # fmt: skip
ONNX_MEDIA_TYPE = "application/octet-stream; application=onnx"


def build_item(
    spec: ModelSpec,
    name: str,
    version: int,
    model_sha256: str,
    model_size: int,
    extra_properties: dict[str, Any] | None = None,
    derived_from: tuple[str, int] | None = None,
    extra_assets: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    props: dict[str, Any] = {
        "datetime": now,
        "description": spec.description or f"{spec.architecture} classifying {len(spec.classes)} classes",
        "bands": [
            {"name": b, "description": f"Sentinel-2 {b} ({S2_BANDS[b]})" if b in S2_BANDS else b}
            for b in spec.bands
        ],
        **spec.mlm_properties(),
        "eodeploy:version": version,
        "eodeploy:derived_from": (
            {"name": derived_from[0], "version": derived_from[1]} if derived_from else None
        ),
    }
    props.update(extra_properties or {})
    links: list[dict[str, Any]] = []
    if derived_from:
        links.append(
            {
                "rel": "derived_from",
                "href": f"../../{derived_from[0]}/{derived_from[1]}/item.json",
                "type": "application/geo+json",
            }
        )
    assets: dict[str, dict[str, Any]] = {
        "model": {
            "href": "./model.onnx",
            "type": ONNX_MEDIA_TYPE,
            "title": f"{spec.name} ONNX model",
            "roles": ["mlm:model"],
            "mlm:artifact_type": "onnx",
            "eodeploy:sha256": model_sha256,
            "eodeploy:size": model_size,
        }
    }
    assets.update(extra_assets or {})
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA_URL],
        "id": f"{name}-v{version}",
        "geometry": None,
        "properties": props,
        "assets": assets,
        "links": links,
    }
