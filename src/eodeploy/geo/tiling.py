"""Window grids over a scene and the blending weights that hide their seams."""

from __future__ import annotations

import numpy as np


def offsets(length: int, size: int, stride: int) -> list[int]:
    """Window starts covering ``length`` with windows of ``size`` every ``stride``; the last one is
    moved back to end exactly at the edge, so every pixel is covered and no window hangs over."""
    if length < size:
        return []
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def blend_weights(size: int, floor: float = 0.05) -> np.ndarray:
    """A (size, size) weight that is 1 in the middle and fades towards the edges (a separable
    triangular taper), so overlapping windows hand over smoothly instead of averaging flatly.
    ``floor`` keeps edge pixels of the scene, covered by one window only, well defined."""
    ramp = 1 - np.abs(np.arange(size) + 0.5 - size / 2) / (size / 2)
    w = np.maximum(np.outer(ramp, ramp), floor)
    return (w / w.max()).astype(np.float32)


def default_stride(patch: int, overlap: float = 0.5) -> int:
    """Half a patch by default: each pixel is then seen by ~4 windows, enough for the taper to
    remove seams while costing 4x a non-overlapping pass (the documented trade-off)."""
    return max(1, int(round(patch * (1 - overlap))))
