"""When a scene was acquired: from its file name, its STAC Item or its GeoTIFF tags."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:[T_-]?(\d{2}):?(\d{2}):?(\d{2}))?(?!\d)")
#: GeoTIFF tags that hold the acquisition time (Sentinel-2 SAFE/GEE/GDAL conventions).
TIME_TAGS = ("ACQUISITION_DATE", "DATETIME", "datetime", "SENSING_TIME", "PRODUCT_START_TIME",
             "DATATAKE_1_DATATAKE_SENSING_START", "TIFFTAG_DATETIME")  # fmt: skip


def date_in(text: str) -> datetime | None:
    """The first plausible date in ``text`` (2017-09-18, 20240105T022101, 2017:09:18 12:00:00)."""
    for m in _DATE.finditer(text.replace(":", "-", 2) if re.match(r"\d{4}:\d\d:\d\d", text) else text):
        y, mo, d, hh, mm, ss = (int(g) if g else 0 for g in m.groups())
        try:
            if 1970 <= y <= 2200:
                return datetime(y, mo, d, hh, mm, ss)
        except ValueError:
            continue
    return None


def parse_iso(value: str) -> datetime:
    """An ISO 8601 time as naive UTC."""
    from datetime import UTC

    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def acquisition(path: str | Path) -> tuple[datetime | None, tuple[datetime, datetime] | None]:
    """(acquisition time, or None) and, for a composite over a period, (start, end) of that period.

    Looked for in the file name, then a STAC Item's ``datetime``/``start_datetime``, then GeoTIFF
    tags; a tag naming two dates (``leastCC mosaic over 2024-06-01..2025-06-10``) is a period."""
    path = Path(path)
    t = date_in(path.name)
    if t:
        return t, None
    if path.suffix.lower() == ".json":
        try:
            props = json.loads(path.read_text())["properties"]
            if props.get("datetime"):
                return parse_iso(props["datetime"]), None
            return None, (parse_iso(props["start_datetime"]), parse_iso(props["end_datetime"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None, None
    try:
        import rasterio

        with rasterio.open(path) as ds:
            tags = ds.tags()
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is processed
        return None, None
    for key in TIME_TAGS:
        if key in tags and (t := date_in(tags[key])):
            return t, None
    for value in tags.values():
        dates = [d for m in _DATE.finditer(value) if (d := date_in(m.group(0)))]
        if len(dates) == 2 and dates[0] < dates[1]:
            return None, (dates[0], dates[1])
    return None, None
