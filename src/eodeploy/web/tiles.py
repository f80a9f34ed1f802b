"""Map tiles of an observation's COGs: 256 px Web Mercator PNGs (rio-tiler, WebMercatorQuad).

``classes.tif`` is read with nearest resampling from its MODE overviews and coloured with the
model's class colours (its own colour table, or ``colormap_for``): an 8-bit paletted PNG whose
transparency table hides nodata. ``truecolor.tif`` becomes an RGBA PNG with its mask as alpha.
Always PNG: a JPEG tile has no transparency, and nodata came back black with format
auto-detection (titiler#574). A tile that does not reach the map is None:
the route answers 204 No Content, and Leaflet leaves a tile that failed to load hidden (its
``.leaflet-tile`` class is invisible until loaded); give the layer ``bounds`` from
``cog_bounds_wgs84`` and it never asks for those tiles at all.

Rendered tiles are kept in a small thread-safe LRU keyed by the file's identity (path, mtime,
size), the kind, the colours and z/x/y, so a repeat tile costs a ``stat`` and a dict look-up; its
ETag comes from the same key (``tile_etag``), so a route can answer 304 without rendering.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from eodeploy.errors import DataError, InvalidInputError, NotFoundError
from eodeploy.geo.infer import NODATA
from eodeploy.package.spec import ModelSpec

KINDS = ("classes", "truecolor")
#: Deepest zoom served (Web Mercator z24 is ~1 cm a pixel at the equator; deeper is a typo).
MAX_ZOOM = 24
TILE_SIZE = 256
#: Changes when rendering changes, so browsers drop tiles cached under the old ETags.
RENDER_VERSION = "1"
TRANSPARENT = (0, 0, 0, 0)

ColorMap = dict[int, tuple[int, int, int, int]]
_Key = tuple[str, int, int, str, int, int, int, str]


class Tile(NamedTuple):
    png: bytes
    etag: str


def colormap_for(classes: ModelSpec | Iterable[Mapping[str, Any]]) -> ColorMap:
    """{value: (r, g, b, 255)} for every class, from a model spec or an item's
    ``classification:classes`` (``color_hint``), over all 256 uint8 values: nodata (255) and any
    value no class has are explicitly transparent (a value missing from a colormap raised in
    titiler#1023), and a full table takes rio-tiler's lookup-table path."""
    if isinstance(classes, ModelSpec):
        pairs = [(c.value, c.color) for c in classes.classes]
    else:
        pairs = [(int(c["value"]), str(c.get("color_hint") or c.get("color") or "808080")) for c in classes]
    cmap: ColorMap = dict.fromkeys(range(256), TRANSPARENT)
    for value, color in pairs:
        c = color.lstrip("#")
        if not 0 <= value < 256 or value == NODATA or len(c) != 6:
            raise InvalidInputError(
                f"class {value} colour {color!r}: need a value 0-254 and a #RRGGBB colour"
            )
        cmap[value] = (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255)
    cmap[NODATA] = TRANSPARENT
    return cmap


def check_tile(kind: str, z: int, x: int, y: int) -> None:
    """InvalidInputError (400) for an unknown kind or a malformed z/x/y; NotFoundError (404) for
    x or y beyond the zoom's 2^z x 2^z tile matrix (a tile that does not exist)."""
    if kind not in KINDS:
        raise InvalidInputError(f"tile kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not 0 <= z <= MAX_ZOOM:
        raise InvalidInputError(f"zoom {z} is outside 0..{MAX_ZOOM}")
    if x < 0 or y < 0:
        raise InvalidInputError(f"tile x and y must be zero or more; got x={x}, y={y}")
    if x >= 2**z or y >= 2**z:
        raise NotFoundError(f"no tile {z}/{x}/{y}: zoom {z} has tiles 0..{2**z - 1} in x and y")


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise NotFoundError(f"{path.name}: no such map (was the observation deleted or re-run?)") from None


def _key(path: str | Path, kind: str, z: int, x: int, y: int, colormap: ColorMap | None) -> _Key:
    check_tile(kind, z, x, y)
    st = _stat(Path(path))
    colours = (
        ""
        if colormap is None
        else hashlib.blake2b(repr(sorted(colormap.items())).encode(), digest_size=8).hexdigest()
    )
    return (str(path), st.st_mtime_ns, st.st_size, kind, z, x, y, colours)


def _etag(key: _Key) -> str:
    return '"' + hashlib.blake2b(repr((RENDER_VERSION, *key)).encode(), digest_size=12).hexdigest() + '"'


def tile_etag(path: str | Path, kind: str, z: int, x: int, y: int, colormap: ColorMap | None = None) -> str:
    """The ETag ``render_tile`` gives this tile, without rendering it (for If-None-Match)."""
    return _etag(_key(path, kind, z, x, y, colormap))


class TileCache:
    """A thread-safe LRU of rendered tiles, bounded in bytes and in entries (outside tiles are
    cached as None). Two threads missing the same tile both render it; the second put wins."""

    def __init__(self, max_bytes: int = 64 * 2**20, max_tiles: int = 8192) -> None:
        self.max_bytes, self.max_tiles = max_bytes, max_tiles
        self._items: OrderedDict[_Key, Tile | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: _Key) -> tuple[bool, Tile | None]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return True, self._items[key]
            self.misses += 1
            return False, None

    def put(self, key: _Key, tile: Tile | None) -> None:
        size = len(tile.png) if tile else 0
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old.png) if old else 0
            self._items[key] = tile
            self._bytes += size
            while self._bytes > self.max_bytes or len(self._items) > self.max_tiles:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped.png) if dropped else 0

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


#: The process's tile cache (64 MiB): an observation's files never change in place (outputs are
#: renamed into place), and a re-run changes mtime and size, hence the key.
SHARED_CACHE = TileCache()


def render_tile(
    path: str | Path,
    kind: str,
    z: int,
    x: int,
    y: int,
    *,
    colormap: ColorMap | None = None,
    cache: TileCache | None = SHARED_CACHE,
) -> Tile | None:
    """Tile z/x/y of the ``kind`` COG at ``path`` as (PNG bytes, ETag), or None when the tile does
    not reach the map. ``colormap`` (classes only): ``colormap_for(spec)``; by default the class
    map's own colour table, which ``predict_scene`` writes from the same spec. ``cache=None``
    renders every time."""
    key = _key(path, kind, z, x, y, colormap)
    if cache is not None:
        found, tile = cache.get(key)
        if found:
            return tile
    png = _render(Path(path), kind, z, x, y, colormap)
    tile = Tile(png, _etag(key)) if png is not None else None
    if cache is not None:
        cache.put(key, tile)
    return tile


class _FileInfo(NamedTuple):
    crs: Any
    res: tuple[float, float]
    overviews: tuple[int, ...]
    colormap: ColorMap


@functools.lru_cache(maxsize=256)
def _file_info(path: str, mtime_ns: int, size: int) -> _FileInfo:
    """What choosing an overview needs, read once per version of a file (mtime and size key it)."""
    import rasterio

    with rasterio.open(path) as ds:
        try:
            table = {int(k): (int(v[0]), int(v[1]), int(v[2]), int(v[3])) for k, v in ds.colormap(1).items()}
        except ValueError:  # no colour table (the true-colour picture)
            table = {}
        return _FileInfo(
            ds.crs, (ds.res[0], ds.res[1]), tuple(ds.overviews(1)), table | {NODATA: TRANSPARENT}
        )


def _overview_level(info: _FileInfo, bbox: tuple[float, float, float, float]) -> int | None:
    """The overview GDAL itself picks for a nearest read of the tile's area (None: full
    resolution): the coarsest whose factor is below 1.2 x the tile's + 0.1 (GDAL's oversampling
    threshold and epsilon, ``GDALBandGetBestOverviewLevel2``)."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(_WEB_MERCATOR, info.crs, *bbox, densify_pts=21)
    factor = min((right - left) / TILE_SIZE / info.res[0], (top - bottom) / TILE_SIZE / info.res[1])
    fits = [i for i, f in enumerate(info.overviews) if f < factor * 1.2 + 0.1]
    return fits[-1] if fits else None


_WEB_MERCATOR = "EPSG:3857"
#: Open files kept per thread (a tile server's worker threads each reuse theirs).
HANDLES_PER_THREAD = 8
_handles = threading.local()


@functools.cache
def _tms() -> Any:
    """WebMercatorQuad, once: ``morecantile.tms.get`` deep-copies it on every call (2.5 ms)."""
    import morecantile

    return morecantile.tms.get("WebMercatorQuad")


def _dataset(path: str, mtime_ns: int, size: int, level: int | None) -> Any:
    """An open dataset of ``path`` at an overview level, kept open for this thread's next tiles:
    opening cost 2.6 ms a tile and ran one thread at a time. A re-run file has a new mtime and
    size, hence a new handle; the old one closes when it falls out of the thread's few."""
    import rasterio

    handles: OrderedDict[tuple[str, int, int, int | None], Any] = _handles.__dict__.setdefault(
        "open", OrderedDict()
    )
    key = (path, mtime_ns, size, level)
    if key in handles:
        handles.move_to_end(key)
        return handles[key]
    ds = rasterio.open(path, **({} if level is None else {"overview_level": level}))
    handles[key] = ds
    while len(handles) > HANDLES_PER_THREAD:
        handles.popitem(last=False)[1].close()
    return ds


def _render(path: Path, kind: str, z: int, x: int, y: int, colormap: ColorMap | None) -> bytes | None:
    """rio-tiler's ``Reader`` decides whether the tile reaches the map; its ``reader.read`` warps
    the overview GDAL would choose straight onto the tile's 256 px grid. ``Reader.tile`` gives the
    same pixels but warps at the file's resolution and decimates afterwards, a read that cost
    18-25 ms a tile at every zoom here (GDAL 3.10 builds the warped VRT's overviews per tile)."""
    import morecantile
    from rasterio.errors import RasterioIOError
    from rasterio.transform import from_bounds
    from rio_tiler.io import Reader
    from rio_tiler.reader import read

    st = path.stat()
    try:
        info = _file_info(str(path), st.st_mtime_ns, st.st_size)
        b = _tms().xy_bounds(morecantile.Tile(x, y, z))
        bbox = (b.left, b.bottom, b.right, b.top)
        ds = _dataset(str(path), st.st_mtime_ns, st.st_size, _overview_level(info, bbox))
        with Reader(str(path), dataset=ds, tms=_tms()) as src:
            if not src.tile_exists(x, y, z):
                return None
        grid = {
            "transform": from_bounds(*bbox, TILE_SIZE, TILE_SIZE),
            "width": TILE_SIZE,
            "height": TILE_SIZE,
        }
        # Nearest for classes: a class code is never interpolated (and the overviews are MODE).
        method: Literal["nearest", "bilinear"] = "nearest" if kind == "classes" else "bilinear"
        img = read(ds, _tms().rasterio_crs, TILE_SIZE, TILE_SIZE, vrt_options=grid, reproject_method=method)
    except RasterioIOError as exc:
        raise DataError(f"{path.name}: cannot be read as a map ({exc}); re-run the observation") from exc
    if kind == "classes":
        return _png_paletted(
            np.where(img.mask == 0, NODATA, img.data[0]).astype(np.uint8), colormap or info.colormap
        )
    return _png_rgba(np.dstack([*img.data[:3], img.mask]).astype(np.uint8))


def _png_paletted(classes: np.ndarray, colormap: ColorMap) -> bytes:
    """An 8-bit indexed PNG: the class codes themselves with the colours as palette and alpha as
    its transparency table. Encoded by Pillow in 0.7 ms, against 6 ms for rio-tiler's RGBA render
    through GDAL, which also held the GIL (two threads drew a viewport no faster than one)."""
    from PIL import Image

    table = np.array([colormap.get(v, TRANSPARENT) for v in range(256)], np.uint8)
    image = Image.frombytes(
        "P", (classes.shape[1], classes.shape[0]), np.ascontiguousarray(classes).tobytes()
    )
    image.putpalette(table[:, :3].tobytes())
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=table[:, 3].tobytes())
    return out.getvalue()


def _png_rgba(rgba: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGBA", (rgba.shape[1], rgba.shape[0]), np.ascontiguousarray(rgba).tobytes()).save(
        out, format="PNG"
    )
    return out.getvalue()


def cog_bounds_wgs84(path: str | Path) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of a COG, for Leaflet's ``fitBounds`` (which wants
    ``[[south, west], [north, east]]``) and a tile layer's ``bounds``."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds

    _stat(Path(path))
    try:
        with rasterio.open(path) as src:
            west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    except RasterioIOError as exc:
        raise DataError(f"{Path(path).name}: cannot be read as a map ({exc})") from exc
    return float(west), float(south), float(east), float(north)
