"""What a model expects and returns, read from and written to the STAC MLM fields of item.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eodeploy.errors import PackageSpecError

LAYOUTS = {
    "NCHW": ["batch", "bands", "height", "width"],
    "NHWC": ["batch", "height", "width", "bands"],
}
#: What raw input values mean. A package records the units its network was trained on; the one
#: preprocessing path converts other units onto them (``runtime.preprocess.convert_units``).
UNITS = {
    "reflectance": "reflectance as a fraction, about 0-1 (Sentinel Hub units=REFLECTANCE)",
    "dn": "Sentinel-2 digital numbers: reflectance x 10000 (L1C or L2A, baseline offset removed)",
    "rgb8": "EuroSAT's 8-bit true-colour rendering: clip(reflectance x 10000 / 2750 x 255, 0, 255)",
}
SCALING_TYPES = {"z-score", "min-max", "clip", "clip-min", "clip-max", "offset", "scale"}

# A qualitative palette (Tableau 10) for classes whose source gives no colours.
DEFAULT_COLORS = [
    "#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F",
    "#EDC948", "#B07AA1", "#FF9DA7", "#9C755F", "#BAB0AC",
]  # fmt: skip
EUROSAT_COLORS = {
    "AnnualCrop": "#E6C84B", "Forest": "#1B7837", "HerbaceousVegetation": "#A6D96A",
    "Highway": "#7F7F7F", "Industrial": "#B2182B", "Pasture": "#D9EF8B",
    "PermanentCrop": "#FDAE61", "Residential": "#F46D43", "River": "#4393C3",
    "SeaLake": "#2166AC",
}  # fmt: skip


@dataclass(frozen=True)
class ClassInfo:
    value: int
    name: str
    color: str  # "#RRGGBB"


def default_classes(names: list[str]) -> list[ClassInfo]:
    return [
        ClassInfo(i, n, EUROSAT_COLORS.get(n, DEFAULT_COLORS[i % len(DEFAULT_COLORS)]))
        for i, n in enumerate(names)
    ]


@dataclass(frozen=True)
class ModelSpec:
    """Inputs, preprocessing and outputs of a patch classifier."""

    name: str
    bands: list[str]
    height: int
    width: int
    classes: list[ClassInfo]
    value_scaling: list[dict[str, Any]] = field(default_factory=list)
    layout: str = "NCHW"
    input_name: str = "input"
    output_name: str = "probabilities"
    output_kind: str = "probabilities"  # or "logits": the predictor applies softmax
    architecture: str = "CNN"
    framework: str = "PyTorch"
    framework_version: str | None = None
    description: str = ""
    #: Units of the raw values the network was trained on (a key of ``UNITS``); None: unknown
    #: (imported models), inputs are passed on as they come.
    units: str | None = None

    def __post_init__(self) -> None:
        if self.units is not None and self.units not in UNITS:
            raise PackageSpecError(f"input units {self.units!r} are not one of {sorted(UNITS)}")
        if self.layout not in LAYOUTS:
            raise PackageSpecError(f"layout {self.layout!r} is not one of {sorted(LAYOUTS)}")
        if self.output_kind not in ("probabilities", "logits"):
            raise PackageSpecError(f"output kind {self.output_kind!r} must be 'probabilities' or 'logits'")
        if not self.bands:
            raise PackageSpecError("a model needs at least one input band name")
        if len(set(self.bands)) != len(self.bands):
            raise PackageSpecError(f"band names repeat: {self.bands}")
        if len(self.value_scaling) not in (0, 1, len(self.bands)):
            raise PackageSpecError(
                f"value_scaling has {len(self.value_scaling)} entries; give one for all bands "
                f"or one per band ({len(self.bands)})"
            )
        for s in self.value_scaling:
            if s.get("type") not in SCALING_TYPES:
                raise PackageSpecError(
                    f"value_scaling type {s.get('type')!r} is not supported; "
                    f"use one of {sorted(SCALING_TYPES)}"
                )
        if not self.classes:
            raise PackageSpecError("a classifier needs at least one class")

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def input_shape(self, batch: int = -1) -> list[int]:
        c, h, w = len(self.bands), self.height, self.width
        return [batch, c, h, w] if self.layout == "NCHW" else [batch, h, w, c]

    # --- STAC MLM -------------------------------------------------------------------------------
    def mlm_properties(self) -> dict[str, Any]:
        mlm_input: dict[str, Any] = {
            "name": self.input_name,
            "bands": self.bands,
            "input": {
                "shape": self.input_shape(),
                "dim_order": LAYOUTS[self.layout],
                "data_type": "float32",
            },
            "resize_type": None,
        }
        if self.value_scaling:
            mlm_input["value_scaling"] = self.value_scaling
        if self.units:
            mlm_input["description"] = f"raw input units: {UNITS[self.units]}"
        return {
            "mlm:name": self.name,
            "mlm:architecture": self.architecture,
            "mlm:tasks": ["classification"],
            "mlm:framework": self.framework,
            **({"mlm:framework_version": self.framework_version} if self.framework_version else {}),
            "mlm:input": [mlm_input],
            "mlm:output": [
                {
                    "name": self.output_name,
                    "tasks": ["classification"],
                    "result": {
                        "shape": [-1, len(self.classes)],
                        "dim_order": ["batch", "class"],
                        "data_type": "float32",
                    },
                    "classification:classes": [
                        {
                            "value": c.value,
                            "name": c.name,
                            "description": c.name,
                            "color_hint": c.color.lstrip("#").upper(),
                        }
                        for c in self.classes
                    ],
                    "post_processing_function": None,
                }
            ],
            "eodeploy:output_kind": self.output_kind,
            **({"eodeploy:input_units": self.units} if self.units else {}),
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ModelSpec:
        props = item.get("properties", {})
        try:
            inp = props["mlm:input"][0]
            out = props["mlm:output"][0]
            dims = inp["input"]["dim_order"]
            layout = next(k for k, v in LAYOUTS.items() if v == dims)
            shape = inp["input"]["shape"]
            h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
            classes = [
                ClassInfo(int(c["value"]), c["name"], "#" + c.get("color_hint", "808080"))
                for c in out["classification:classes"]
            ]
            return cls(
                name=props["mlm:name"],
                bands=list(inp["bands"]),
                height=int(h),
                width=int(w),
                classes=classes,
                value_scaling=list(inp.get("value_scaling") or []),
                layout=layout,
                input_name=inp["name"],
                output_name=out["name"],
                output_kind=props.get("eodeploy:output_kind", "probabilities"),
                architecture=props.get("mlm:architecture", "CNN"),
                framework=props.get("mlm:framework", "ONNX"),
                framework_version=props.get("mlm:framework_version"),
                description=item.get("properties", {}).get("description", ""),
                units=props.get("eodeploy:input_units"),
            )
        except (KeyError, IndexError, TypeError, StopIteration) as exc:
            raise PackageSpecError(
                f"item.json lacks or garbles the MLM field {exc}; "
                "re-create the package with 'eodeploy import'"
            ) from exc
