"""Sentinel-2 band names: every spelling users and files use, mapped to one canonical id."""

from __future__ import annotations

import re

#: STAC/Earth Search common names and asset keys -> Sentinel-2 band ids.
COMMON_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12",
}  # fmt: skip
_BAND = re.compile(r"(?:^|[^A-Za-z0-9])B(\d{1,2}|8A)(?:[^A-Za-z0-9]|$)", re.I)


def normalize_band(name: str) -> str | None:
    """'B1', 'b01', 'B8a', 'nir08', 'red', 'S2_B02_10m', 'B02 (blue)' -> 'B01', 'B01', 'B8A',
    'B8A', 'B04', 'B02', 'B02'; None when the name is no Sentinel-2 band."""
    n = name.strip()
    if n.lower() in COMMON_NAMES:
        return COMMON_NAMES[n.lower()]
    m = _BAND.search(f"_{n}_")
    if not m:
        return None
    v = m.group(1).upper()
    return "B8A" if v == "8A" else f"B{int(v):02d}"


def canonical_band(name: str) -> str:
    """The Sentinel-2 id of ``name`` when it is one, else ``name`` unchanged (other sensors)."""
    return normalize_band(name) or name.strip()
