"""Size, latency, throughput, accuracy and agreement of one package on one backend."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from eodeploy.data.eurosat import PatchDataset
from eodeploy.evaluate.metrics import classification_report
from eodeploy.runtime.backends import TFLITE_FILE
from eodeploy.runtime.predictor import Predictor

BATCHES = (1, 8, 32, 128)


def _timed(fn: Any, seconds: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t0 >= seconds:
            return n, time.perf_counter() - t0


def measure(
    predictor: Predictor,
    data: PatchDataset | None = None,
    reference: np.ndarray | None = None,
    seconds: float = 2.0,
    latency_runs: int = 200,
) -> dict[str, Any]:
    """Figures for one (package, backend); ``reference`` are FP32 class ids for agreement."""
    spec = predictor.spec
    path = (
        predictor.package.path / TFLITE_FILE
        if predictor.backend == "litert"
        else predictor.package.model_path
    )
    if data is not None:
        x = data.images
    else:
        x = (
            np.random.default_rng(0)
            .integers(100, 4000, (128, len(spec.bands), spec.height, spec.width))
            .astype(np.uint16)
        )
    pool = np.concatenate([x] * int(np.ceil(128 / len(x))))[:128]
    row: dict[str, Any] = {
        "package": f"{predictor.package.name}:{predictor.package.version}",
        "backend": predictor.backend,
        "size_kib": round(path.stat().st_size / 1024, 1),
    }
    one = predictor.preprocess(pool[:1])
    for _ in range(10):
        predictor.run(one)
    lat = []
    for _ in range(latency_runs):
        t0 = time.perf_counter()
        predictor.run(predictor.preprocess(pool[:1]))
        lat.append(time.perf_counter() - t0)
    row["latency_ms_p50"] = round(float(np.median(lat)) * 1000, 3)
    row["latency_ms_p99"] = round(float(np.percentile(lat, 99)) * 1000, 3)
    for bs in BATCHES:
        batch = pool[:bs]
        predictor.predict_proba(batch, batch_size=bs)
        n, dt = _timed(lambda b=batch, s=bs: predictor.predict_proba(b, batch_size=s), seconds)
        row[f"throughput_b{bs}"] = round(n * bs / dt, 1)
    if data is not None:
        pred = predictor.predict(data.images, band_names=data.band_names).class_ids
        report = classification_report(data.labels, pred, spec.class_names)
        row["accuracy"] = round(report["accuracy"], 4)
        row["macro_f1"] = round(report["macro_f1"], 4)
        row["n"] = report["n"]
        if reference is not None:
            row["agreement"] = round(float(np.mean(pred == reference)), 4)
        row["class_ids"] = pred.tolist()
    return row
