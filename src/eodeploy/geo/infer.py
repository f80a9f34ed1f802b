"""Whole scenes through a patch classifier: a streaming read -> infer -> write pipeline.

Strips of one patch height are read on a reader thread, their windows inferred as one batch on
the calling thread, and finished rows written on a writer thread; bounded queues between them keep
memory flat whatever the scene size. Each window's class probabilities are spread over its
footprint with a taper (``blend_weights``) and overlapping windows are blended by those weights.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eodeploy.errors import DataError
from eodeploy.geo.area import PixelArea
from eodeploy.geo.sources import Scene
from eodeploy.geo.tiling import blend_weights, offsets
from eodeploy.runtime.predictor import Predictor
from eodeploy.runtime.preprocess import convert_units, neutral_values

NODATA = 255  # class-map value of pixels never classified (nodata, cloud)
_DONE = object()


@dataclass
class RunStats:
    windows: int = 0
    windows_skipped: int = 0
    class_m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nodata_m2: float = 0.0
    cloud_m2: float = 0.0
    seconds: float = 0.0
    infer_seconds: float = 0.0


class _Sink:
    """Receives finished rows: class ids (uint8), confidence (uint8 %), masks."""

    def write(
        self, row0: int, col0: int, classes: np.ndarray, confidence: np.ndarray
    ) -> None:  # pragma: no cover
        raise NotImplementedError


def classify_scene(
    predictor: Predictor,
    scene: Scene,
    sink: _Sink,
    stride: int,
    on_progress: Callable[[float], None] | None = None,  # fraction of the scene done
    batch_size: int = 256,
    band_width: int = 2048,
) -> RunStats:
    """Classify ``scene`` into ``sink``. The scene is processed in column bands of about
    ``band_width`` px, each streamed top to bottom, so memory depends on neither the scene's
    height nor its width. Windows that straddle a band edge are inferred for both bands."""
    spec = predictor.spec
    p = spec.height
    if scene.height < p or scene.width < p:
        raise DataError(
            f"the scene is {scene.width}x{scene.height} px, smaller than one {p}x{p} patch of the model; "
            "give a larger scene"
        )
    if not 1 <= stride <= p:
        raise DataError(f"stride {stride} must be between 1 and the patch size {p}")
    k = len(spec.classes)
    ys, xs = offsets(scene.height, p, stride), offsets(scene.width, p, stride)
    weights: dict[tuple[bool, ...], np.ndarray] = {}

    def weight_at(y: int, x: int) -> np.ndarray:
        """The window's taper, flat on the sides that lie on the scene's border."""
        key = (y == 0, y + p >= scene.height, x == 0, x + p >= width)
        if key not in weights:
            weights[key] = blend_weights(p, *key)
        return weights[key]

    fill = neutral_values(predictor.spec)[:, None, None]
    width = scene.width
    dense = getattr(predictor, "dense", False)
    area = PixelArea(scene.crs, scene.transform)
    stats = RunStats(class_m2=np.zeros(k))
    t0 = time.perf_counter()

    def run_band(c0: int, c1: int, done_px: int) -> None:
        """Output columns c0 .. c1, from every window that reaches them."""
        xb = [x for x in xs if x < c1 and x + p > c0]
        bx0 = xb[0]
        bw = xb[-1] + p - bx0

        # Three stages on three threads, bounded queues between them:
        #   reader:  read a strip, cut and preprocess its windows  -> batches
        #   caller:  run the model on each batch (nothing else)     -> probabilities
        #   blender: blend into a one-patch-high buffer, finalise rows, write them, measure areas
        batches: queue.Queue[Any] = queue.Queue(maxsize=2)
        results: queue.Queue[Any] = queue.Queue(maxsize=2)
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                for y in ys:
                    raw, nodata, cloud = scene.read(y, bx0, p, bw)
                    raw = convert_units(raw, scene.units, spec.units)
                    invalid = nodata | cloud
                    windows, places = [], []
                    for x in xb:
                        bad = invalid[:, x - bx0 : x - bx0 + p]
                        if bad.all():
                            continue
                        w = raw[:, :, x - bx0 : x - bx0 + p]
                        windows.append(np.where(bad[None], fill, w) if bad.any() else w)
                        places.append(x)
                    tensor = predictor.preprocess(np.stack(windows)) if windows else None
                    batches.put((y, places, tensor, nodata, cloud, len(xb) - len(places)))
            except BaseException as exc:  # surfaced on the calling thread
                errors.append(exc)
            finally:
                batches.put(_DONE)

        def blender() -> None:
            acc = np.zeros((k, p, bw), np.float32)
            wsum = np.zeros((p, bw), np.float32)
            nod = np.zeros((p, bw), bool)
            cld = np.zeros((p, bw), bool)
            base = 0

            def flush(upto: int) -> None:
                """Rows base .. upto are final: no later window reaches them."""
                nonlocal base
                n = upto - base
                if n <= 0:
                    return
                a, b = c0 - bx0, c1 - bx0  # this band's own columns within the buffer
                covered = wsum[:n, a:b] > 0
                # Weights are positive per pixel, so the argmax of the weighted sums is the argmax
                # of the blended probabilities: only the maximum needs dividing.
                classes = acc[:, :n, a:b].argmax(axis=0).astype(np.uint8)
                with np.errstate(invalid="ignore", divide="ignore"):
                    top = acc[:, :n, a:b].max(axis=0) / np.where(covered, wsum[:n, a:b], 1)
                conf = np.round(top * 100).astype(np.uint8)
                nd, cd = nod[:n, a:b], cld[:n, a:b]
                invalid = nd | cd | ~covered
                classes[invalid] = NODATA
                conf[invalid] = NODATA
                sink.write(base, c0, classes, conf)
                pix = area.of_block(base, n, b - a, col0=c0)
                counted = ~invalid
                stats.class_m2 += np.bincount(classes[counted], weights=pix[counted], minlength=k)[:k]
                stats.nodata_m2 += float(pix[nd].sum())
                stats.cloud_m2 += float(pix[cd & ~nd].sum())
                for buf in (acc, wsum, nod, cld):
                    buf[..., :-n, :] = buf[..., n:, :]
                    buf[..., -n:, :] = 0
                base = upto

            try:
                while (item := results.get()) is not _DONE:
                    y, places, proba, nodata, cloud = item
                    flush(y)
                    off = y - base
                    nod[off : off + p] |= nodata
                    cld[off : off + p] |= cloud
                    for x, pr in zip(places, proba):
                        weight = weight_at(y, x)
                        # A patch classifier's one distribution covers its window; a segmentation
                        # model's per-pixel distributions are blended pixel by pixel.
                        contrib = pr * weight[None] if dense else pr[:, None, None] * weight[None]
                        acc[:, off : off + p, x - bx0 : x - bx0 + p] += contrib
                        wsum[off : off + p, x - bx0 : x - bx0 + p] += weight
                    if on_progress:
                        on_progress((done_px + (y + p) * (c1 - c0)) / (scene.height * width))
                if not errors:
                    flush(base + p)
            except BaseException as exc:
                errors.append(exc)
                while results.get() is not _DONE:  # keep draining so the caller never blocks
                    pass

        threads = [
            threading.Thread(target=reader, daemon=True),
            threading.Thread(target=blender, daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while (item := batches.get()) is not _DONE:
                y, places, tensor, nodata, cloud, skipped = item
                stats.windows_skipped += skipped
                proba = np.empty((0, k), np.float32)
                if tensor is not None:
                    ti = time.perf_counter()
                    proba = np.concatenate(
                        [predictor.run(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)]
                    )
                    stats.infer_seconds += time.perf_counter() - ti
                    stats.windows += len(places)
                results.put((y, places, proba, nodata, cloud))
                if errors:
                    break
        finally:
            results.put(_DONE)
            while threads[0].is_alive():  # unblock a reader stuck on a full queue after an error
                try:
                    batches.get_nowait()
                except queue.Empty:
                    threads[0].join(0.05)
            for t in threads:
                t.join()
        if errors:
            raise errors[0]

    n_bands = max(1, round(width / band_width))
    edges = [round(i * width / n_bands) for i in range(n_bands + 1)]
    done = 0
    for c0, c1 in zip(edges[:-1], edges[1:]):
        run_band(c0, c1, done)
        done += scene.height * (c1 - c0)
    stats.seconds = time.perf_counter() - t0
    return stats
