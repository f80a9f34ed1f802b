"""Open Inference Protocol tensors: datatypes, JSON and binary decoding, with clear errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from eodeploy.errors import InvalidInputError

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPE_OF = {v: k for k, v in DTYPES.items()}
#: Raw band values may come as any of these; the package's preprocessing turns them into FP32.
INPUT_DATATYPES = ["UINT8", "UINT16", "INT16", "INT32", "FP16", "FP32", "FP64"]


def dtype_of(datatype: str) -> np.dtype[Any]:
    try:
        return DTYPES[datatype]
    except KeyError:
        raise InvalidInputError(
            f"datatype {datatype!r} is not supported for band values; use one of {', '.join(INPUT_DATATYPES)}"
        ) from None


def check_shape(shape: Any) -> list[int]:
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInputError(f"shape must be a list of non-negative integers, got {shape!r}")
    return [int(d) for d in shape]


def json_numbers(data: Any, datatype: str = "FP32") -> np.ndarray:
    """JSON numbers (flat or nested lists) as an array, refusing what would silently change
    value: null, strings and booleans; fractions or out-of-range values for an integer type."""
    dtype = dtype_of(datatype)
    ragged = "tensor data must be numbers in a flat or nested list (nested lists of equal length)"
    if isinstance(data, list) and len(data) > 1 and isinstance(data[0], list):
        # Patch by patch: one np.asarray over millions of numbers holds the GIL for seconds, which
        # stalls the event loop even from a worker thread; between patches other threads run.
        parts = [_numeric(d, datatype) for d in data]
        if len({p.shape for p in parts}) > 1:
            raise InvalidInputError(ragged)
        arr = np.stack(parts)
    elif isinstance(data, list) and len(data) > _CHUNK:  # a long flat list: in slices, likewise
        parts = [_numeric(data[i : i + _CHUNK], datatype) for i in range(0, len(data), _CHUNK)]
        if any(p.ndim != 1 for p in parts):
            raise InvalidInputError(ragged)
        arr = np.concatenate(parts)
    else:
        arr = _numeric(data, datatype)
    if dtype.kind in "iu":
        if arr.dtype.kind == "f":
            if arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
                raise InvalidInputError(
                    f"datatype {datatype} takes whole numbers, but the data holds fractions; "
                    "send FP32 for fractional values"
                )
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidInputError(
                f"values outside the range of {datatype} ({info.min} to {info.max}); send a wider datatype"
            )
        return arr.astype(dtype)
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if out.size and arr.dtype.kind == "f" and not np.isfinite(out[np.isfinite(arr)]).all():
        raise InvalidInputError(
            f"values too large for {datatype} (they would become infinite); send smaller values or FP64"
        )
    return out


_CHUNK = 1 << 16


def _numeric(data: Any, datatype: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError(
            "tensor data must be numbers in a flat or nested list (nested lists of equal length)"
        ) from None
    if arr.dtype.kind not in "iuf":
        if arr.dtype.kind in "US":
            what = "strings"
        elif arr.dtype.kind == "b":
            what = "booleans"
        elif _has_none(data):
            what = "null"
        else:
            what = f"integers too large for {datatype} (or mixed values)"
        raise InvalidInputError(
            f"tensor data must be numbers; it holds {what}; send every value as a plain JSON number"
        )
    return arr


def _has_none(data: Any) -> bool:
    if data is None:
        return True
    if isinstance(data, list | tuple):
        return any(_has_none(d) for d in data)
    return False


def from_json(data: Any, shape: list[int], datatype: str) -> np.ndarray:
    """A JSON ``data`` field (flat or nested, row-major) as an array of ``shape``."""
    dtype_of(datatype)
    if datatype not in INPUT_DATATYPES:
        raise InvalidInputError(f"datatype {datatype} cannot carry band values; use FP32 or UINT16")
    expected = math.prod(shape)
    arr = json_numbers(data, datatype)
    if arr.size != expected:
        raise InvalidInputError(f"tensor data holds {arr.size} values but shape {shape} needs {expected}")
    return arr.reshape(shape)


def from_bytes(buf: bytes | memoryview, shape: list[int], datatype: str) -> np.ndarray:
    dtype = dtype_of(datatype)
    if datatype not in INPUT_DATATYPES:
        raise InvalidInputError(f"datatype {datatype} cannot carry band values; use FP32 or UINT16")
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInputError(
            f"binary tensor holds {len(buf)} bytes but shape {shape} of {datatype} needs {expected}; "
            "the payload is truncated or the shape/datatype is wrong"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)
