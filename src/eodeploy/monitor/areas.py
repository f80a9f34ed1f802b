"""Areas of interest: geometry in (GeoJSON, any CRS), checked and repaired; definitions validated
against the model they name; stored and updated without losing history."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from eodeploy.errors import ConflictError, DataError, ModelNotFoundError, NotFoundError
from eodeploy.geo.area import reproject
from eodeploy.monitor.db import Area, Observation
from eodeploy.package.repository import ModelPackage, ModelRepository

# --- imagery sources -----------------------------------------------------------------------------


class FolderSource(BaseModel):
    """A watched folder where exports land: GeoTIFF scenes (dated in the file name or TIFF tags)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["folder"] = "folder"
    path: str
    pattern: str = "*.tif"


class FilesSource(BaseModel):
    """A fixed list of scene files (GeoTIFF/COG or STAC Item JSON)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["files"] = "files"
    paths: list[str] = Field(min_length=1)


class StacSource(BaseModel):
    """A STAC API search: collection, cloud-cover limit, date window looking back from the run date."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["stac"] = "stac"
    url: str = Field(pattern=r"^https?://")
    collections: list[str] = Field(default=["sentinel-2-l2a"], min_length=1)
    max_cloud: float = Field(default=30.0, ge=0, le=100)
    days: int = Field(default=10, ge=1, le=3650)
    max_items: int = Field(default=50, ge=1, le=1000)


Source = Annotated[FolderSource | FilesSource | StacSource, Field(discriminator="type")]

# --- area definitions ----------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class AreaSpec(BaseModel):
    """What defines an area of interest (the REST API's body and the CLI's options)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Letters, digits, '_', '.', '-'; used in URLs")
    geometry: dict[str, Any] = Field(
        description="GeoJSON Polygon/MultiPolygon, Feature or FeatureCollection (WGS84 unless crs)"
    )
    crs: str | None = Field(default=None, description="CRS of the coordinates, e.g. EPSG:32651")
    model: str = "eurosat-cnn"
    model_version: str = Field(default="latest", description="a version number, a label, or latest")
    target_class: str
    threshold_ha: float | None = Field(default=None, ge=0)
    threshold_pct: float | None = Field(default=None, ge=0)
    alert_on: Literal["loss", "gain", "any"] = "any"
    min_observed: float = Field(default=0.7, gt=0, le=1, description="share of the area seen cloud-free")
    mmu_ha: float = Field(default=0.5, ge=0, le=1e4, description="minimum mapping unit (ha)")
    source: Source
    baseline_start: datetime | None = None
    baseline_end: datetime | None = None
    webhook_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    emails: list[str] = Field(default_factory=list)
    interval_hours: float = Field(default=24.0, gt=0, le=24 * 366)
    active: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return v

    @field_validator("emails")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        bad = [e for e in v if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", e)]
        if bad:
            raise ValueError(f"not e-mail addresses: {', '.join(bad)}")
        return v

    @field_validator("baseline_start", "baseline_end")
    @classmethod
    def _naive_utc(cls, v: datetime | None) -> datetime | None:
        return naive_utc(v) if v else v

    @model_validator(mode="after")
    def _baseline(self) -> AreaSpec:
        if (self.baseline_start is None) != (self.baseline_end is None):
            raise ValueError(
                "give both baseline_start and baseline_end, or neither (first valid observation)"
            )
        if self.baseline_start and self.baseline_end and self.baseline_end < self.baseline_start:
            raise ValueError("baseline_end is before baseline_start")
        return self


#: Fields that change what is measured: changing them would make old observations incomparable.
DEFINING = ("geometry", "model", "model_version", "target_class", "mmu_ha")


class AreaUpdate(BaseModel):
    """Fields that can change without invalidating history (thresholds, alerts, schedule, source)."""

    model_config = ConfigDict(extra="forbid")
    threshold_ha: float | None = Field(default=None, ge=0)
    threshold_pct: float | None = Field(default=None, ge=0)
    alert_on: Literal["loss", "gain", "any"] | None = None
    min_observed: float | None = Field(default=None, gt=0, le=1)
    source: Source | None = None
    webhook_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000)
    emails: list[str] | None = None
    interval_hours: float | None = Field(default=None, gt=0, le=24 * 366)
    active: bool | None = None


# --- geometry ------------------------------------------------------------------------------------


def _crs_of(data: dict[str, Any], crs: str | None) -> str:
    if crs:
        return crs
    legacy = (data.get("crs") or {}).get("properties", {}).get("name") if isinstance(data, dict) else None
    return str(legacy) if legacy else "EPSG:4326"


def read_geojson(path: str | Path) -> Any:
    """The parsed contents of a GeoJSON file; a clear error when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give a GeoJSON file with the area's polygon") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid GeoJSON ({exc})") from exc


def load_geometry(data: dict[str, Any] | str | Path, crs: str | None = None) -> tuple[Any, list[str]]:
    """A WGS84 (multi)polygon from GeoJSON in any CRS, and notes on what was repaired.

    Refused, with the reason: no polygon, unknown CRS, coordinates outside the CRS, an empty or
    zero-area shape. Self-intersections and similar are repaired (``shapely.make_valid``) and said so.
    """
    import shapely
    from pyproj import CRS
    from pyproj.exceptions import CRSError
    from shapely.geometry import shape
    from shapely.validation import explain_validity

    if isinstance(data, (str, Path)):
        data = read_geojson(data)
    if not isinstance(data, dict) or "type" not in data:
        raise DataError(
            "the geometry must be a GeoJSON object (Polygon, MultiPolygon, Feature or FeatureCollection)"
        )
    src_crs = _crs_of(data, crs)
    kind = data["type"]
    if kind == "FeatureCollection":
        geoms = [f.get("geometry") for f in data.get("features") or [] if isinstance(f, dict)]
    elif kind == "Feature":
        geoms = [data.get("geometry")]
    else:
        geoms = [data]
    parts = []
    for g in geoms:
        if not isinstance(g, dict):
            raise DataError("a feature has no geometry; every feature needs a Polygon or MultiPolygon")
        try:
            parts.append(shape(g))
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
            raise DataError(f"not a valid GeoJSON geometry ({type(exc).__name__}: {exc})") from exc
    if not parts:
        raise DataError("the GeoJSON holds no features; give a Polygon or MultiPolygon")
    wrong = sorted({p.geom_type for p in parts if p.geom_type not in ("Polygon", "MultiPolygon")})
    if wrong:
        raise DataError(
            f"an area of interest must be a Polygon or MultiPolygon, not {', '.join(wrong)}; "
            "buffer points or lines into polygons first"
        )
    notes: list[str] = []
    fixed = []
    for p in parts:
        if p.is_empty:
            continue
        if not p.is_valid:
            reason = explain_validity(p)
            p = shapely.make_valid(p)
            p = shapely.union_all(
                [g for g in getattr(p, "geoms", [p]) if g.geom_type in ("Polygon", "MultiPolygon")]
            )
            notes.append(f"repaired invalid geometry ({reason})")
        fixed.append(p)
    geom = shapely.union_all(fixed) if fixed else None
    if geom is None or geom.is_empty or geom.area == 0:
        raise DataError(
            "the geometry encloses no area (empty, or collapsed when repaired); draw a proper polygon"
        )
    try:
        source = CRS.from_user_input(src_crs)
    except CRSError as exc:
        raise DataError(f"unknown CRS {src_crs!r} ({exc}); give it as EPSG:XXXX") from exc
    if not source.equals(CRS.from_epsg(4326)):
        geom = reproject(geom, source, "EPSG:4326")
    x0, y0, x1, y1 = geom.bounds
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90) or not all(map(_finite, geom.bounds)):
        raise DataError(
            f"coordinates {tuple(round(v, 3) for v in geom.bounds)} are not longitude/latitude; "
            "if they are projected, say in which CRS (crs / --crs EPSG:XXXX)"
        )
    if not geom.is_valid:  # reprojection can fold a shape
        geom = shapely.make_valid(geom)
        notes.append("repaired after reprojection")
    return geom, notes


def naive_utc(t: datetime) -> datetime:
    """Times are stored as naive UTC; aware ones are converted."""
    from datetime import UTC

    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def geodesic_ha(geom: Any) -> float:
    from pyproj import Geod

    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(geom)
    return abs(area) / 1e4


# --- models --------------------------------------------------------------------------------------


def resolve_model(repo: ModelRepository, name: str, ref: str) -> ModelPackage:
    """A model version by number, 'latest', or a label from its serving.json."""
    if ref == "latest" or ref.isdigit():
        return repo.get(name, ref)
    from eodeploy.serve.policy import ServingConfig, VersionPolicy

    labels = ServingConfig.read(repo.root / name, VersionPolicy()).labels if repo.versions(name) else {}
    if ref not in labels:
        repo.get(name)  # a clear error when the model itself is missing
        raise ModelNotFoundError(
            f"model {name!r} has no label {ref!r} (labels: {', '.join(labels) or 'none'}); "
            "use a version number, 'latest' or a label set with 'eodeploy models route'"
        )
    return repo.get(name, labels[ref])


def check_model(repo: ModelRepository, spec: AreaSpec) -> ModelPackage:
    pkg = resolve_model(repo, spec.model, spec.model_version)
    classes = [c.name for c in pkg.spec.classes]
    if spec.target_class not in classes:
        close = [c for c in classes if c.lower() == spec.target_class.lower()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(
            f"model {pkg.name} v{pkg.version} has no class {spec.target_class!r}{hint}; "
            f"its classes are: {', '.join(classes)}"
        )
    return pkg


# --- storage -------------------------------------------------------------------------------------


def get_area(session: Session, name: str) -> Area:
    area = session.scalar(select(Area).where(Area.name == name))
    if area is None:
        known = ", ".join(session.scalars(select(Area.name).order_by(Area.name)).all()) or "none"
        raise NotFoundError(f"no area of interest named {name!r} (areas: {known})")
    return area


def _row(spec: AreaSpec, geom: Any) -> dict[str, Any]:
    import shapely

    return {
        "name": spec.name,
        "geojson": shapely.geometry.mapping(geom),
        "wkb": shapely.to_wkb(geom),
        "area_ha": round(geodesic_ha(geom), 4),
        "model": spec.model,
        "model_version": spec.model_version,
        "target_class": spec.target_class,
        "threshold_ha": spec.threshold_ha,
        "threshold_pct": spec.threshold_pct,
        "alert_on": spec.alert_on,
        "min_observed": spec.min_observed,
        "mmu_ha": spec.mmu_ha,
        "source": spec.source.model_dump(),
        "baseline_start": spec.baseline_start,
        "baseline_end": spec.baseline_end,
        "webhook_url": spec.webhook_url,
        "emails": list(spec.emails),
        "interval_hours": spec.interval_hours,
        "active": spec.active,
    }


def _geojson_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    from shapely.geometry import shape

    return bool(shape(a).equals_exact(shape(b), 1e-9))


def add_area(
    session: Session, repo: ModelRepository, spec: AreaSpec, *, replace: bool = False
) -> tuple[Area, list[str], bool]:
    """Store an area. Returns (area, notes, created). The same definition again is a no-op; a
    different one under a taken name is refused unless ``replace`` (which drops its history)."""
    geom, notes = load_geometry(spec.geometry, spec.crs)
    check_model(repo, spec)
    if isinstance(spec.source, (FolderSource,)) and not Path(spec.source.path).is_dir():
        raise DataError(f"watched folder {spec.source.path} does not exist; create it or fix the path")
    row = _row(spec, geom)
    existing = session.scalar(select(Area).where(Area.name == spec.name))
    if existing is not None:
        same = all(
            _geojson_equal(getattr(existing, k), v) if k == "geojson" else getattr(existing, k) == v
            for k, v in row.items() if k not in ("wkb", "area_ha")
        )  # fmt: skip
        if same:
            return existing, notes + ["unchanged: an identical area is already stored"], False
        if not replace:
            n = len(existing.observations)
            raise ConflictError(
                f"an area named {spec.name!r} already exists with a different definition "
                f"({n} observation(s) stored); choose another name, update thresholds/alerts/source "
                "with 'monitor update', or replace it (its history is deleted)"
            )
        session.delete(existing)
        session.flush()
        notes.append(f"replaced the previous definition and its {len(existing.observations)} observation(s)")
    area = Area(**row)
    session.add(area)
    session.flush()
    return area, notes, True


def update_area(session: Session, name: str, update: AreaUpdate) -> Area:
    area = get_area(session, name)
    for key, value in update.model_dump(exclude_unset=True).items():
        if key == "source" and value is not None:
            value = update.source.model_dump()  # type: ignore[union-attr]
        setattr(area, key, value)
    session.flush()
    return area


def remove_area(session: Session, name: str, purge: bool = False) -> int:
    """Delete an area; one with observations only with ``purge`` (its history goes too)."""
    area = get_area(session, name)
    n = session.query(Observation).filter(Observation.area_id == area.id).count()
    if n and not purge:
        raise ConflictError(
            f"area {name!r} has {n} observation(s); deactivate it (active=false) to stop monitoring "
            "and keep its history, or purge it to delete everything"
        )
    session.delete(area)
    session.flush()
    return n


def area_dict(area: Area) -> dict[str, Any]:
    return {
        "name": area.name,
        "geometry": area.geojson,
        "area_ha": area.area_ha,
        "model": area.model,
        "model_version": area.model_version,
        "target_class": area.target_class,
        "threshold_ha": area.threshold_ha,
        "threshold_pct": area.threshold_pct,
        "alert_on": area.alert_on,
        "min_observed": area.min_observed,
        "mmu_ha": area.mmu_ha,
        "source": area.source,
        "baseline_start": iso(area.baseline_start),
        "baseline_end": iso(area.baseline_end),
        "webhook_url": area.webhook_url,
        "emails": area.emails,
        "interval_hours": area.interval_hours,
        "active": area.active,
        "created_at": iso(area.created_at),
        "last_checked_at": iso(area.last_checked_at),
    }


def iso(t: datetime | None) -> str | None:
    return t.isoformat() + "Z" if t else None
