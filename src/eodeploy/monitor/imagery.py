"""Imagery sources for an area: a watched folder (scenes, or dated sub-folders of GEE-exported
patches), a fixed list of files, or a STAC API search.

Each yields ``Candidate`` scenes (a stable id, an acquisition time, what ``predict_scene`` reads)
that cover the area and were acquired up to the run's date.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from eodeploy.errors import DataError
from eodeploy.geo.dates import acquisition, date_in, parse_iso


@dataclass
class Candidate:
    scene_id: str
    datetime: datetime  # naive UTC
    source: str  # a path or URL that predict_scene reads
    covers: bool | None = None  # the footprint touches the area (None: not looked at yet, see covers())
    cloud_cover: float | None = None  # whole-scene cloud cover (%), when the source says


def scene_datetime(path: Path) -> datetime:
    """Acquisition time (``geo.dates.acquisition``: file name, STAC Item, TIFF tags; the start of
    a composite's period), else the file's modification time."""
    from datetime import UTC

    t, period = acquisition(path)
    if t or period:
        return t or period[0]  # type: ignore[index]
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(tzinfo=None)


def _covers(path: Path, geom: Any) -> bool:
    """Whether a raster's (or STAC Item's) footprint touches the area; unreadable files say yes so
    that processing reports them."""
    from shapely.geometry import box, shape

    try:
        if path.suffix.lower() == ".json":
            item = json.loads(path.read_text())
            return bool(shape(item["geometry"]).intersects(geom))
        import rasterio
        from rasterio.warp import transform_bounds

        with rasterio.open(path) as ds:
            if ds.crs is None:
                return True
            return bool(
                box(*transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)).intersects(geom)
            )
    except Exception:  # noqa: BLE001
        return True


def covers(c: Candidate, geom: Any) -> bool:
    """Whether the candidate touches the area, reading its footprint only when first asked (a run
    asks only for scenes not yet stored, so a growing watched folder is not re-opened file by file)."""
    if c.covers is None:
        p = Path(c.source)
        c.covers = any(_covers(t, geom) for t in sorted(p.glob("*.tif"))) if p.is_dir() else _covers(p, geom)
    return c.covers


def _file_candidates(paths: list[Path]) -> list[Candidate]:
    return [Candidate(p.name, scene_datetime(p), str(p)) for p in paths]


def _patch_folders(folder: Path) -> list[Candidate]:
    """Sub-folders named with a date that hold GeoTIFF patches (a GEE export of one date)."""
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        when = date_in(d.name)
        tifs = sorted(d.glob("*.tif"))
        if when and tifs:
            out.append(Candidate(d.name, when, str(d)))
    return out


def mosaic_patches(folder: Path, out: Path) -> Path:
    """One GeoTIFF from a folder of georeferenced patches (band names and nodata of the first)."""
    import rasterio
    from rasterio.merge import merge

    tifs = sorted(folder.glob("*.tif"))
    try:
        with rasterio.open(tifs[0]) as first:
            crs, descriptions, nodata, tags = first.crs, first.descriptions, first.nodata, first.tags()
        srcs = [rasterio.open(t) for t in tifs]
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"{folder}: a patch cannot be read ({exc})") from exc
    try:
        if crs is None or any(s.crs != crs for s in srcs):
            raise DataError(
                f"{folder}: patches need one CRS (found several, or none); export them in one CRS"
            )
        arr, transform = merge(srcs, nodata=nodata)
    finally:
        for src in srcs:
            src.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
               "dtype": arr.dtype, "crs": crs, "transform": transform, "nodata": nodata, "tiled": True,
               "compress": "deflate"}  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(arr)
        for i, d in enumerate(descriptions, 1):
            if d:
                dst.set_band_description(i, d)
        dst.update_tags(**tags)
    return out


def list_scenes(source: dict[str, Any], geom: Any, as_of: datetime, cache_dir: Path) -> list[Candidate]:
    """Scenes of ``source`` acquired up to ``as_of`` (naive UTC), oldest first."""
    kind = source.get("type")
    if kind == "folder":
        folder = Path(source["path"])
        if not folder.is_dir():
            raise DataError(f"watched folder {folder} does not exist (moved or unmounted?)")
        paths = sorted(p for p in folder.glob(source.get("pattern", "*.tif")) if p.is_file())
        found = _file_candidates(paths) + _patch_folders(folder)
    elif kind == "files":
        paths = [Path(p) for p in source["paths"]]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise DataError(f"scene file(s) not found: {', '.join(missing)}")
        found = _file_candidates(paths)
    elif kind == "stac":
        found = _stac_candidates(source, geom, as_of, cache_dir)
    else:
        raise DataError(f"unknown imagery source type {kind!r}; use folder, files or stac")
    return sorted((c for c in found if c.datetime <= as_of), key=lambda c: (c.datetime, c.scene_id))


def _stac_candidates(source: dict[str, Any], geom: Any, as_of: datetime, cache_dir: Path) -> list[Candidate]:
    """A STAC API item search over the area and the date window, cloud cover filtered."""
    import shapely
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    start = as_of - timedelta(days=int(source.get("days", 10)))
    max_cloud = float(source.get("max_cloud", 100))
    from pystac_client.stac_api_io import StacApiIO

    from eodeploy.netguard import BlockedURLError, check_url, guarded_session

    stac_io = StacApiIO(timeout=30, max_retries=0)
    stac_io.session = guarded_session()  # the search and every page link pass the URL guard
    try:
        check_url(source["url"])
        client = Client.open(source["url"], stac_io=stac_io)
        search = client.search(
            collections=source.get("collections"),
            intersects=shapely.geometry.mapping(geom),
            datetime=f"{start.isoformat()}Z/{as_of.isoformat()}Z",
            query={"eo:cloud_cover": {"lte": max_cloud}},
            max_items=int(source.get("max_items", 50)),
        )
        items = list(search.items())
    except BlockedURLError as exc:
        raise DataError(f"STAC search refused: {exc}") from exc
    except (APIError, OSError, ValueError) as exc:
        raise DataError(
            f"STAC search at {source['url']} failed ({exc}); check the URL and collection"
        ) from exc
    out = []
    cache_dir.mkdir(parents=True, exist_ok=True)
    for item in items:
        cc = item.properties.get("eo:cloud_cover")
        if cc is not None and cc > max_cloud:  # APIs without the query extension ignore it
            continue
        href = item.get_self_href()
        if not href:  # keep the item where predict_scene can read it
            path = cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', item.id)}.json"
            path.write_text(json.dumps(item.to_dict()))
            href = str(path)
        when = item.datetime or parse_iso(item.properties["start_datetime"])
        out.append(Candidate(item.id, parse_iso(when.isoformat()), href, True, cc))
    return out
