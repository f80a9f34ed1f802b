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


def blend_weights(
    size: int, top: bool = False, bottom: bool = False, left: bool = False, right: bool = False
) -> np.ndarray:
    """A (size, size) weight that is 1 in the middle and fades to almost 0 at the window's edges
    (a separable squared-triangular taper), so overlapping windows hand over smoothly.

    The weight must vanish at the edges: a window that starts with a sizeable weight (an earlier
    version kept a floor of 0.05) switches the blended class at its first column wherever the
    windows around it are unsure, a straight seam along the window edge. Sides on the scene's
    border (``top``... ``right``) stay flat instead, since no other window covers them."""
    ramp = (1 - np.abs(np.arange(size) + 0.5 - size / 2) / (size / 2)) ** 2
    half = size // 2
    rows, cols = ramp.copy(), ramp.copy()
    if top:
        rows[:half] = ramp.max()
    if bottom:
        rows[half:] = ramp.max()
    if left:
        cols[:half] = ramp.max()
    if right:
        cols[half:] = ramp.max()
    w = np.outer(rows, cols)
    return (w / w.max()).astype(np.float32)


def default_stride(patch: int, overlap: float = 0.5) -> int:
    """Half a patch by default: each pixel is then seen by ~4 windows, enough for the taper to
    remove seams while costing 4x a non-overlapping pass (the documented trade-off)."""
    return max(1, int(round(patch * (1 - overlap))))
