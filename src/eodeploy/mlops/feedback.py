"""Feedback and live accuracy: true labels for served predictions (by request id), verdicts on
monitoring alerts, labelled points on an observation's map; rolling accuracy per model version
with its Wilson 95 % interval.

The server remembers its recent predictions in memory (``RecentPredictions``: bounded by count,
bytes and age, oldest out first); feedback names one by the request id every response carries
(``X-Request-ID``). A labelled patch is stored in the database, in the model's bands and units,
so any host can retrain on it: bounded by count, bytes and age (``feedback_*`` settings), while
the label row itself is kept for accuracy. A fixed share of patches (by a hash of their key) is
held back from retraining to evaluate candidates on.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from eodeploy.errors import InvalidInputError, NotFoundError
from eodeploy.monitor.db import Alert, Base, Observation, utcnow
from eodeploy.settings import Settings

#: Below this many labels per version no decision is taken on accuracy (``feedback_min_labels``).
MIN_LABELS = 200
Z95 = 1.959963984540054


class Feedback(Base):
    """One true label for one prediction: a served patch (``request``) or a point on an
    observation's map (``observation``). Unique per key: labelling the same thing again replaces it."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    source: Mapped[str] = mapped_column(String(20))  # request, observation
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    predicted: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(100))
    correct: Mapped[bool] = mapped_column(Boolean)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    patch_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    observation_id: Mapped[int | None] = mapped_column(
        ForeignKey("observations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Held back from retraining, to evaluate the retrained candidate on (``feedback_holdout``).
    holdout: Mapped[bool] = mapped_column(Boolean, default=False)
    by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class FeedbackPatch(Base):
    """The input patch of a labelled prediction (``np.save`` bytes, model bands and units)."""

    __tablename__ = "feedback_patches"
    feedback_id: Mapped[int] = mapped_column(ForeignKey("feedback.id", ondelete="CASCADE"), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    nbytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class AlertVerdict(Base):
    """Whether a monitoring alert was a true or a false positive (one per alert, replaced)."""

    __tablename__ = "alert_verdicts"
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(20))  # true_positive, false_positive
    by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --- the Wilson interval and rolling accuracy ---------------------------------------------------


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: right near 0 and 1 and on small n, where the normal
    approximation is not. (0, 1) when there is nothing to go on."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """Accuracy on ``n`` labels with its Wilson 95 % interval; ``decidable`` once ``n`` reaches the
    configured minimum (no accuracy-based decision before)."""

    n: int
    correct: int
    rate: float | None
    low: float
    high: float
    decidable: bool

    @classmethod
    def of(cls, correct: int, n: int, min_labels: int = MIN_LABELS) -> Accuracy:
        low, high = wilson_interval(correct, n)
        return cls(n, correct, correct / n if n else None, low, high, n >= min_labels)

    def text(self) -> str:
        if not self.n:
            return "no labels yet"
        pm = (self.high - self.low) / 2 * 100
        return (
            f"{self.rate:.1%} ({self.correct}/{self.n}; 95 % interval {self.low:.1%}-{self.high:.1%}, "
            f"about ±{pm:.1f} pt){'' if self.decidable else ' - too few labels to decide on'}"
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["text"] = self.text()
        return d


def accuracy(
    session: Session,
    model: str,
    version: int,
    window: int | timedelta | None = None,
    *,
    min_labels: int = MIN_LABELS,
) -> Accuracy:
    """Rolling accuracy of ``model`` v``version`` on its feedback: the latest ``window`` labels
    (an int), the labels of the last ``window`` (a timedelta), or all of them (None)."""
    where = [Feedback.model_name == model, Feedback.model_version == version]
    if isinstance(window, timedelta):
        where.append(Feedback.created_at >= utcnow() - window)
    q = select(Feedback.correct).where(*where).order_by(Feedback.created_at.desc(), Feedback.id.desc())
    if isinstance(window, int):
        if window < 1:
            raise InvalidInputError(f"window must be at least 1 label, got {window}")
        q = q.limit(window)
    flags = list(session.scalars(q))
    return Accuracy.of(sum(flags), len(flags), min_labels)


def accuracy_by_version(
    session: Session, model: str, window: int | timedelta | None = None, *, min_labels: int = MIN_LABELS
) -> dict[int, Accuracy]:
    """``accuracy`` of every version of ``model`` that has feedback, by version."""
    versions = session.scalars(
        select(Feedback.model_version).where(Feedback.model_name == model).distinct()
    ).all()
    return {v: accuracy(session, model, v, window, min_labels=min_labels) for v in sorted(versions)}


# --- recent predictions, in memory --------------------------------------------------------------


@dataclass
class Remembered:
    """One served request: enough to label it later and to train on its patches."""

    model: str
    version: int
    spec: Any  # ModelSpec of the version that answered
    raw: np.ndarray  # (N, C, H, W) as the client sent it
    probabilities: np.ndarray  # (N, n_classes)
    band_names: Sequence[str] | None
    units: str | None
    at: float  # time.monotonic()

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes + self.probabilities.nbytes) + 512


class RecentPredictions:
    """Request id -> what was predicted, LRU-bounded by count and bytes, expired after ``ttl_s``.
    ``remember`` keeps references (no copy) and runs on the event loop in microseconds."""

    def __init__(self, max_requests: int, max_bytes: int, ttl_s: float) -> None:
        self.max_requests, self.max_bytes, self.ttl_s = max_requests, max_bytes, ttl_s
        self._items: OrderedDict[str, Remembered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, s: Settings) -> RecentPredictions:
        return cls(
            s.feedback_recent_requests, int(s.feedback_recent_mib * 2**20), s.feedback_recent_hours * 3600
        )

    def __len__(self) -> int:
        return len(self._items)

    def remember(
        self,
        served: Any,
        raw: np.ndarray,
        probabilities: np.ndarray,
        band_names: Sequence[str] | None = None,
        units: str | None = None,
        request_id: str | None = None,
    ) -> None:
        if request_id is None:
            from eodeploy.serve.middleware import request_id as current

            request_id = current.get()
        if not request_id or request_id == "-":  # gRPC and calls outside a request carry none
            return
        item = Remembered(served.name, served.version, served.spec, raw, probabilities,
                          list(band_names) if band_names else None, units, time.monotonic())  # fmt: skip
        if item.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(request_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[request_id] = item
            self._bytes += item.nbytes
            while self._items and (len(self._items) > self.max_requests or self._bytes > self.max_bytes):
                _, gone = self._items.popitem(last=False)
                self._bytes -= gone.nbytes

    def get(self, request_id: str) -> Remembered | None:
        with self._lock:
            item = self._items.get(request_id)
            if item is None:
                return None
            if time.monotonic() - item.at > self.ttl_s:
                del self._items[request_id]
                self._bytes -= item.nbytes
                return None
            return item


# --- storing feedback ---------------------------------------------------------------------------


def _held_back(key: str, share: float) -> bool:
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    return u < share


def _check_label(label: str, classes: Sequence[str], model: str, version: int) -> None:
    if label not in classes:
        raise InvalidInputError(
            f"label {label!r} is not a class of {model} v{version}; use one of: {', '.join(classes)}"
        )


def _upsert(session: Session, key: str, **values: Any) -> Feedback:
    row = session.scalar(select(Feedback).where(Feedback.key == key))
    if row is None:
        row = Feedback(key=key, **values)
        session.add(row)
    else:
        for k, v in values.items():
            setattr(row, k, v)
        row.created_at = utcnow()
    session.flush()
    return row


@dataclass(frozen=True)
class LabelledPatch:
    """Feedback checked against what was served, ready to store (no database touched yet)."""

    request_id: str
    index: int
    model: str
    version: int
    predicted: str
    label: str
    confidence: float
    patch: np.ndarray  # model bands and units


def check_feedback(
    recent: RecentPredictions | None,
    settings: Settings,
    request_id: str,
    label: str,
    index: int | None = None,
) -> LabelledPatch:
    """The served prediction ``request_id`` names, with its true ``label``: 404 when it is not (or
    no longer) remembered, 400 for a missing/out-of-range index or a label not among its classes."""
    item = recent.get(request_id) if recent is not None else None
    if item is None:
        hours = settings.feedback_recent_hours
        raise NotFoundError(
            f"no recent prediction with request id {request_id!r}: this server remembers its last "
            f"{settings.feedback_recent_requests} requests for {hours:g} h (the X-Request-ID header of "
            "the response); it expired, was never served here (another replica?) or the server restarted"
        )
    n = len(item.probabilities)
    if index is None:
        if n > 1:
            raise InvalidInputError(
                f"request {request_id!r} carried {n} patches: give the patch index (0-{n - 1})"
            )
        index = 0
    if not 0 <= index < n:
        raise InvalidInputError(
            f"patch index {index} is out of range: request {request_id!r} carried {n} patch(es)"
        )
    classes = list(item.spec.class_names)
    _check_label(label, classes, item.model, item.version)
    p = item.probabilities[index]
    from eodeploy.runtime.preprocess import to_model_units

    patch = to_model_units(item.raw[index : index + 1], item.spec, item.band_names, item.units)[0]
    return LabelledPatch(request_id, index, item.model, item.version, classes[int(p.argmax())], label,
                         float(p.max()), patch)  # fmt: skip


def record_feedback(
    session: Session,
    recent: RecentPredictions | None,
    settings: Settings,
    request_id: str,
    label: str,
    index: int | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Store the true ``label`` of patch ``index`` of the request ``request_id`` (and its patch)."""
    return store_feedback(session, check_feedback(recent, settings, request_id, label, index), settings, by)


def store_feedback(
    session: Session, fb: LabelledPatch, settings: Settings, by: str | None = None
) -> dict[str, Any]:
    """The feedback row (replacing an earlier label of the same patch) and its patch, then pruning."""
    key = f"request:{fb.request_id}:{fb.index}"
    row = _upsert(
        session, key, source="request", model_name=fb.model, model_version=fb.version,
        predicted=fb.predicted, label=fb.label, correct=fb.predicted == fb.label, confidence=fb.confidence,
        request_id=fb.request_id, patch_index=fb.index, holdout=_held_back(key, settings.feedback_holdout),
        by=by,
    )  # fmt: skip
    data = _npy(fb.patch)
    stored = session.get(FeedbackPatch, row.id)
    if stored is None:
        session.add(FeedbackPatch(feedback_id=row.id, model_name=fb.model, data=data, nbytes=len(data)))
    else:
        stored.data, stored.nbytes, stored.created_at = data, len(data), utcnow()
    session.flush()
    pruned = prune_patches(session, settings)
    return {**feedback_dict(row), "patch_stored": session.get(FeedbackPatch, row.id) is not None,
            "patches_pruned": pruned}  # fmt: skip


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def load_patch(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)  # type: ignore[no-any-return]


def prune_patches(session: Session, settings: Settings) -> int:
    """Keep patches within the retention (days), the count and the byte bound: oldest out first."""
    cutoff = utcnow() - timedelta(days=settings.feedback_retention_days)
    res = session.execute(delete(FeedbackPatch).where(FeedbackPatch.created_at < cutoff))
    n = int(res.rowcount or 0)  # type: ignore[attr-defined]
    max_n, max_b = settings.feedback_max_patches, int(settings.feedback_max_patch_mib * 2**20)
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(FeedbackPatch.nbytes), 0))
    ).one()
    if count <= max_n and total <= max_b:
        return n
    drop, kept, size = [], 0, 0
    rows = session.execute(
        select(FeedbackPatch.feedback_id, FeedbackPatch.nbytes).order_by(
            FeedbackPatch.created_at.desc(), FeedbackPatch.feedback_id.desc()
        )
    )
    for fid, nbytes in rows:
        if kept + 1 > max_n or size + nbytes > max_b:
            drop.append(fid)
        else:
            kept, size = kept + 1, size + nbytes
    for i in range(0, len(drop), 500):
        session.execute(delete(FeedbackPatch).where(FeedbackPatch.feedback_id.in_(drop[i : i + 500])))
    return n + len(drop)


def feedback_dict(row: Feedback) -> dict[str, Any]:
    return {
        "id": row.id, "source": row.source, "model": row.model_name, "version": row.model_version,
        "predicted": row.predicted, "label": row.label, "correct": row.correct,
        "confidence": row.confidence, "request_id": row.request_id, "patch_index": row.patch_index,
        "observation_id": row.observation_id, "lon": row.lon, "lat": row.lat, "holdout": row.holdout,
        "by": row.by, "created_at": row.created_at.isoformat() + "Z",
    }  # fmt: skip


def feedback_patches(
    session: Session, model: str, class_names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, list[int]]]:
    """The labelled patches of ``model`` kept for training: ``{"train": ..., "holdout": ...}``, each
    (patches (N, C, H, W), label indices into ``class_names``, feedback ids)."""
    rows = session.execute(
        select(Feedback.id, Feedback.label, Feedback.holdout, FeedbackPatch.data)
        .join(FeedbackPatch, FeedbackPatch.feedback_id == Feedback.id)
        .where(Feedback.model_name == model, Feedback.label.in_(list(class_names)))
        .order_by(Feedback.id)
    ).all()
    out: dict[str, tuple[list[np.ndarray], list[int], list[int]]] = {
        "train": ([], [], []),
        "holdout": ([], [], []),
    }
    for fid, label, holdout, data in rows:
        part = out["holdout" if holdout else "train"]
        part[0].append(load_patch(data))
        part[1].append(list(class_names).index(label))
        part[2].append(fid)
    return {
        k: (np.stack(p) if p else np.empty((0,)), np.array(y, dtype=np.int64), ids)
        for k, (p, y, ids) in out.items()
    }


# --- monitoring: alert verdicts, labelled points on a map ---------------------------------------

VERDICTS = ("true_positive", "false_positive")


def set_alert_verdict(
    session: Session, alert_id: int, verdict: str, by: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """Mark an alert a true or false positive (it is acknowledged too); the area's alert
    precision so far, with its Wilson interval."""
    if verdict not in VERDICTS:
        raise InvalidInputError(f"verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFoundError(f"no alert with id {alert_id}; list them with GET /monitor/alerts")
    row = session.get(AlertVerdict, alert_id)
    if row is None:
        row = AlertVerdict(alert_id=alert_id, verdict=verdict, by=by, note=note)
        session.add(row)
    else:
        row.verdict, row.by, row.note, row.created_at = verdict, by, note, utcnow()
    if alert.acknowledged_at is None:
        alert.acknowledged_at, alert.acknowledged_by = utcnow(), by
    session.flush()
    verdicts = session.scalars(
        select(AlertVerdict.verdict)
        .join(Alert, Alert.id == AlertVerdict.alert_id)
        .where(Alert.area_id == alert.area_id)
    ).all()
    tp = sum(v == "true_positive" for v in verdicts)
    return {
        "alert_id": alert_id, "verdict": row.verdict, "by": row.by, "note": row.note,
        "at": row.created_at.isoformat() + "Z",
        "area_precision": Accuracy.of(tp, len(verdicts), min_labels=0).as_dict(),
    }  # fmt: skip


def _points(geojson: Any) -> list[tuple[float, float, str]]:
    """(lon, lat, class) of GeoJSON Point features; ``properties.class`` (or ``label``) names the class."""
    if isinstance(geojson, dict) and geojson.get("type") == "FeatureCollection":
        features = geojson.get("features")
    elif isinstance(geojson, dict) and geojson.get("type") == "Feature":
        features = [geojson]
    else:
        features = geojson if isinstance(geojson, list) else None
    if not isinstance(features, list) or not features:
        raise InvalidInputError(
            "send a GeoJSON FeatureCollection of Point features (WGS84) with a 'class' property"
        )
    out = []
    for i, f in enumerate(features):
        geom = f.get("geometry") if isinstance(f, dict) else None
        props = (f.get("properties") or {}) if isinstance(f, dict) else {}
        if not isinstance(geom, dict) or geom.get("type") != "Point":
            raise InvalidInputError(f"feature {i}: only Point geometries can label a map")
        c = geom.get("coordinates")
        if (
            not isinstance(c, list) or len(c) < 2
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in c[:2])
            or not (-180 <= c[0] <= 180 and -90 <= c[1] <= 90)
        ):  # fmt: skip
            raise InvalidInputError(
                f"feature {i}: coordinates must be [longitude, latitude] in degrees (WGS84)"
            )
        cls = props.get("class", props.get("label")) if isinstance(props, dict) else None
        if not isinstance(cls, str) or not cls:
            raise InvalidInputError(f"feature {i}: give the true class name in properties.class")
        out.append((float(c[0]), float(c[1]), cls))
    if len(out) > 10_000:
        raise InvalidInputError(f"{len(out)} points in one request; send at most 10000")
    return out


def label_observation(
    session: Session, observation_id: int, geojson: Any, holdout: float = 0.2, by: str | None = None
) -> dict[str, Any]:
    """Correct an observation's map by labelled points: the class map is read at each point and
    one feedback row (predicted vs true) stored per point. A point off the map is refused (400)."""
    import json

    import rasterio
    from rasterio.warp import transform

    from eodeploy.geo.outputs import CLASSES_TIF

    obs = session.get(Observation, observation_id)
    if obs is None:
        raise NotFoundError(
            f"no observation with id {observation_id}; see GET /monitor/areas/{{name}}/series"
        )
    pts = _points(geojson)
    if not obs.outputs or not (Path(obs.outputs) / CLASSES_TIF).is_file():
        raise InvalidInputError(
            f"observation {observation_id} has no class map (its scene was clouded over, or its files "
            "were removed); label a clear observation"
        )
    with rasterio.open(Path(obs.outputs) / CLASSES_TIF) as ds:
        names = {int(k): v for k, v in json.loads(ds.tags(1).get("CLASS_NAMES", "{}")).items()}
        xs, ys = transform("EPSG:4326", ds.crs, [p[0] for p in pts], [p[1] for p in pts])
        cells = [ds.index(x, y) for x, y in zip(xs, ys)]
        for i, (r, c) in enumerate(cells):
            if not (0 <= r < ds.height and 0 <= c < ds.width):
                raise InvalidInputError(
                    f"point {i} ({pts[i][0]:.6f}, {pts[i][1]:.6f}) lies outside the map of observation "
                    f"{observation_id}; label points inside it"
                )
        values = [int(ds.read(1, window=((r, r + 1), (c, c + 1)))[0, 0]) for r, c in cells]
        nodata = ds.nodata
    classes = [names[k] for k in sorted(names)]
    rows = []
    for i, ((lon, lat, cls), v) in enumerate(zip(pts, values)):
        if (nodata is not None and v == int(nodata)) or v not in names:
            raise InvalidInputError(
                f"point {i} ({lon:.6f}, {lat:.6f}) falls on a pixel with no class (cloud, nodata or "
                f"outside the area) in observation {observation_id}"
            )
        _check_label(cls, classes, obs.model_name, obs.model_version)
        key = f"observation:{observation_id}:{lon:.7f},{lat:.7f}"
        row = _upsert(
            session, key, source="observation", model_name=obs.model_name, model_version=obs.model_version,
            predicted=names[v], label=cls, correct=names[v] == cls, observation_id=observation_id,
            lon=lon, lat=lat, holdout=_held_back(key, holdout), by=by,
        )  # fmt: skip
        rows.append(row)
    correct = sum(r.correct for r in rows)
    return {
        "observation_id": observation_id, "model": obs.model_name, "version": obs.model_version,
        "points": [{"lon": r.lon, "lat": r.lat, "predicted": r.predicted, "label": r.label,
                    "correct": r.correct} for r in rows],
        "accuracy": Accuracy.of(correct, len(rows), min_labels=MIN_LABELS).as_dict(),
    }  # fmt: skip
