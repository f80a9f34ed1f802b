"""Writers: the class map and confidence as Cloud-Optimised GeoTIFFs, polygons as GeoJSON,
statistics as JSON, and a STAC Item tying them to the input and the model package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.geo.infer import NODATA, _Sink
from eodeploy.geo.sources import Scene
from eodeploy.package.spec import ModelSpec

CLASSES_TIF, CONFIDENCE_TIF, TRUECOLOR_TIF = "classes.tif", "confidence.tif", "truecolor.tif"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def _rgb(color: str) -> tuple[int, int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), 255


class GeoTiffSink(_Sink):
    """Tiled working GeoTIFFs written row block by row block (never the whole map in memory)."""

    def __init__(self, folder: Path, scene: Scene, spec: ModelSpec) -> None:
        import rasterio

        profile = {
            "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": "uint8",
            "crs": scene.crs, "transform": scene.transform, "nodata": NODATA, "tiled": True,
            "blockxsize": 512, "blockysize": 512, "BIGTIFF": "IF_SAFER",  # uncompressed: the COG step compresses
        }  # fmt: skip
        self.paths = {
            "classes": folder / ("work-" + CLASSES_TIF),
            "confidence": folder / ("work-" + CONFIDENCE_TIF),
        }
        self.classes = rasterio.open(self.paths["classes"], "w", **profile)
        self.confidence = rasterio.open(self.paths["confidence"], "w", **profile)
        self.classes.write_colormap(
            1, {c.value: _rgb(c.color) for c in spec.classes} | {NODATA: (0, 0, 0, 0)}
        )
        self.classes.update_tags(1, CLASS_NAMES=json.dumps({c.value: c.name for c in spec.classes}))
        self.classes.set_band_description(1, "class")
        self.confidence.set_band_description(1, "confidence (%)")
        self.width = scene.width

    def write(self, row0: int, col0: int, classes: np.ndarray, confidence: np.ndarray) -> None:
        from rasterio.windows import Window

        win = Window(col0, row0, classes.shape[1], classes.shape[0])
        self.classes.write(classes, 1, window=win)
        self.confidence.write(confidence, 1, window=win)

    def close(self) -> None:
        self.classes.close()
        self.confidence.close()


def to_cog(src: Path, dst: Path, resampling: str, compress: str = "DEFLATE") -> None:
    """GDAL's COG driver: internal 512 px tiles, overviews, DEFLATE (JPEG at quality 85 for a
    picture with its mask); colour table, tags and an internal mask kept.

    ``resampling`` builds the overviews: MODE for class maps (an averaged class code is another
    class), AVERAGE for continuous values. GDAL does not record it, so it is written as the
    ``OVR_RESAMPLING_ALG`` tag (rio-cogeo's name) for readers and tile servers to check."""
    import rasterio
    import rasterio.shutil

    with rasterio.open(src, "r+") as work:
        work.update_tags(OVR_RESAMPLING_ALG=resampling.upper())
    quality = {"QUALITY": "85"} if compress == "JPEG" else {}
    rasterio.shutil.copy(
        src, dst, driver="COG", COMPRESS=compress, BLOCKSIZE="512", OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER", NUM_THREADS="2", **quality,
    )  # fmt: skip


def write_polygons(classes_tif: Path, out: Path, spec: ModelSpec, mmu_ha: float) -> int:
    """Class regions as GeoJSON (EPSG:4326), regions below the minimum mapping unit sieved away,
    outlines simplified to one pixel; each feature carries its class and geodesic area.

    Nodata and cloud take part in the sieve like a class: a fragment walled in by cloud has no
    class neighbour to merge into, and sieving with those pixels masked out kept it (on a
    partly cloudy Lahinch date 188 of 195 polygons were under the unit). The class map and its
    hectares keep every pixel; polygons are the map generalised to the unit."""
    import rasterio
    from pyproj import Geod
    from rasterio.features import shapes, sieve
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    geod = Geod(ellps="WGS84")
    names = {c.value: c.name for c in spec.classes}
    with rasterio.open(classes_tif) as src:
        data = src.read(1)
        pixel_m2 = abs(src.transform.a * src.transform.e)
        crs, transform = src.crs, src.transform
        res = abs(src.transform.a)
    if crs.is_geographic:  # degrees: convert the unit to pixels with the scene-centre pixel area
        from eodeploy.geo.area import PixelArea

        pixel_m2 = PixelArea(crs, transform).of_block(data.shape[0] // 2, 1, 1)[0, 0]
    min_px = max(1, int(round(mmu_ha * 10_000 / pixel_m2)))
    valid = data != NODATA
    sieved = sieve(data, size=min_px) if min_px > 1 else data.copy()
    sieved[~valid] = NODATA
    features = []
    for geom, value in shapes(sieved, mask=valid & (sieved != NODATA), transform=transform):
        poly = shape(geom).simplify(res, preserve_topology=True)
        if poly.is_empty:
            continue
        g = transform_geom(crs, "EPSG:4326", mapping(poly))
        area, _ = geod.geometry_area_perimeter(shape(g))
        if abs(area) < 0.9 * min_px * pixel_m2:  # split off by restoring cloud; under the unit
            continue
        features.append(
            {"type": "Feature", "geometry": g,
             "properties": {"class_id": int(value), "class": names.get(int(value), str(value)), "area_ha": round(abs(area) / 1e4, 4)}}
        )  # fmt: skip
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


def footprint(scene: Scene) -> dict[str, Any]:
    from rasterio.warp import transform_geom

    t, w, h = scene.transform, scene.width, scene.height
    ring = [t * (0, 0), t * (w, 0), t * (w, h), t * (0, h), t * (0, 0)]
    return transform_geom(scene.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})  # type: ignore[no-any-return]


def write_stac_item(
    folder: Path,
    scene: Scene,
    stats: dict[str, Any],
    spec: ModelSpec,
    package_item: Path,
    polygons: bool,
    name: str | None = None,
) -> None:
    """``item.json`` of the outputs in ``folder`` (to be renamed ``name``: the id is made from it).

    ``datetime`` is the scene's acquisition (STAC ``datetime``; for a composite, null with
    ``start_datetime``/``end_datetime``), never the processing time, which is ``created``. Links
    to the inputs and the model package are relative to the output folder, so a tree of inputs,
    models and outputs can be moved as a whole; URLs stay URLs."""
    import datetime as dt
    import os

    geom = footprint(scene)
    xs = [p[0] for p in geom["coordinates"][0]]
    ys = [p[1] for p in geom["coordinates"][0]]
    times = scene_times(scene)
    classes = [{"value": c.value, "name": c.name, "color_hint": c.color.lstrip("#")} for c in spec.classes]
    assets = {
        "classes": {"href": f"./{CLASSES_TIF}", "type": COG_TYPE,
                    "roles": ["data"], "classification:classes": classes, "raster:bands": [{"nodata": NODATA, "data_type": "uint8"}]},
        "confidence": {"href": f"./{CONFIDENCE_TIF}", "type": COG_TYPE,
                       "roles": ["data"], "raster:bands": [{"nodata": NODATA, "data_type": "uint8", "unit": "percent"}]},
        "stats": {"href": "./stats.json", "type": "application/json", "roles": ["metadata"]},
    }  # fmt: skip
    if (folder / TRUECOLOR_TIF).exists():  # the input as a picture: STAC's roles for a true-colour view
        assets["truecolor"] = {"href": f"./{TRUECOLOR_TIF}", "type": COG_TYPE, "title": "true colour (B04, B03, B02): reflectance 0-0.275 onto 0-255, EuroSAT's rendering",
                               "roles": ["overview", "visual"], "raster:bands": [{"data_type": "uint8"}] * 3}  # fmt: skip
    if polygons:
        assets["polygons"] = {"href": "./polygons.geojson", "type": "application/geo+json", "roles": ["data"]}

    def href(p: str | Path) -> str:
        if "://" in str(p):
            return str(p)
        return Path(os.path.relpath(Path(p).resolve(), folder.resolve())).as_posix()

    links = [
        {"rel": "derived_from", "href": href(p), "title": "input"} for p in scene.provenance.get("inputs", [])
    ]
    links.append({"rel": "derived_from", "href": href(package_item), "title": "model package (STAC MLM)"})
    item = {
        "type": "Feature", "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/classification/v2.0.0/schema.json",
                            "https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "id": f"{stats['model']['name']}-v{stats['model']['version']}-{name or folder.name}",
        "geometry": geom, "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": {**times, "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "eodeploy:model": stats["model"], "proj:code": str(scene.crs), "proj:shape": [scene.height, scene.width],
                       "proj:transform": list(scene.transform)[:6], "eodeploy:areas_ha": stats["areas_ha"]},
        "assets": assets, "links": links,
    }  # fmt: skip
    (folder / "item.json").write_text(json.dumps(item, indent=2))


def scene_times(scene: Scene) -> dict[str, Any]:
    """STAC time fields of the scene: its STAC Item's, else ``geo.dates.acquisition`` of its first
    input; ``{"datetime": None}`` alone when nothing says (rather than a made-up time)."""
    from eodeploy.geo.dates import acquisition

    if scene.provenance.get("datetime"):
        return {"datetime": scene.provenance["datetime"]}
    inputs = scene.provenance.get("inputs") or []
    t, period = acquisition(inputs[0]) if inputs and "://" not in str(inputs[0]) else (None, None)
    if t:
        return {"datetime": t.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if period:
        start, end = (p.strftime("%Y-%m-%dT%H:%M:%SZ") for p in period)
        return {"datetime": None, "start_datetime": start, "end_datetime": end}
    return {"datetime": None}


def axis_labels(crs: Any) -> tuple[str, str]:
    """Axis titles naming the map's CRS and unit: ('easting (m), EPSG:32629', ...)."""
    epsg = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_string()
    if crs.is_geographic:
        return f"longitude (degrees), {epsg}", f"latitude (degrees), {epsg}"
    unit = crs.linear_units or "m"
    unit = "m" if unit in ("metre", "meter") else unit
    return f"easting ({unit}), {epsg}", f"northing ({unit}), {epsg}"


def write_preview(
    classes_tif: Path, out: Path, spec: ModelSpec, title: str, max_px: int = 1024, outline: Any = None
) -> None:
    """A quick-look map (PNG) with a legend of the classes present, axes in the map's CRS and
    unit, and ``outline`` (a WGS84 shapely geometry: the area of interest) drawn over it; read
    from the COG at a reduced resolution so it costs little even for a full tile. Needs the ``plot``
    extra (MissingExtraError otherwise)."""
    from eodeploy._lazy import lazy_import

    lazy_import("matplotlib", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.artist import Artist
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    with rasterio.open(classes_tif) as src:
        scale = max(1, int(np.ceil(max(src.width, src.height) / max_px)))
        data = src.read(
            1, out_shape=(src.height // scale or 1, src.width // scale or 1), resampling=Resampling.nearest
        )
        b = src.bounds
        crs = src.crs
    colors = ["#000000"] * 256
    for c in spec.classes:
        colors[c.value] = c.color
    colors[NODATA] = "#ffffff"
    fig, ax = plt.subplots(figsize=(8, 8 * data.shape[0] / max(data.shape[1], 1) + 0.5))
    ax.imshow(data, cmap=ListedColormap(colors), vmin=0, vmax=255, interpolation="nearest",
              extent=(b.left, b.right, b.bottom, b.top))  # fmt: skip
    present = set(np.unique(data).tolist())
    handles: list[Artist] = [Patch(color=c.color, label=c.name) for c in spec.classes if c.value in present]
    if NODATA in present:
        handles.append(Patch(facecolor="#ffffff", edgecolor="#999999", label="nodata / cloud"))
    if outline is not None:
        from rasterio.warp import transform_geom
        from shapely.geometry import mapping, shape

        geom = shape(transform_geom("EPSG:4326", crs, mapping(outline)))
        for poly in getattr(geom, "geoms", [geom]):
            xs, ys = poly.exterior.xy
            ax.plot(xs, ys, color="black", linewidth=1.5)
            ax.plot(xs, ys, color="white", linewidth=0.6, linestyle="--")
        handles.append(Line2D([], [], color="black", linewidth=1.5, label="area of interest"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(title, fontsize=10)
    xlabel, ylabel = axis_labels(crs)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
