"""Start a network from another package's weights: the RGB network's features for a 13-band
model, or EuroSAT's for a user's own classes (a ``Mangrove`` class on their own patches)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from eodeploy.errors import PackageSpecError
from eodeploy.package.bands import canonical_band
from eodeploy.package.repository import ModelPackage
from eodeploy.package.spec import ModelSpec
from eodeploy.runtime.preprocess import convert_units


def source_arch(source: ModelPackage) -> str:
    info = source.properties.get("eodeploy:weights")
    if not info or not (source.path / info.get("file", "")).is_file():
        raise PackageSpecError(
            f"{source.name} v{source.version} carries no PyTorch weights (weights.pt) to start from; "
            "use a package made by 'eodeploy train'"
        )
    return str(info["arch"])


def pretrained_network(source: ModelPackage, spec: ModelSpec) -> tuple[Any, ModelSpec]:
    """A network for ``spec`` with every layer of ``source`` that fits copied over.

    The first convolution gets the source's filters on the bands both share (matched by name,
    ``B04`` = ``B4`` = ``red``) and zeros on the others, so the new network starts out computing
    what the source computed; those shared bands take the source's scaling (converted to the new
    units), so its filters see the values they were trained on. The classifier is copied when the
    classes are the same, else it starts afresh."""
    import io

    import torch

    from eodeploy.train.models import build_model

    arch = source_arch(source)
    state = torch.load(io.BytesIO((source.path / source.properties["eodeploy:weights"]["file"]).read_bytes()),
                       map_location="cpu", weights_only=True)  # fmt: skip
    src_spec = source.spec
    src_bands = [canonical_band(b) for b in src_spec.bands]
    bands = [canonical_band(b) for b in spec.bands]
    shared = [b for b in bands if b in src_bands]
    if not shared:
        raise PackageSpecError(
            f"{source.name} takes bands {', '.join(src_spec.bands)}, none of which the new data has "
            f"({', '.join(spec.bands)}); start from a package with common bands"
        )
    model = build_model(arch, len(bands), len(spec.classes))
    own = model.state_dict()
    first = next(k for k, v in state.items() if v.ndim == 4 and v.shape[1] == len(src_bands))
    same_classes = src_spec.class_names == spec.class_names
    for key, value in state.items():
        if key == first:
            w = torch.zeros_like(own[key])
            for b in shared:
                w[:, bands.index(b)] = value[:, src_bands.index(b)]
            own[key] = w
        elif (
            key in own
            and own[key].shape == value.shape
            and (same_classes or not _is_head(key, value, src_spec))
        ):
            own[key] = value
    model.load_state_dict(own)
    scaling = list(spec.value_scaling) if len(spec.value_scaling) == len(bands) else []
    src_scaling = src_spec.value_scaling * (len(src_bands) if len(src_spec.value_scaling) == 1 else 1)
    for b in shared:
        s = src_scaling[src_bands.index(b)] if src_scaling else None
        if scaling and s and s.get("type") == "z-score" and src_spec.units and spec.units:
            mean, std = convert_units(
                np.array([s["mean"], s["stddev"]], np.float64), src_spec.units, spec.units
            )
            scaling[bands.index(b)] = {"type": "z-score", "mean": round(float(mean), 4),
                                       "stddev": round(float(std), 4)}  # fmt: skip
    return model, replace(spec, value_scaling=scaling or spec.value_scaling)


def _is_head(key: str, value: Any, spec: ModelSpec) -> bool:
    """The classifier's weight or bias: its first dimension is the number of classes."""
    return key.startswith("head") and value.shape[0] == len(spec.classes)
