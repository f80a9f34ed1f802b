"""The Sentinel-2 radiometric offset a GeoTIFF declares, read and applied in one place.

From processing baseline 04.00 (25 January 2022) ESA adds 1000 to every stored value; files
record it as ``BOA_ADD_OFFSET``/``RADIO_ADD_OFFSET`` (-1000) or only as ``PROCESSING_BASELINE``.
Scenes, patch folders, EuroSAT-layout data and server uploads all read their GeoTIFFs through
these functions, so one file gives one set of values, and one class, whichever way it enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from eodeploy.errors import DataError

OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
#: The DN offset of baseline >= 04.00 when a file names only its baseline.
BASELINE_04_OFFSET = -1000.0


def baseline_offset(tags: Mapping[str, str], default: float = 0.0, where: str = "file") -> float:
    """The value to add to stored DNs, from a file's tags (``default`` when it declares none)."""
    for key in OFFSET_TAGS:
        if key in tags:
            try:
                return float(tags[key])
            except ValueError:
                raise DataError(
                    f"{where}: tag {key}={tags[key]!r} is not a number; fix the tag, or pass the "
                    "offset explicitly (eodeploy predict --offset -1000)"
                ) from None
    pb = tags.get("PROCESSING_BASELINE") or tags.get("s2:processing_baseline")
    if pb:
        try:
            return BASELINE_04_OFFSET if float(pb) >= 4.0 else 0.0
        except ValueError:
            pass  # e.g. "N/A": the baseline is unknown, not a reason to refuse the file
    return default


def geotiff_offset(src: Any, where: str | None = None) -> float:
    """The offset an open rasterio dataset declares (dataset tags, else its first band's tags)."""
    tags = {**src.tags(1), **src.tags()} if src.count else dict(src.tags())
    return baseline_offset(tags, 0.0, where or str(getattr(src, "name", "file")))


def apply_offset(arr: np.ndarray, offset: float) -> np.ndarray:
    """``arr + offset`` as float32, floored at 0 as scenes are (an untouched array when 0)."""
    if not offset:
        return arr
    out = arr.astype(np.float32) + np.float32(offset)
    np.maximum(out, 0, out=out)
    return out
